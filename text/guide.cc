#include "text/guide.h"

#include <algorithm>
#include <array>
#include <bitset>
#include <cstring>
#include <mutex>
#include <numeric>
#include <optional>
#include <unordered_map>

#include "base/json.h"
#include "text/gbnf_grammar.h"
#include "text/json_schema_grammar.h"
#include "text/regex_grammar.h"

namespace seer {

std::shared_ptr<const GuideVocabulary> GuideVocabulary::FromBytes(
    const std::vector<std::optional<std::string>>& bytes) {
  auto v = std::make_shared<GuideVocabulary>();
  v->bytes_.reserve(bytes.size());
  for (const std::optional<std::string>& b : bytes) v->bytes_.push_back(b.value_or(std::string()));
  for (int32_t id = 0; id < v->size(); ++id) {
    if (!v->bytes_[id].empty()) v->order_.push_back(id);
  }
  std::sort(v->order_.begin(), v->order_.end(),
            [&](int32_t a, int32_t b) { return v->bytes_[a] != v->bytes_[b] ? v->bytes_[a] < v->bytes_[b] : a < b; });
  v->shared_.assign(v->order_.size(), 0);
  for (size_t i = 0; i < v->order_.size(); ++i) {
    const std::string& cur = v->bytes_[v->order_[i]];
    v->longest_ = std::max(v->longest_, cur.size());
    if (i == 0) continue;
    const std::string& prev = v->bytes_[v->order_[i - 1]];
    const size_t n = std::min(prev.size(), cur.size());
    uint32_t k = 0;
    while (k < n && prev[k] == cur[k]) ++k;
    v->shared_[i] = k;
  }
  return v;
}

StatusOr<std::shared_ptr<const GuideVocabulary>> GuideVocabulary::FromTokenizer(const Tokenizer& tokenizer) {
  // Decoded after an anchor token, less the anchor's own bytes: the bytes a
  // token adds in the middle of a reply. Decoders that treat the first
  // token apart (SentencePiece's leading space) do so only at the start.
  int32_t anchor = tokenizer.TokenToId("a").value_or(-1);
  std::string anchor_bytes;
  if (anchor >= 0) {
    const int32_t one[] = {anchor};
    StatusOr<std::string> b = tokenizer.DecodeBytes(one);
    if (b.ok() && !b->empty()) {
      anchor_bytes = *std::move(b);
    } else {
      anchor = -1;
    }
  }
  std::vector<std::optional<std::string>> bytes(static_cast<size_t>(tokenizer.vocab_size()));
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
    if (tokenizer.IsSpecial(id) || !tokenizer.IdToToken(id)) continue;
    StatusOr<std::string> decoded = anchor >= 0 ? tokenizer.DecodeBytes(std::vector<int32_t>{anchor, id})
                                                : tokenizer.DecodeBytes(std::vector<int32_t>{id});
    if (!decoded.ok()) continue;
    if (anchor >= 0) {
      if (decoded->compare(0, anchor_bytes.size(), anchor_bytes) != 0) continue;  // the pair merged: no text of its own
      decoded->erase(0, anchor_bytes.size());
    }
    bytes[id] = *std::move(decoded);
  }
  return FromBytes(bytes);
}

// The grammar's states that the replies of one guide have met, interned,
// with their transitions and allowed ids as they were first needed. Every
// reply the factory starts shares them (a request's choices, and later
// requests with the same guide, through the server's cache), behind one
// mutex. Past max_states states or max_bytes of them the tables start
// over; a reply then finds its place again from its own copy of its
// matcher. A walk of the vocabulary that alone would pass max_bytes fails.
class GuideTables {
 public:
  // Where a reply stands: a state of the tables' generation.
  struct Place {
    uint64_t generation = ~uint64_t{0};
    int32_t state = -1;
  };

  GuideTables(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const GuideVocabulary> vocabulary,
              size_t max_states, size_t max_bytes)
      : grammar_(std::move(grammar)),
        vocabulary_(std::move(vocabulary)),
        max_states_(max_states),
        max_bytes_(max_bytes) {}

  const Grammar& grammar() const { return *grammar_; }
  const GuideVocabulary& vocabulary() const { return *vocabulary_; }

