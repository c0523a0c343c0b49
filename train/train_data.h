// The training data of seer-train: text tokenized with the model's own
// tokenizer (a file, or a directory of them) or token ids given directly,
// concatenated and cut into sequences of --seq-len tokens, which the steps
// draw in a seeded order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "text/tokenizer.h"

namespace seer::train {

struct TokenStream {
  std::vector<int32_t> ids;  // every document's tokens, one after the other
  int64_t documents = 0;
  std::string source;  // for messages: the path, or "--data-ids"
};

// Every regular file under `path` (the file itself, or a directory walked
// recursively in path order, names starting with '.' skipped) is one
// document: its whole text encoded with the tokenizer's special tokens (its
// BOS, if the tokenizer adds one), then its EOS id when it has one, as the
// reference packs its corpus. A file with a NUL byte is refused as binary.
// Files are encoded on up to `num_threads` threads; the result does not
// depend on how many.
StatusOr<TokenStream> TokenizeText(const std::string& path, const Tokenizer& tokenizer, int num_threads);

// A 64-bit FNV-1a of the ids, so a resumed run can tell it has the same data.
uint64_t IdsFingerprint(const std::vector<int32_t>& ids);

// The stream cut into floor(tokens / seq_len) sequences (the tail is
// dropped), drawn epoch by epoch: each epoch is a fresh permutation of the
// sequences, made from (seed, epoch) alone, so draw n is the same whenever it
// is asked for (a resumed run draws what the uninterrupted one would have).
class SequenceOrder {
 public:
  SequenceOrder(int64_t num_tokens, int seq_len, uint64_t seed);
  int64_t num_sequences() const { return num_sequences_; }
  // The first token of the n-th sequence drawn (n >= 0).
  int64_t Start(int64_t n);

 private:
  int64_t num_sequences_;
  int seq_len_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> permutation_;
};

}  // namespace seer::train
