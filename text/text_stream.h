// Generated token ids to text as a stream, for `seer run`, seer-decode's
// Generate and the OpenAI front door: the pieces the incremental decoder
// makes final, with the text that may be the start of a stop string held
// back until it is known not to be one, and the stream cut just before the
// first stop string that appears (as OpenAI and vLLM cut it), or just after
// it (vLLM's include_stop_str_in_output).
#pragma once

#include <string>
#include <vector>

#include "base/status.h"
#include "text/tokenizer.h"

namespace seer {

class TextStream {
 public:
  // Special tokens are left out of the text (skip_special_tokens), as the
  // serving APIs return it. With include_stops the text ends with the stop
  // string that ended it (of those starting at the same place, the
  // shortest, which appeared first).
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops, bool skip_special_tokens = true,
             bool include_stops = false);

  struct Piece {
    std::string text;  // final text this id adds (possibly empty)
    bool stopped = false;  // a stop string appeared; `text` ends just before it (include_stops: after)
  };
  // After a stop, Push returns nothing more. With stops_armed false (a
  // reply's first min_new_tokens tokens) a stop string in the text does not
  // stop it; the end of the text that may start one is still held back, so
  // a stop string that ends in the text of a later, armed Push counts (and
  // only such a one).
  StatusOr<Piece> Push(int32_t id, bool stops_armed = true);
  // The held-back rest at the end of the stream (nothing after a stop);
  // stops_armed as for the last Push.
  StatusOr<std::string> Finish(bool stops_armed = true);

  bool stopped() const { return stopped_; }

 private:
  // Moves the part of pending_ that cannot start a stop string into `out`,
  // or (when `armed`) cuts at the first stop string.
  void Release(Piece* out, bool armed = true);

  IncrementalDecoder decoder_;
  std::vector<std::string> stops_;
  bool include_stops_ = false;
  std::string pending_;
  // The start of pending_ released unarmed: a stop string that ends in it
  // does not count.
  size_t unarmed_ = 0;
  bool stopped_ = false;
};

}  // namespace seer
