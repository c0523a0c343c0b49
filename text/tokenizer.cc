#include "text/tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "base/json.h"
#include "text/bpe.h"
#include "text/pipeline.h"
#include "text/unicode.h"

namespace seer {

namespace fs = std::filesystem;

namespace {

constexpr uintmax_t kMaxTokenizerJsonBytes = uintmax_t{1} << 30;

struct AddedToken {
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
  int32_t id = -1;
  std::string pattern;  // what is matched: content, or its normalised form
};

// Rust regex's \w (Unicode word characters), for single_word added tokens.
bool IsWordChar(char32_t c) {
  using unicode::GeneralCategory;
  return unicode::InMask(c, unicode::kLetter | unicode::kMark | unicode::Bit(GeneralCategory::kNd) |
                                unicode::Bit(GeneralCategory::kNl) | unicode::Bit(GeneralCategory::kPc)) ||
         c == 0x200C || c == 0x200D;
}

// Leftmost-longest matching of added tokens, with tokenizers' single_word,
// lstrip and rstrip rules.
class AddedTokenMatcher {
 public:
  void Add(const AddedToken* t) {
    if (t->pattern.empty()) return;
    by_first_[static_cast<unsigned char>(t->pattern[0])].push_back(t);
  }
  void Finish() {
    for (auto& v : by_first_) {
      std::stable_sort(v.begin(), v.end(),
                       [](const AddedToken* a, const AddedToken* b) { return a->pattern.size() > b->pattern.size(); });
    }
  }
  bool empty() const {
    return std::all_of(by_first_.begin(), by_first_.end(), [](const auto& v) { return v.empty(); });
  }

  // Splits piece.text into pieces, added tokens marked with their id.
  void Split(const Piece& piece, std::vector<Piece>* out) const {
    const std::string& s = piece.text;
    size_t start_offset = 0;
    size_t i = 0;
    while (i < s.size()) {
      const AddedToken* hit = nullptr;
      for (const AddedToken* t : by_first_[static_cast<unsigned char>(s[i])]) {
        if (s.compare(i, t->pattern.size(), t->pattern) == 0) {
          hit = t;
          break;
        }
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      size_t start = i, stop = i + hit->pattern.size();
      if (hit->single_word) {
        const bool start_ok = start == 0 || !EndsWithWord(std::string_view(s).substr(0, start));
        const bool stop_ok = stop == s.size() || !StartsWithWord(std::string_view(s).substr(stop));
        if (!start_ok || !stop_ok) {
          i = stop;  // the automaton moves past the discarded match
          continue;
        }
      }
      if (hit->lstrip) start = std::max(TrailingSpaceStart(std::string_view(s).substr(0, start)), start_offset);
      if (hit->rstrip) stop += LeadingSpaceLength(std::string_view(s).substr(stop));
      if (start_offset < start) {
        out->push_back({s.substr(start_offset, start - start_offset), -1, piece.at_start && start_offset == 0});
      }
      out->push_back({s.substr(start, stop - start), hit->id, false});
      start_offset = stop;
      i = stop;
    }
    if (start_offset < s.size()) {
      out->push_back({s.substr(start_offset), -1, piece.at_start && start_offset == 0});
    }
  }

 private:
  static bool EndsWithWord(std::string_view s) {
    std::u32string u;
    return unicode::DecodeUtf8(s, &u) && !u.empty() && IsWordChar(u.back());
  }
  static bool StartsWithWord(std::string_view s) {
    size_t pos = 0;
    char32_t c;
    return unicode::DecodeOne(s, &pos, &c) && IsWordChar(c);
  }
  static size_t TrailingSpaceStart(std::string_view s) {
    std::u32string u;
    if (!unicode::DecodeUtf8(s, &u)) return s.size();
    size_t n = u.size();
    while (n > 0 && unicode::IsWhiteSpace(u[n - 1])) --n;
    return unicode::ToUtf8(std::u32string_view(u).substr(0, n)).size();
  }
  static size_t LeadingSpaceLength(std::string_view s) {
    size_t pos = 0, last = 0;
    char32_t c;
    while (unicode::DecodeOne(s, &pos, &c) && unicode::IsWhiteSpace(c)) last = pos;
    return last;
  }

  std::array<std::vector<const AddedToken*>, 256> by_first_;
};

StatusOr<std::string> ReadFile(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) return NotFound(path.string() + ": " + ec.message());
  if (size > kMaxTokenizerJsonBytes) {
    return ResourceExhausted(path.string() + ": " + std::to_string(size) + " bytes is larger than the 1 GiB limit");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(path.string() + ": cannot open");
  std::string s(size, '\0');
  in.read(s.data(), static_cast<std::streamsize>(size));
  if (!in) return DataLoss(path.string() + ": short read");
  return s;
}

// A special token in tokenizer_config.json: "text" or {"content": "text", ...}.
StatusOr<std::string> ConfigToken(const JsonValue& cfg, const char* field) {
  const JsonValue* v = cfg.Find(field);
  if (v == nullptr || v->is_null()) return std::string();
  if (v->is_string()) return v->as_string();
  if (v->is_object()) {
    const JsonValue* c = v->Find("content");
    if (c != nullptr && c->is_string()) return c->as_string();
  }
  return InvalidArgument(std::string("tokenizer_config.json: ") + field + ": expected a string or {\"content\": ...}");
}

}  // namespace

struct Tokenizer::Impl {
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  std::vector<AddedToken> added;  // in tokenizer.json order
  std::unordered_map<int32_t, size_t> added_by_id;  // id -> index in `added`
  TokenMap added_by_content;
  std::unordered_set<std::string> special_contents;
  AddedTokenMatcher raw_matcher, normalized_matcher;
  TokenizerConfig config;
  int32_t vocab_size = 0;