  // The ids allowed at `here`; false when finding them would pass
  // max_bytes of tables alone (the tables start over first when the states
  // other walks left are what passes it).
  bool Allowed(const GrammarMatcher& here, Place* place, std::vector<uint64_t>* out) {
    std::lock_guard<std::mutex> lock(mu_);
    if (bytes_ > max_bytes_) Clear();  // grown by other replies' walks
    int32_t s = Find(here, place);
    if (states_[s].allowed.empty()) {
      if (cached_masks_ >= kMaxMasks) {
        for (State& other : states_) {
          bytes_ -= other.allowed.size() * sizeof(uint64_t);
          std::vector<uint64_t>().swap(other.allowed);
        }
        cached_masks_ = 0;
      }
      std::optional<std::vector<uint64_t>> walked;
      for (;;) {
        const bool alone = states_.size() == 1;
        walked = Walk(s);  // grows states_
        if (walked) break;
        Clear();
        if (alone) return false;
        s = Find(here, place);
      }
      bytes_ += walked->size() * sizeof(uint64_t);
      states_[s].allowed = *std::move(walked);
      ++cached_masks_;
    }
    *out = states_[s].allowed;
    return true;
  }

  // Moves `here` over `bytes`; false when the grammar refuses them. `*lost`:
  // the byte at which the matcher dropped ways of reading the text, if one
  // did (GrammarMatcher::narrowed), counted from the first of `bytes`.
  bool Accept(const std::string& bytes, GrammarMatcher* here, Place* place, std::optional<size_t>* lost) {
    std::lock_guard<std::mutex> lock(mu_);
    int32_t s = Find(*here, place);
    for (size_t i = 0; i < bytes.size(); ++i) {
      const uint8_t byte = static_cast<uint8_t>(bytes[i]);
      const int32_t n = Next(s, byte);
      if (!*lost && states_[s].narrowed[byte]) *lost = i;
      if (n < 0) return false;
      s = n;
    }
    *here = states_[s].matcher;
    place->state = s;
    // A long reply through ever new states (a deep JSON nesting).
    if (states_.size() > max_states_ || bytes_ > max_bytes_) Clear();
    return true;
  }

  size_t max_bytes() const { return max_bytes_; }

 private:
  // A transition's target when it is not a state: not yet known, refused by
  // the grammar, or lost (every way that read the byte was dropped).
  static constexpr int32_t kUnknown = -2, kDead = -1, kLost = -3;
  static constexpr int kMaxMasks = 128;

  struct State {
    GrammarMatcher matcher;
    std::array<int32_t, 256> next;
    std::bitset<256> narrowed;  // the step over this byte dropped ways (known once next[byte] is)
    std::vector<uint64_t> allowed;  // empty until walked
  };

  int32_t Find(const GrammarMatcher& here, Place* place) {
    if (place->generation != generation_) {
      place->state = Intern(here);
      place->generation = generation_;
    }
    return place->state;
  }

  int32_t Intern(const GrammarMatcher& m) {
    const std::vector<int32_t>& key = m.key();
    std::string k(reinterpret_cast<const char*>(key.data()), key.size() * sizeof(int32_t));
    auto [it, added] = index_.emplace(std::move(k), static_cast<int32_t>(states_.size()));
    if (added) {
      State s{m, {}, {}, {}};
      s.next.fill(kUnknown);
      states_.push_back(std::move(s));
      // The key three times (the index's, the matcher's, and its stacks,
      // which hold about as many ints), a vector's header a stack (a -1 in
      // the key begins each) and the transitions.
      const size_t stacks = static_cast<size_t>(std::count(key.begin(), key.end(), -1));
      bytes_ += 3 * key.size() * sizeof(int32_t) + stacks * sizeof(std::vector<int32_t>) + sizeof(State) + 64;
    }
    return it->second;
  }

  void Clear() {
    states_.clear();
    index_.clear();
    cached_masks_ = 0;
    bytes_ = 0;
    ++generation_;
  }

  int32_t Next(int32_t s, uint8_t byte) {
    int32_t n = states_[s].next[byte];
    if (n != kUnknown) return n;
    GrammarMatcher m = states_[s].matcher;
    n = m.Advance(byte) ? Intern(m) : m.narrowed() ? kLost : kDead;
    states_[s].next[byte] = n;  // states_ may have grown: index again
    states_[s].narrowed[byte] = m.narrowed();
    return n;
  }

