// Tokenizer throughput: encodes a long document (by default about 128k
// tokens of the essays in shared/data beside the repository, or, without
// them, of the fixtures' generated document) with each committed tokenizer
// and prints a table of tokens/s for a cold BPE cache (first encode) and a
// warm one, plus Decode and IncrementalDecoder throughput.
//
//   tokenizer_bench [--tokenizers a,b,...] [--text-file F] [--tokens N]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/flags.h"
#include "base/json.h"
#include "text/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizers = "llama3,qwen2,gpt2,mistral";
  std::string fixtures = SEER_SOURCE_DIR "/tests/fixtures/tokenizers";
  std::string text_file = SEER_SOURCE_DIR "/../shared/data/PaulGrahamEssays.json";
  int64_t target_tokens = 128 * 1024;
  seer::FlagSet flags("tokenizer_bench [flags]", "Prints encode/decode throughput of the text/ tokenizer.");
  flags.String("tokenizers", &tokenizers, "Comma-separated tokenizer paths, or names of folders under --fixtures.");
  flags.String("fixtures", &fixtures, "Folder holding the committed tokenizer fixtures.");
  flags.String("text-file", &text_file,
               "Text to encode: a plain text file, or a JSON object with a \"text\" field (the essays file).");
  flags.Int("tokens", &target_tokens, "Encode a prefix of the text of about this many tokens (0: all of it).");
  seer::Status st = flags.Parse(argc, argv);
  if (!st.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", st.message().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  std::string text = Slurp(text_file);
  if (text.empty() && !flags.WasSet("text-file")) {
    // The fixtures' long document (make_tokenizer_fixtures.py's long_document()).
    auto strings = seer::JsonValue::Parse(Slurp(fixtures + "/strings.json"));
    if (strings.ok() && strings->Find("long_doc_fragments")) {
      const auto& frags = strings->Find("long_doc_fragments")->as_array();
      uint64_t x = 0x2545F4914F6CDD1Dull;
      for (int i = 0; i < 100000; ++i) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        text += frags[(x >> 33) % frags.size()].as_string();
      }
      text_file = "the fixtures' generated document";
    }
  }
  if (text.empty()) {
    std::fprintf(stderr, "tokenizer_bench: cannot read --text-file %s\n", text_file.c_str());
    return 1;
  }
  std::printf("text: %s\n\n", text_file.c_str());
  if (text[0] == '{') {
    auto j = seer::JsonValue::Parse(text);
    if (j.ok() && j->Find("text") && j->Find("text")->is_string()) text = j->Find("text")->as_string();
  }
  std::printf(
      "| tokenizer | chars | tokens | encode cold tok/s | encode warm tok/s | decode tok/s | incremental tok/s |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  std::stringstream names(tokenizers);
  std::string name;
  while (std::getline(names, name, ',')) {
    const std::string path = name.find('/') == std::string::npos ? fixtures + "/" + name : name;
    auto tok = seer::Tokenizer::Load(path);
    if (!tok.ok()) {
      std::fprintf(stderr, "tokenizer_bench: %s\n", tok.status().ToString().c_str());
      return 1;
    }
    // A prefix of about target_tokens tokens, cut at a line end.
    std::string doc = text;
    if (target_tokens > 0) {
      auto probe = (*tok)->Encode(text.substr(0, std::min<size_t>(text.size(), 200000)), false);
      if (!probe.ok()) return 1;
      const double chars_per_token = std::min<size_t>(text.size(), 200000) / double(std::max<size_t>(1, probe->size()));
      size_t n = std::min(text.size(), size_t(chars_per_token * double(target_tokens)));
      while (n < text.size() && text[n] != '\n') ++n;
      doc = text.substr(0, n);
    }
    // A fresh tokenizer for the cold run: the probe above warmed the cache.
    auto cold_tok = seer::Tokenizer::Load(path);
    const auto t0 = Clock::now();
    auto ids = (*cold_tok)->Encode(doc, false);
    const auto t1 = Clock::now();
    if (!ids.ok()) {
      std::fprintf(stderr, "tokenizer_bench: %s\n", ids.status().ToString().c_str());
      return 1;
    }
    auto again = (*cold_tok)->Encode(doc, false);
    const auto t2 = Clock::now();
    auto decoded = (*cold_tok)->Decode(*ids, false);
    const auto t3 = Clock::now();
    seer::IncrementalDecoder inc(**cold_tok);
    size_t bytes = 0;
    for (int32_t id : *ids) bytes += inc.Step(id)->size();
    bytes += inc.Finish()->size();
    const auto t4 = Clock::now();
    if (!again.ok() || !decoded.ok() || bytes != decoded->size()) {
      std::fprintf(stderr, "tokenizer_bench: decode mismatch\n");
      return 1;
    }
    const double n = double(ids->size());
    std::printf("| %s | %zu | %zu | %.0f (%.3f s) | %.0f (%.3f s) | %.0f | %.0f |\n", name.c_str(), doc.size(),
                ids->size(), n / Seconds(t0, t1), Seconds(t0, t1), n / Seconds(t1, t2), Seconds(t1, t2),
                n / Seconds(t2, t3), n / Seconds(t3, t4));
  }
  return 0;
}