  // The token text for an id (added tokens first), or nullptr.
  const std::string* TokenText(int32_t id) const {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return &added[it->second].content;
    return model->IdToToken(id);
  }

  StatusOr<std::string> DecodeTokens(std::span<const int32_t> ids, bool skip_special, DecodeState* state) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::string* t = TokenText(ids[i]);
      if (t == nullptr) {
        return InvalidArgument("id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                               " is not in the vocabulary (size " + std::to_string(vocab_size) + ")");
      }
      if (skip_special && special_contents.count(*t)) continue;
      tokens.push_back(*t);
    }
    if (decoder == nullptr) {
      std::string out;
      for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
      return out;
    }
    SEER_RETURN_IF_ERROR(decoder->DecodeChain(&tokens, state));
    std::string out;
    for (const std::string& t : tokens) out += t;
    return out;
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  fs::path json_path = path, dir;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    dir = path;
    json_path = dir / "tokenizer.json";
    if (!fs::exists(json_path, ec)) {
      return NotFound(path + ": no tokenizer.json in this directory (only tokenizer.json checkpoints are supported)");
    }
  } else if (!fs::exists(path, ec)) {
    return NotFound(path + ": no such file or directory");
  } else {
    dir = json_path.parent_path();
  }
  SEER_ASSIGN_OR_RETURN(std::string json, ReadFile(json_path));
  std::string config;
  if (fs::exists(dir / "tokenizer_config.json", ec)) {
    SEER_ASSIGN_OR_RETURN(config, ReadFile(dir / "tokenizer_config.json"));
  }
  StatusOr<std::unique_ptr<Tokenizer>> tok = FromJson(json, config);
  if (!tok.ok()) return tok.status().WithContext(json_path.string());
  TokenizerConfig& cfg = (*tok)->impl_->config;
  if (cfg.chat_template.empty() && fs::exists(dir / "chat_template.jinja", ec)) {
    SEER_ASSIGN_OR_RETURN(cfg.chat_template, ReadFile(dir / "chat_template.jinja"));
  }
  return tok;
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json,
                                                         std::string_view tokenizer_config_json) {
  auto impl = std::make_unique<Impl>();
  StatusOr<JsonValue> parsed = JsonValue::Parse(tokenizer_json);
  if (!parsed.ok()) return parsed.status().WithContext("tokenizer.json");
  const JsonValue& j = *parsed;
  if (!j.is_object()) return InvalidArgument("tokenizer.json: expected an object");
  if (const JsonValue* v = j.Find("version"); v != nullptr && (!v->is_string() || v->as_string() != "1.0")) {
    return InvalidArgument("tokenizer.json: version " + v->Dump() + " is not \"1.0\"");
  }
  for (const char* field : {"truncation", "padding"}) {
    const JsonValue* v = j.Find(field);
    if (v != nullptr && !v->is_null()) {
      return Unimplemented(std::string("tokenizer.json: ") + field + " is set; only null is supported (Seer never " +
                           (field[0] == 't' ? "truncates" : "pads") + " a prompt)");
    }
  }
  const JsonValue* model = j.Find("model");
  if (model == nullptr || !model->is_object()) return InvalidArgument("tokenizer.json: model: missing");
  const JsonValue* type = model->Find("type");
  // Old files omit model.type for BPE.
  const std::string model_type = type != nullptr && type->is_string() ? type->as_string() : "BPE";
  if (model_type != "BPE") {
    return Unimplemented("tokenizer.json: model: type '" + model_type + "' is not supported (supported: BPE)");
  }
  {
    StatusOr<std::unique_ptr<BpeModel>> m = BpeModel::FromJson(*model);
    if (!m.ok()) return m.status().WithContext("tokenizer.json");
    impl->model = std::move(*m);
  }
  auto stage = [&](const char* field, auto make, auto* target) -> Status {
    const JsonValue* v = j.Find(field);
    if (v == nullptr || v->is_null()) return OkStatus();
    auto built = make(*v, std::string(field));
    if (!built.ok()) return built.status().WithContext("tokenizer.json");
    *target = std::move(*built);
    return OkStatus();
  };
  SEER_RETURN_IF_ERROR(stage("normalizer", NormalizerFromJson, &impl->normalizer));
  SEER_RETURN_IF_ERROR(stage("pre_tokenizer", PreTokenizerFromJson, &impl->pre_tokenizer));
  SEER_RETURN_IF_ERROR(stage("post_processor", PostProcessorFromJson, &impl->post_processor));
  SEER_RETURN_IF_ERROR(stage("decoder", DecoderFromJson, &impl->decoder));

  // Added tokens, with tokenizers' id assignment (AddedVocabulary::add_tokens).
  impl->vocab_size = impl->model->max_id() + 1;
  if (const JsonValue* list = j.Find("added_tokens"); list != nullptr && !list->is_null()) {
    if (!list->is_array()) return InvalidArgument("tokenizer.json: added_tokens: expected an array");
    const int64_t model_size = static_cast<int64_t>(impl->model->vocab().size());
    for (size_t i = 0; i < list->as_array().size(); ++i) {
      const JsonValue& e = list->as_array()[i];
      const std::string where = "tokenizer.json: added_tokens[" + std::to_string(i) + "]";
      const JsonValue* content = e.Find("content");
      if (content == nullptr || !content->is_string()) return InvalidArgument(where + ".content: missing");
      AddedToken t;
      t.content = content->as_string();
      if (t.content.empty()) continue;
      auto flag = [&](const char* name, bool dflt) -> bool {
        const JsonValue* v = e.Find(name);
        return v != nullptr && v->is_bool() ? v->as_bool() : dflt;
      };
      t.special = flag("special", false);
      t.single_word = flag("single_word", false);
      t.lstrip = flag("lstrip", false);
      t.rstrip = flag("rstrip", false);
      t.normalized = flag("normalized", !t.special);
      if (auto it = impl->added_by_content.find(t.content); it != impl->added_by_content.end()) {
        t.id = it->second;
      } else if (auto m = impl->model->vocab().find(t.content); m != impl->model->vocab().end()) {
        t.id = m->second;
      } else {
        int32_t next = static_cast<int32_t>(model_size);
        if (!impl->added_by_id.empty()) {
          int32_t max_added = -1;
          for (const auto& [id, _] : impl->added_by_id) max_added = std::max(max_added, id);
          next = max_added >= model_size || model_size == 0 ? max_added + 1 : static_cast<int32_t>(model_size);
        }
        t.id = next;
      }
      t.pattern = t.content;
      if (t.normalized && impl->normalizer) {
        SEER_ASSIGN_OR_RETURN(t.pattern, impl->normalizer->Normalize(t.content));
      }
      if (auto old = impl->added_by_id.find(t.id); old != impl->added_by_id.end()) {
        impl->added[old->second] = t;  // the same id again: the later entry wins
      } else {
        impl->added_by_id[t.id] = impl->added.size();
        impl->added.push_back(t);
      }
      impl->added_by_content[t.content] = t.id;
      if (t.special) impl->special_contents.insert(t.content);
      impl->vocab_size = std::max(impl->vocab_size, t.id + 1);
    }
  }
  for (const AddedToken& t : impl->added) {
    (t.normalized ? impl->normalized_matcher : impl->raw_matcher).Add(&t);
  }
  impl->raw_matcher.Finish();
  impl->normalized_matcher.Finish();
  if (impl->post_processor) {
    for (int32_t id : impl->post_processor->SpecialIds()) {
      if (impl->TokenText(id) == nullptr) {
        return InvalidArgument("tokenizer.json: post_processor adds id " + std::to_string(id) +
                               ", which is neither in the model vocab nor an added token");
      }
    }
  }

  if (!tokenizer_config_json.empty()) {
    StatusOr<JsonValue> c = JsonValue::Parse(tokenizer_config_json);
    if (!c.ok()) return c.status().WithContext("tokenizer_config.json");
    if (!c->is_object()) return InvalidArgument("tokenizer_config.json: expected an object");
    TokenizerConfig& cfg = impl->config;
    SEER_ASSIGN_OR_RETURN(cfg.bos_token, ConfigToken(*c, "bos_token"));
    SEER_ASSIGN_OR_RETURN(cfg.eos_token, ConfigToken(*c, "eos_token"));
    SEER_ASSIGN_OR_RETURN(cfg.unk_token, ConfigToken(*c, "unk_token"));
    SEER_ASSIGN_OR_RETURN(cfg.pad_token, ConfigToken(*c, "pad_token"));
    if (const JsonValue* t = c->Find("chat_template"); t != nullptr && !t->is_null()) {
      if (t->is_string()) {
        cfg.chat_template = t->as_string();
      } else if (t->is_array()) {  // named templates: [{"name": ..., "template": ...}]
        for (const JsonValue& e : t->as_array()) {
          const JsonValue* name = e.Find("name");
          const JsonValue* text = e.Find("template");
          if (name && name->is_string() && name->as_string() == "default" && text && text->is_string()) {
            cfg.chat_template = text->as_string();
          }
        }
      } else {
        return InvalidArgument("tokenizer_config.json: chat_template: expected a string or a list of named templates");
      }
    }
    for (auto [field, target] :
         {std::pair{"add_bos_token", &cfg.add_bos_token}, {"add_eos_token", &cfg.add_eos_token}}) {
      if (const JsonValue* v = c->Find(field); v != nullptr && v->is_bool()) *target = v->as_bool();
    }
    if (const JsonValue* v = c->Find("clean_up_tokenization_spaces"); v != nullptr && v->is_bool()) {
      cfg.clean_up_tokenization_spaces = v->as_bool();
    }
  }
  auto token_id = [&](const std::string& s) -> std::optional<int32_t> {
    if (s.empty()) return std::nullopt;
    if (auto it = impl->added_by_content.find(s); it != impl->added_by_content.end()) return it->second;
    if (auto it = impl->model->vocab().find(s); it != impl->model->vocab().end()) return it->second;
    return std::nullopt;
  };
  impl->config.bos_token_id = token_id(impl->config.bos_token);
  impl->config.eos_token_id = token_id(impl->config.eos_token);
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  const Impl& m = *impl_;
  if (!unicode::IsValidUtf8(text)) return InvalidArgument("text is not valid UTF-8");
  // 1. Added tokens matched on the raw text; 2. normalise the rest and match
  // the normalised added tokens; 3. pre-tokenize; 4. BPE.
  std::vector<Piece> pieces, next;
  m.raw_matcher.Split({std::string(text), -1, true}, &pieces);
  for (Piece& p : pieces) {
    if (p.token >= 0) {
      next.push_back(std::move(p));
      continue;
    }
    if (m.normalizer) {
      SEER_ASSIGN_OR_RETURN(p.text, m.normalizer->Normalize(p.text));
    }
    if (p.text.empty()) continue;
    m.normalized_matcher.Split(p, &next);
  }
  pieces.swap(next);
  next.clear();
  if (m.pre_tokenizer) {
    for (Piece& p : pieces) {
      if (p.token >= 0) {
        next.push_back(std::move(p));
      } else {
        SEER_RETURN_IF_ERROR(m.pre_tokenizer->Split(std::move(p), &next));
      }
    }
    pieces.swap(next);
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const Piece& p : pieces) {
    if (p.token >= 0) {
      ids.push_back(p.token);
    } else {
      SEER_RETURN_IF_ERROR(m.model->Tokenize(p.text, &ids));
    }
  }
  if (m.post_processor) m.post_processor->Process(&ids, add_special_tokens);
  return ids;
}

StatusOr<std::string> Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  DecodeState state;
  return impl_->DecodeTokens(ids, skip_special_tokens, &state);
}

