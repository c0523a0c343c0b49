// The BPE model of tokenizer.json ("model": {"type": "BPE"}): vocabulary,
// ranked merges, byte fallback, unk fusing and ignore_merges, with
// tokenizers' merge order (a min-heap on (rank, position) over a linked list
// of symbols) and a cache of recently tokenized pre-tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/json.h"
#include "base/status.h"

namespace seer {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // `model` is tokenizer.json's "model" object. Errors name the field.
  static StatusOr<std::unique_ptr<BpeModel>> FromJson(const JsonValue& model);

  // Appends the ids of one pre-token (already byte-level mapped where the
  // pipeline does that).
  Status Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  const TokenMap& vocab() const { return vocab_; }
  // Token text by id; nullptr when the model has no such id.
  const std::string* IdToToken(int32_t id) const;
  int32_t max_id() const { return max_id_; }

 private:
  void Merge(std::string_view word, std::vector<int32_t>* ids) const;

  TokenMap vocab_;
  std::vector<const std::string*> by_id_;
  int32_t max_id_ = -1;
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges_;  // (a, b) -> (rank, new id)
  std::string unk_token_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  int32_t byte_ids_[256];

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace seer
