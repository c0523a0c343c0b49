#include "text/bpe.h"

#include <queue>

#include "text/unicode.h"

namespace seer {
namespace {

constexpr size_t kCacheMaxWordBytes = 256;  // tokenizers' MAX_LENGTH
constexpr size_t kCacheCapacity = 200000;

uint64_t PairKey(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }

Status FieldError(const std::string& field, const std::string& what) {
  return InvalidArgument("model." + field + ": " + what);
}

// An optional string field: null, missing or "" mean unset.
StatusOr<std::string> OptionalString(const JsonValue& model, const char* field) {
  const JsonValue* v = model.Find(field);
  if (v == nullptr || v->is_null()) return std::string();
  if (!v->is_string()) return FieldError(field, "expected a string or null, got " + JsonValue::TypeName(v->type()));
  return v->as_string();
}

StatusOr<bool> OptionalBool(const JsonValue& model, const char* field) {
  const JsonValue* v = model.Find(field);
  if (v == nullptr || v->is_null()) return false;
  if (!v->is_bool()) return FieldError(field, "expected true or false, got " + JsonValue::TypeName(v->type()));
  return v->as_bool();
}

}  // namespace

StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const JsonValue& model) {
  auto m = std::make_unique<BpeModel>();
  if (const JsonValue* d = model.Find("dropout"); d != nullptr && !d->is_null()) {
    if (!d->is_number()) return FieldError("dropout", "expected a number or null");
    if (d->as_double() != 0.0) {
      return FieldError("dropout", "BPE dropout " + std::to_string(d->as_double()) +
                                       " is random at encode time; only null or 0 is supported");
    }
  }
  for (const char* field : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    SEER_ASSIGN_OR_RETURN(std::string s, OptionalString(model, field));
    if (!s.empty()) return FieldError(field, "'" + s + "' is not supported (WordPiece-style BPE); only null or \"\"");
  }
  SEER_ASSIGN_OR_RETURN(m->unk_token_, OptionalString(model, "unk_token"));
  SEER_ASSIGN_OR_RETURN(m->fuse_unk_, OptionalBool(model, "fuse_unk"));
  SEER_ASSIGN_OR_RETURN(m->byte_fallback_, OptionalBool(model, "byte_fallback"));
  SEER_ASSIGN_OR_RETURN(m->ignore_merges_, OptionalBool(model, "ignore_merges"));

  const JsonValue* vocab = model.Find("vocab");
  if (vocab == nullptr || !vocab->is_object()) return FieldError("vocab", "missing or not an object");
  m->vocab_.reserve(vocab->as_object().size());
  for (const auto& [token, id] : vocab->as_object()) {
    if (!id.is_integer() || id.as_int64() < 0 || id.as_int64() > INT32_MAX - 1) {
      return FieldError("vocab", "token '" + token + "' has id " + id.Dump() + ", expected an integer in [0, 2^31-2]");
    }
    const auto [it, inserted] = m->vocab_.emplace(token, static_cast<int32_t>(id.as_int64()));
    if (!inserted) it->second = static_cast<int32_t>(id.as_int64());  // serde keeps the last duplicate key
    m->max_id_ = std::max(m->max_id_, it->second);
  }
  if (m->max_id_ > 16 * int64_t(m->vocab_.size()) + 1'000'000) {
    return FieldError("vocab", "ids are sparse: largest id " + std::to_string(m->max_id_) + " for " +
                                   std::to_string(m->vocab_.size()) + " tokens");
  }
  m->by_id_.assign(size_t(m->max_id_ + 1), nullptr);
  for (const auto& [token, id] : m->vocab_) {
    if (m->by_id_[id] != nullptr) {
      return FieldError("vocab",
                        "id " + std::to_string(id) + " is given to both '" + *m->by_id_[id] + "' and '" + token + "'");
    }
    m->by_id_[id] = &token;
  }

  const JsonValue* merges = model.Find("merges");
  if (merges != nullptr && !merges->is_null()) {
    if (!merges->is_array()) return FieldError("merges", "expected an array");
    m->merges_.reserve(merges->as_array().size());
    uint32_t rank = 0;
    for (const JsonValue& e : merges->as_array()) {
      std::string a, b;
      if (e.is_string()) {  // legacy "a b"
        const std::string& s = e.as_string();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          return FieldError("merges",
                            "entry " + std::to_string(rank) + " '" + s + "' is not two tokens split by one space");
        }
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.as_array().size() == 2 && e.as_array()[0].is_string() &&
                 e.as_array()[1].is_string()) {
        a = e.as_array()[0].as_string();
        b = e.as_array()[1].as_string();
      } else {
        return FieldError("merges", "entry " + std::to_string(rank) + " is neither \"a b\" nor [\"a\", \"b\"]");
      }
      const auto ia = m->vocab_.find(a), ib = m->vocab_.find(b), ic = m->vocab_.find(a + b);
      for (const auto& [it, name] : {std::pair{ia, a}, std::pair{ib, b}, std::pair{ic, a + b}}) {
        if (it == m->vocab_.end()) {
          return FieldError("merges",
                            "entry " + std::to_string(rank) + " uses '" + name + "', which is not in the vocab");
        }
      }
      m->merges_[PairKey(ia->second, ib->second)] = {rank, ic->second};
      ++rank;
    }
  }
  if (!m->unk_token_.empty()) {
    auto it = m->vocab_.find(m->unk_token_);
    if (it != m->vocab_.end()) m->unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = m->vocab_.find(std::string_view(name));
    m->byte_ids_[b] = it == m->vocab_.end() ? -1 : it->second;
  }
  return m;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id > max_id_) return nullptr;
  return by_id_[id];
}