StatusOr<std::string> Tokenizer::DecodeBytes(std::span<const int32_t> ids, bool skip_special_tokens) const {
  DecodeState state;
  state.raw_bytes = true;
  return impl_->DecodeTokens(ids, skip_special_tokens, &state);
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) return it->second;
  if (auto it = impl_->model->vocab().find(token); it != impl_->model->vocab().end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  const std::string* t = impl_->TokenText(id);
  if (t == nullptr) return std::nullopt;
  return *t;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

const TokenizerConfig& Tokenizer::config() const { return impl_->config; }

StatusOr<std::string> Tokenizer::Normalize(std::string_view text) const {
  if (!unicode::IsValidUtf8(text)) return InvalidArgument("text is not valid UTF-8");
  if (!impl_->normalizer) return std::string(text);
  return impl_->normalizer->Normalize(text);
}

StatusOr<std::vector<std::string>> Tokenizer::PreTokenize(std::string_view text) const {
  if (!unicode::IsValidUtf8(text)) return InvalidArgument("text is not valid UTF-8");
  std::vector<std::string> out;
  if (text.empty()) return out;
  if (!impl_->pre_tokenizer) {
    out.emplace_back(text);
    return out;
  }
  std::vector<Piece> pieces;
  SEER_RETURN_IF_ERROR(impl_->pre_tokenizer->Split({std::string(text), -1, true}, &pieces));
  for (Piece& p : pieces) out.push_back(std::move(p.text));
  return out;
}

// --- IncrementalDecoder ---

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(&tokenizer), skip_special_(skip_special_tokens) {}

StatusOr<std::string> IncrementalDecoder::Step(int32_t id) {
  if (!tokenizer_->IdToToken(id)) {
    return InvalidArgument("id " + std::to_string(id) + " is not in the vocabulary (size " +
                           std::to_string(tokenizer_->vocab_size()) + ")");
  }
  window_.push_back(id);
  return Emit(false);
}

StatusOr<std::string> IncrementalDecoder::Finish() {
  StatusOr<std::string> rest = Emit(true);
  window_.clear();
  at_start_ = true;
  emitted_.clear();
  return rest;
}

StatusOr<std::string> IncrementalDecoder::Emit(bool final) {
  const Tokenizer::Impl& m = *tokenizer_->impl_;
  DecodeState state;
  state.continuation = !at_start_;
  SEER_ASSIGN_OR_RETURN(std::string text, m.DecodeTokens(window_, skip_special_, &state));
  size_t stable = text.size();
  bool cut_ok = true;
  if (!final) {
    const Decoder* d = m.decoder.get();
    // A trailing run of byte-fallback tokens may still become valid UTF-8 or not.
    if (d != nullptr && d->HasByteFallback()) {
      // Skipped special tokens are invisible to the decoder: bytes on both
      // sides of one belong to the same group.
      size_t group = window_.size();
      while (group > 0) {
        const std::string* t = m.TokenText(window_[group - 1]);
        if (t == nullptr) break;
        if (!(skip_special_ && m.special_contents.count(*t)) && ParseByteToken(*t) < 0) break;
        --group;
      }
      while (group < window_.size() && skip_special_ && m.special_contents.count(*m.TokenText(window_[group]))) {
        ++group;
      }
      if (group < window_.size()) {
        DecodeState s2;
        s2.continuation = !at_start_;
        SEER_ASSIGN_OR_RETURN(std::string head, m.DecodeTokens(std::span(window_).first(group), skip_special_, &s2));
        if (text.compare(0, head.size(), head) == 0) {
          stable = head.size();
        } else {
          stable = 0;
        }
        cut_ok = false;
      }
    }
    // U+FFFD at the end may be an incomplete sequence that later bytes complete.
    static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
    while (stable >= kReplacement.size() && std::string_view(text).substr(0, stable).ends_with(kReplacement)) {
      stable -= kReplacement.size();
      cut_ok = false;
    }
    // A Strip decoder may still remove trailing characters.
    if (d != nullptr && d->StripStop() > 0) {
      cut_ok = false;
      std::u32string u;
      unicode::DecodeUtf8(std::string_view(text).substr(0, stable), &u);
      size_t n = u.size();
      for (int i = 0; i < d->StripStop() && n > 0 && u[n - 1] == d->StripContent(); ++i) --n;
      stable = unicode::ToUtf8(std::u32string_view(u).substr(0, n)).size();
    }
    // At the stream's start, a Strip of leading characters is settled only
    // once some text survives it.
    if (at_start_ && text.empty()) cut_ok = false;
    // Without a decoder tokens are joined with spaces: keep one window.
    if (d == nullptr) cut_ok = false;
  }
  if (stable < emitted_.size()) stable = emitted_.size();
  if (text.compare(0, emitted_.size(), emitted_) != 0) {
    return Internal("incremental decode: the decoded text changed after " + std::to_string(emitted_.size()) +
                    " bytes were emitted");
  }
  std::string out = text.substr(emitted_.size(), stable - emitted_.size());
  emitted_ = text.substr(0, stable);
  if (!final && cut_ok && stable == text.size()) {
    window_.clear();
    at_start_ = false;
    emitted_.clear();
  }
  return out;
}

}  // namespace seer
