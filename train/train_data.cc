#include "train/train_data.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>

#include "kernels/common/parallel.h"

namespace seer::train {
namespace {

namespace fs = std::filesystem;

// A whole corpus is read into memory; past this it is an error, not a swap storm.
constexpr uint64_t kMaxCorpusBytes = uint64_t{4} << 30;

// Appends the files under `dir` in path order (names sorted at each level,
// so the same tree lists the same way on any file system), following links;
// `ancestors` (canonical) breaks link cycles; a file reached twice (through
// two links) is listed once, at its first path in that order.
Status Walk(const fs::path& dir, std::vector<fs::path>* ancestors, std::set<fs::path>* seen_files,
            std::vector<std::string>* files) {
  std::error_code ec;
  std::vector<fs::path> entries;
  for (fs::directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.empty() && name[0] != '.') entries.push_back(it->path());
  }
  if (ec) return NotFound("--data: cannot list '" + dir.string() + "': " + ec.message());
  std::sort(entries.begin(), entries.end());
  for (const fs::path& e : entries) {
    std::error_code sec;
    const fs::file_status st = fs::status(e, sec);  // through links
    if (sec) continue;  // a dangling link
    const fs::path canonical = fs::canonical(e, sec);
    if (sec) continue;
    if (fs::is_directory(st)) {
      if (std::find(ancestors->begin(), ancestors->end(), canonical) != ancestors->end()) continue;  // a cycle
      ancestors->push_back(canonical);
      SEER_RETURN_IF_ERROR(Walk(e, ancestors, seen_files, files));
      ancestors->pop_back();
    } else if (fs::is_regular_file(st) && seen_files->insert(canonical).second) {
      files->push_back(e.string());
    }
  }
  return OkStatus();
}

StatusOr<std::vector<std::string>> ListDocuments(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return NotFound("--data: '" + path + "' does not exist");
  if (fs::is_regular_file(st)) return std::vector<std::string>{path};
  if (!fs::is_directory(st)) return InvalidArgument("--data: '" + path + "' is neither a file nor a directory");
  std::vector<std::string> files;
  std::vector<fs::path> ancestors = {fs::canonical(path, ec)};
  std::set<fs::path> seen_files;
  SEER_RETURN_IF_ERROR(Walk(path, &ancestors, &seen_files, &files));
  if (files.empty()) return NotFound("--data: '" + path + "' holds no files");
  return files;
}

StatusOr<std::string> ReadDocument(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("--data: cannot open '" + path + "'");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return DataLoss("--data: cannot read '" + path + "'");
  if (text.find('\0') != std::string::npos) {
    return InvalidArgument("--data: '" + path + "' holds a NUL byte; training text must be text, not binary");
  }
  return text;
}

// SplitMix64: a small, fully specified generator, so the order of the
// sequences is the same on every platform and library.
uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

StatusOr<TokenStream> TokenizeText(const std::string& path, const Tokenizer& tokenizer, int num_threads) {
  SEER_ASSIGN_OR_RETURN(std::vector<std::string> files, ListDocuments(path));
  uint64_t bytes = 0;
  for (const std::string& f : files) {
    std::error_code ec;
    bytes += fs::file_size(f, ec);
    if (bytes > kMaxCorpusBytes) {
      return ResourceExhausted("--data: '" + path + "' holds more than " + std::to_string(kMaxCorpusBytes >> 30) +
                               " GiB of text; pass a smaller corpus (or token ids with --data-ids)");
    }
  }
  const std::optional<int32_t> eos = tokenizer.config().eos_token_id;
  std::vector<StatusOr<std::vector<int32_t>>> encoded(files.size(), std::vector<int32_t>{});
  std::atomic<int> next{0};
  const int n = static_cast<int>(files.size());
  cpu::ParallelFor(std::max(1, std::min(num_threads, n)), std::max(1, std::min(num_threads, n)), [&](int) {
    for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      StatusOr<std::string> text = ReadDocument(files[i]);
      if (!text.ok()) {
        encoded[i] = text.status();
        continue;
      }
      StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(*text, /*add_special_tokens=*/true);
      if (!ids.ok()) {
        encoded[i] = ids.status().WithContext("--data: '" + files[i] + "'");
        continue;
      }
      if (eos) ids->push_back(*eos);
      encoded[i] = std::move(ids);
    }
  });
  TokenStream out;
  out.source = path;
  for (auto& e : encoded) {
    if (!e.ok()) return e.status();
    out.ids.insert(out.ids.end(), e->begin(), e->end());
    ++out.documents;
  }
  return out;
}

uint64_t IdsFingerprint(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t id : ids) {
    uint32_t v = static_cast<uint32_t>(id);
    for (int b = 0; b < 4; ++b) {
      h ^= (v >> (8 * b)) & 0xffu;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

SequenceOrder::SequenceOrder(int64_t num_tokens, int seq_len, uint64_t seed)
    : num_sequences_(seq_len > 0 ? num_tokens / seq_len : 0), seq_len_(seq_len), seed_(seed) {}

int64_t SequenceOrder::Start(int64_t n) {
  const int64_t epoch = n / num_sequences_;
  if (epoch != epoch_) {
    permutation_.resize(num_sequences_);
    for (int64_t i = 0; i < num_sequences_; ++i) permutation_[i] = i;
    uint64_t state = seed_ ^ (0x5eed0000ull + static_cast<uint64_t>(epoch) * 0x9e3779b97f4a7c15ull);
    for (int64_t i = num_sequences_ - 1; i > 0; --i) {
      const int64_t j = static_cast<int64_t>(SplitMix64(state) % static_cast<uint64_t>(i + 1));
      std::swap(permutation_[i], permutation_[j]);
    }
    epoch_ = epoch;
  }
  return permutation_[n % num_sequences_] * seq_len_;
}

}  // namespace seer::train
