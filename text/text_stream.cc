#include "text/text_stream.h"

#include <algorithm>
#include <utility>

namespace seer {

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops, bool skip_special_tokens,
                       bool include_stops)
    : decoder_(tokenizer, skip_special_tokens), stops_(std::move(stops)), include_stops_(include_stops) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

void TextStream::Release(Piece* out, bool armed) {
  // The first stop string in what is pending ends the stream. (A stop cannot
  // begin in text already released: that text held no prefix of one, or was
  // released unarmed.)
  size_t first = std::string::npos, length = 0;
  if (armed) {
    for (const std::string& s : stops_) {
      size_t at = pending_.find(s);
      while (at != std::string::npos && at + s.size() <= unarmed_) at = pending_.find(s, at + 1);
      if (at < first || (at == first && s.size() < length)) {
        first = at;
        length = s.size();
      }
    }
  }
  if (first != std::string::npos) {
    out->text += pending_.substr(0, include_stops_ ? first + length : first);
    out->stopped = stopped_ = true;
    pending_.clear();
    return;
  }
  // Hold back the longest end of the pending text that a stop string starts with.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n) {
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  const size_t released = pending_.size() - hold;
  out->text += pending_.substr(0, released);
  pending_.erase(0, released);
  // What stays of the unarmed text (all of it, unarmed) keeps its stops
  // from counting.
  unarmed_ = armed ? (unarmed_ > released ? unarmed_ - released : 0) : pending_.size();
}

StatusOr<TextStream::Piece> TextStream::Push(int32_t id, bool stops_armed) {
  Piece piece;
  if (stopped_) return piece;
  SEER_ASSIGN_OR_RETURN(std::string text, decoder_.Step(id));
  pending_ += text;
  Release(&piece, stops_armed);
  return piece;
}

StatusOr<std::string> TextStream::Finish(bool stops_armed) {
  if (stopped_) return std::string();
  SEER_ASSIGN_OR_RETURN(std::string text, decoder_.Finish());
  pending_ += text;
  Piece piece;
  Release(&piece, stops_armed);
  // At the end nothing is held back: a partial stop string is text.
  return piece.stopped ? piece.text : piece.text + std::exchange(pending_, std::string());
}

}  // namespace seer