  // The ids whose bytes the grammar reads from state `from`, in the
  // vocabulary's sorted order: at[k] is the state after the current id's
  // first k bytes, good for the next id up to the bytes they share; a
  // prefix the grammar refused (at `dead`) skips every id that shares it.
  // A prefix whose last byte was lost (kLost) allows every id that shares
  // it: the grammar may read them, and a reply that takes one fails
  // (Accept) rather than being held from it. The budget is checked an id
  // at a time, off the bytes' loop.
  std::optional<std::vector<uint64_t>> Walk(int32_t from) {
    const GuideVocabulary& v = *vocabulary_;
    std::vector<uint64_t> bits((static_cast<size_t>(v.size()) + 63) / 64, 0);
    std::vector<int32_t> at(v.longest_ + 1);
    at[0] = from;
    int64_t dead = -1;
    bool lost = false;  // dead is a lost byte's place, not a refused one's
    for (size_t i = 0; i < v.order_.size(); ++i) {
      const int32_t id = v.order_[i];
      const size_t shared = v.shared_[i];
      if (dead >= 0 && static_cast<int64_t>(shared) > dead) {
        if (lost) bits[static_cast<size_t>(id) / 64] |= uint64_t{1} << (id % 64);
        continue;
      }
      dead = -1;
      const std::string& b = v.bytes_[id];
      size_t k = shared;
      for (; k < b.size(); ++k) {
        const int32_t n = Next(at[k], static_cast<uint8_t>(b[k]));
        if (n < 0) {
          dead = static_cast<int64_t>(k);
          lost = n == kLost;
          break;
        }
        at[k + 1] = n;
      }
      if (k == b.size() || lost) bits[static_cast<size_t>(id) / 64] |= uint64_t{1} << (id % 64);
      if (bytes_ > max_bytes_) return std::nullopt;
    }
    return bits;
  }

  const std::shared_ptr<const Grammar> grammar_;
  const std::shared_ptr<const GuideVocabulary> vocabulary_;
  const size_t max_states_;
  const size_t max_bytes_;
  std::mutex mu_;
  std::vector<State> states_;  // guarded by mu_, as everything below
  std::unordered_map<std::string, int32_t> index_;
  uint64_t generation_ = 0;
  int cached_masks_ = 0;
  size_t bytes_ = 0;  // the states' matchers, keys and transitions, and the cached masks
};

namespace {

// One reply's guide: its matcher, and its place in the shared tables.
class GrammarTokenGuide final : public TokenGuide {
 public:
  explicit GrammarTokenGuide(std::shared_ptr<GuideTables> tables)
      : tables_(std::move(tables)), here_(tables_->grammar()) {
    if (here_.narrowed()) Lost(0);
  }

  void Allowed(std::vector<uint64_t>* allowed) override {
    if (!dead_ && tables_->Allowed(here_, &place_, allowed)) return;
    if (!dead_ && failure_.empty()) {
      failure_ = "the guide's tables for the token after byte " + std::to_string(bytes_) + " of the reply would pass " +
                 (tables_->max_bytes() % (size_t{1} << 20) == 0 ? std::to_string(tables_->max_bytes() >> 20) + " MiB"
                                                                : std::to_string(tables_->max_bytes()) + " bytes") +
                 " (its grammar's states are too large: very ambiguous or very deep)";
    }
    dead_ = true;
    allowed->assign((static_cast<size_t>(tables_->vocabulary().size()) + 63) / 64, 0);
  }

  bool complete() const override { return !dead_ && here_.complete(); }

  void Accept(int32_t token) override {
    if (dead_) return;
    const GuideVocabulary& v = tables_->vocabulary();
    std::optional<size_t> lost;
    dead_ = token < 0 || token >= v.size() || v.bytes(token).empty() ||
            !tables_->Accept(v.bytes(token), &here_, &place_, &lost);
    if (lost && failure_.empty()) Lost(bytes_ + *lost);
    if (!dead_) bytes_ += v.bytes(token).size();
  }

  std::string failure() const override { return failure_; }

 private:
  void Lost(size_t at) {
    failure_ = "the guide cannot follow every sentence of its grammar past byte " + std::to_string(at) +
               " of the reply: more than " + std::to_string(GrammarMatcher::kMaxStacks) +
               " ways to read the text at once (a grammar ambiguous in itself), a chain of more than 256 rules "
               "before a byte, or nesting deeper than " +
               std::to_string(GrammarMatcher::kMaxDepth) + "; rewrite the grammar less ambiguously";
  }

