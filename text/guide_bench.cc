// Guided decoding's cost per token on the host, at a real vocabulary's
// size: for each kind of guide, a reply of random allowed tokens is walked,
// and the table gives the first step's allowed-id walk (cold), the mean and
// worst step of the guide (accept the token, then the next allowed ids) and
// of the whole sampler step that a guided reply adds (the guide, and the bit
// row of the ids it refuses, the end ids among them), for the first reply
// of a guide and for a later one, which finds the states the first met.
//
// The vocabulary is synthetic, shaped as byte-level BPE vocabularies are
// (the 256 bytes, words with and without a leading space, numbers,
// punctuation runs, whitespace runs, multibyte characters), since the
// committed tokenizers are trimmed; --tokenizer takes a real one.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "base/flags.h"
#include "kernels/sampling/sampler.h"
#include "text/guide.h"
#include "text/synthetic_vocabulary.h"

namespace {

using Clock = std::chrono::steady_clock;
double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

struct Row {
  std::string guide;
  double cold_ms = 0, guide_mean_ms = 0, guide_max_ms = 0;
  double first_mean_ms = 0, first_max_ms = 0, later_mean_ms = 0, later_max_ms = 0;
  int steps = 0;
  double allowed_mean = 0;
};

}  // namespace

int main(int argc, char** argv) {
  int64_t vocab = 128256, steps = 256, seed = 1;
  std::string tokenizer_path;
  seer::FlagSet flags("seer-guide-bench [flags]",
                      "Guided decoding's host cost per token: for a JSON schema, JSON mode, a regular expression\n"
                      "and a list of choices, a reply of random allowed tokens is walked, and the table gives the\n"
                      "first allowed-id walk (cold), the guide's mean and worst step (accept, then the next\n"
                      "allowed ids) and the sampler's (the guide and the bit row of the ids it refuses), for a\n"
                      "guide's first reply and for a later one (the states the first met are kept).\n"
                      "The vocabulary is synthetic, shaped like a byte-level BPE one, unless --tokenizer is given.");
  flags.Int("vocab", &vocab, "size of the synthetic vocabulary (Llama 3's is 128,256)");
  flags.Int("steps", &steps, "tokens per reply (a reply also ends when its text is whole and nothing may follow)");
  flags.Int("seed", &seed, "seed of the vocabulary and of the token choices");
  flags.String("tokenizer", &tokenizer_path, "a tokenizer.json (or its folder) to take the vocabulary from instead");
  seer::Status st = flags.Parse(argc, argv);
  if (!st.ok()) {
    std::fprintf(stderr, "seer-guide-bench: %s\n", st.message().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  std::shared_ptr<const seer::GuideVocabulary> vocabulary;
  const auto t0 = Clock::now();
  if (!tokenizer_path.empty()) {
    auto tok = seer::Tokenizer::Load(tokenizer_path);
    if (!tok.ok()) {
      std::fprintf(stderr, "seer-guide-bench: %s\n", tok.status().ToString().c_str());
      return 1;
    }
    vocabulary = *seer::GuideVocabulary::FromTokenizer(**tok);
  } else {
    vocabulary = seer::GuideVocabulary::FromBytes(seer::SyntheticVocabulary(static_cast<int>(vocab), seed));
  }
  const double vocab_ms = Ms(t0, Clock::now());
  const int32_t end_id = vocabulary->size();  // one past the vocabulary: the end of text

  struct Case {
    const char* name;
    seer::GuideSpec spec;
  };
  std::vector<Case> cases(4);
  cases[0].name = "json_schema (object, 4 fields)";
  cases[0].spec.kind = seer::GuideSpec::Kind::kJsonSchema;
  cases[0].spec.text =
      R"({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}, "address": {"type": "object", "properties":
          {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "[0-9]{5}"}}, "required": ["city"]}},
          "required": ["name", "age", "tags", "address"]})";
  cases[1].name = "json_object";
  cases[1].spec.kind = seer::GuideSpec::Kind::kJsonObject;
  cases[2].name = "regex (a date and words)";
  cases[2].spec.kind = seer::GuideSpec::Kind::kRegex;
  cases[2].spec.text = "[0-9]{4}-[0-9]{2}-[0-9]{2}( [a-z]+){1,40}";
  cases[3].name = "choice (3 strings)";
  cases[3].spec.kind = seer::GuideSpec::Kind::kChoice;
  cases[3].spec.choices = {"positive", "negative", "no opinion either way"};

  std::vector<Row> rows;
  for (const Case& c : cases) {
    auto grammar = seer::CompileGuide(c.spec);
    if (!grammar.ok()) {
      std::fprintf(stderr, "seer-guide-bench: %s\n", grammar.status().ToString().c_str());
      return 1;
    }
    auto factory = std::make_shared<seer::GrammarGuideFactory>(*grammar, vocabulary);
    Row row;
    row.guide = c.name;
    // The guide alone, with a random allowed token each step.
    std::mt19937_64 rng(static_cast<uint64_t>(seed));
    std::unique_ptr<seer::TokenGuide> guide = factory->Start();
    std::vector<uint64_t> bits;
    auto t = Clock::now();
    guide->Allowed(&bits);
    row.cold_ms = Ms(t, Clock::now());
    std::vector<int32_t> chosen;
    double sum = 0;
    for (int64_t s = 0; s < steps; ++s) {
      std::vector<int32_t> allowed;
      for (int32_t id = 0; id < vocabulary->size(); ++id)
        if ((bits[id / 64] >> (id % 64)) & 1) allowed.push_back(id);
      row.allowed_mean += static_cast<double>(allowed.size());
      if (allowed.empty()) break;
      const int32_t pick = allowed[rng() % allowed.size()];
      chosen.push_back(pick);
      t = Clock::now();
      guide->Accept(pick);
      guide->Allowed(&bits);
      const double ms = Ms(t, Clock::now());
      sum += ms;
      row.guide_max_ms = std::max(row.guide_max_ms, ms);
      ++row.steps;
    }
    row.guide_mean_ms = row.steps > 0 ? sum / row.steps : 0;
    row.allowed_mean /= std::max(1, row.steps);
    // The sampler's step with the same tokens: Record, then Refused (the
    // guide's walk, then the bit row of the refused ids); for the first
    // reply of a fresh guide, and for a later reply of the same guide, which
    // finds the tables warm.
    auto sampler_steps = [&](const std::shared_ptr<const seer::TokenGuideFactory>& f, double* mean, double* max) {
      seer::SamplingParams p;
      p.vocab_size = vocabulary->size() + 1;
      p.end_ids = {end_id};
      p.guide = f;
      seer::Sampler sampler(p);
      double total = 0;
      for (int32_t token : chosen) {
        const auto start = Clock::now();
        sampler.Record(token);
        (void)sampler.Refused();
        const double ms = Ms(start, Clock::now());
        total += ms;
        *max = std::max(*max, ms);
      }
      *mean = chosen.empty() ? 0 : total / static_cast<double>(chosen.size());
    };
    sampler_steps(std::make_shared<seer::GrammarGuideFactory>(*grammar, vocabulary), &row.first_mean_ms,
                  &row.first_max_ms);
    sampler_steps(factory, &row.later_mean_ms, &row.later_max_ms);
    rows.push_back(row);
  }
  std::printf("vocabulary: %d ids (%s), sorted for the walk in %.1f ms\n\n", vocabulary->size(),
              tokenizer_path.empty() ? "synthetic" : tokenizer_path.c_str(), vocab_ms);
  std::printf(
      "| guide | steps | allowed ids (mean) | first walk ms | guide step ms, first reply (mean / max) | sampler step ms, "
      "first reply (mean / max) | sampler step ms, a later reply (mean / max) |\n|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %d | %.0f | %.2f | %.3f / %.2f | %.3f / %.2f | %.3f / %.2f |\n", r.guide.c_str(), r.steps,
                r.allowed_mean, r.cold_ms, r.guide_mean_ms, r.guide_max_ms, r.first_mean_ms, r.first_max_ms,
                r.later_mean_ms, r.later_max_ms);
  }
  return 0;
}
