#include "text/text_stream.h"

#include <algorithm>
#include <utility>

namespace seer {

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops, bool skip_special_tokens)
    : decoder_(tokenizer, skip_special_tokens), stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

void TextStream::Release(Piece* out) {
  // The first stop string in what is pending ends the stream. (A stop cannot
  // begin in text already released: that text held no prefix of one.)
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    out->text += pending_.substr(0, first);
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
  out->text += pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
}

StatusOr<TextStream::Piece> TextStream::Push(int32_t id) {
  Piece piece;
  if (stopped_) return piece;
  SEER_ASSIGN_OR_RETURN(std::string text, decoder_.Step(id));
  pending_ += text;
  Release(&piece);
  return piece;
}

StatusOr<std::string> TextStream::Finish() {
  if (stopped_) return std::string();
  SEER_ASSIGN_OR_RETURN(std::string text, decoder_.Finish());
  pending_ += text;
  Piece piece;
  Release(&piece);
  // At the end nothing is held back: a partial stop string is text.
  return piece.stopped ? piece.text : piece.text + std::exchange(pending_, std::string());
}

}  // namespace seer