  std::shared_ptr<GuideTables> tables_;
  GrammarMatcher here_;
  GuideTables::Place place_;
  bool dead_ = false;
  size_t bytes_ = 0;  // of the reply, accepted so far
  std::string failure_;
};

}  // namespace

GrammarGuideFactory::GrammarGuideFactory(std::shared_ptr<const Grammar> grammar,
                                         std::shared_ptr<const GuideVocabulary> vocabulary, size_t max_states,
                                         size_t max_bytes)
    : tables_(std::make_shared<GuideTables>(std::move(grammar), std::move(vocabulary), max_states, max_bytes)) {}

std::unique_ptr<TokenGuide> GrammarGuideFactory::Start() const { return std::make_unique<GrammarTokenGuide>(tables_); }

std::string GuideSpec::Key() const {
  std::string key(1, static_cast<char>('0' + static_cast<int>(kind)));
  if (kind == Kind::kChoice) {
    for (const std::string& c : choices) key += std::to_string(c.size()) + ":" + c;
  } else {
    key += text;
  }
  return key;
}

StatusOr<Grammar> GrammarFromChoices(const std::vector<std::string>& choices) {
  if (choices.empty()) return InvalidArgument("needs at least one choice");
  Grammar g;
  std::vector<Grammar::Sequence> alternatives;
  for (const std::string& c : choices) alternatives.push_back(Grammar::Text(c));
  g.set_root(g.RuleOf("choice", alternatives));
  SEER_RETURN_IF_ERROR(g.Validate());
  return g;
}

StatusOr<std::shared_ptr<const Grammar>> CompileGuide(const GuideSpec& spec) {
  auto wrap = [](StatusOr<Grammar> g, const char* field) -> StatusOr<std::shared_ptr<const Grammar>> {
    if (!g.ok()) return InvalidArgument(std::string(field) + ": " + g.status().message());
    if (Status valid = g->Validate(); !valid.ok()) return InvalidArgument(std::string(field) + ": " + valid.message());
    // Factoring adds rules: past the grammar's limits the grammar stays as
    // it is.
    Grammar factored = g->Factored();
    if (factored.Validate().ok()) *g = std::move(factored);
    return std::shared_ptr<const Grammar>(std::make_shared<Grammar>(*std::move(g)));
  };
  auto too_long = [](const char* field, size_t bytes) -> Status {
    if (bytes <= kMaxGuideBytes) return OkStatus();
    return InvalidArgument(std::string(field) + ": " + std::to_string(bytes) + " bytes, more than " +
                           std::to_string(kMaxGuideBytes));
  };
  switch (spec.kind) {
    case GuideSpec::Kind::kNone: return InvalidArgument("guide: names no kind");
    case GuideSpec::Kind::kJsonObject: return wrap(JsonObjectGrammar(), "guide.json_object");
    case GuideSpec::Kind::kJsonSchema: {
      SEER_RETURN_IF_ERROR(too_long("guide.json_schema", spec.text.size()));
      StatusOr<JsonValue> schema = JsonValue::Parse(spec.text);
      if (!schema.ok()) return InvalidArgument("guide.json_schema: not valid JSON: " + schema.status().message());
      return wrap(GrammarFromJsonSchema(*schema), "guide.json_schema");
    }
    case GuideSpec::Kind::kRegex:
      SEER_RETURN_IF_ERROR(too_long("guide.regex", spec.text.size()));
      return wrap(GrammarFromRegex(spec.text), "guide.regex");
    case GuideSpec::Kind::kGrammar:
      SEER_RETURN_IF_ERROR(too_long("guide.grammar", spec.text.size()));
      return wrap(GrammarFromGbnf(spec.text), "guide.grammar");
    case GuideSpec::Kind::kChoice:
      if (spec.choices.size() > kMaxGuideChoices) {
        return InvalidArgument("guide.choice: " + std::to_string(spec.choices.size()) + " choices, more than " +
                               std::to_string(kMaxGuideChoices));
      }
      {
        size_t bytes = 0;
        for (const std::string& c : spec.choices) bytes += c.size();
        SEER_RETURN_IF_ERROR(too_long("guide.choice", bytes));
      }
      return wrap(GrammarFromChoices(spec.choices), "guide.choice");
  }
  return InvalidArgument("guide: unknown kind");
}

}  // namespace seer