Status BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return OkStatus();
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return OkStatus();
    }
  }
  const bool cacheable = word.size() < kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return OkStatus();
    }
  }
  if (!unk_token_.empty() && unk_id_ < 0) {
    // Only an error when a character is actually unknown, as in tokenizers.
    size_t pos = 0;
    char32_t cp;
    while (pos < word.size()) {
      const size_t start = pos;
      if (!unicode::DecodeOne(word, &pos, &cp)) return Internal("BPE: pre-token is not valid UTF-8");
      if (vocab_.find(word.substr(start, pos - start)) == vocab_.end()) {
        bool bytes_ok = byte_fallback_;
        for (size_t i = start; bytes_ok && i < pos; ++i) bytes_ok = byte_ids_[static_cast<unsigned char>(word[i])] >= 0;
        if (!bytes_ok) return InvalidArgument("model.unk_token '" + unk_token_ + "' is not in the vocab");
      }
    }
  }
  std::vector<int32_t> out;
  Merge(word, &out);
  ids->insert(ids->end(), out.begin(), out.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::move(out));
  }
  return OkStatus();
}

void BpeModel::Merge(std::string_view word, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    uint32_t len;  // bytes; 0 once merged into its left neighbour
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id, uint32_t len) {
    const int32_t n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, len});
  };
  int32_t pending_unk_len = -1;  // fused unk run waiting to be added
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t start = pos;
    char32_t cp;
    if (!unicode::DecodeOne(word, &pos, &cp)) ++pos;  // pre-tokens are valid UTF-8; be safe anyway
    const std::string_view ch = word.substr(start, pos - start);
    auto it = vocab_.find(ch);
    if (it != vocab_.end()) {
      if (pending_unk_len >= 0) add(unk_id_, pending_unk_len), pending_unk_len = -1;
      add(it->second, static_cast<uint32_t>(ch.size()));
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : ch) all = all && byte_ids_[b] >= 0;
      if (all) {
        // tokenizers adds the byte tokens without flushing a pending unk.
        for (unsigned char b : ch) add(byte_ids_[b], 1);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk_len >= 0 && fuse_unk_) {
        pending_unk_len += static_cast<int32_t>(ch.size());
      } else {
        if (pending_unk_len >= 0) add(unk_id_, pending_unk_len);
        pending_unk_len = static_cast<int32_t>(ch.size());
      }
    }
  }
  if (pending_unk_len >= 0) add(unk_id_, pending_unk_len);

  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    auto m = merges_.find(PairKey(symbols[i].id, symbols[i + 1].id));
    if (m != merges_.end()) queue.push({m->second.first, static_cast<int32_t>(i), m->second.second});
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    const Symbol right = symbols[left.next];
    auto m = merges_.find(PairKey(left.id, right.id));
    if (m == merges_.end() || m->second.second != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    left.len += right.len;
    symbols[left.next].len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) {
      auto p = merges_.find(PairKey(symbols[left.prev].id, left.id));
      if (p != merges_.end()) queue.push({p->second.first, left.prev, p->second.second});
    }
    if (left.next >= 0) {
      auto n = merges_.find(PairKey(left.id, symbols[left.next].id));
      if (n != merges_.end()) queue.push({n->second.first, top.pos, n->second.second});
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) out->push_back(s.id);
  }
}

}  // namespace seer
