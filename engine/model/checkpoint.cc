#include "engine/model/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "base/json.h"

namespace seer {
namespace {

namespace fs = std::filesystem;

constexpr const char* kConfigFile = "config.json";
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
// Bytes hashed from each end of every tensor for the fingerprint.
constexpr size_t kFingerprintSample = 4096;

std::string Join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

bool IsRegularFile(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// FNV-1a, 64-bit. Every field is fed with a fixed width or a length prefix,
// so that different field sequences cannot produce the same byte stream.
class Fnv1a64 {
 public:
  void Bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) {
      hash_ ^= p[i];
      hash_ *= 0x100000001b3ull;
    }
  }
  void U64(uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
    Bytes(b, 8);
  }
  void F64(double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    U64(bits);
  }
  void Str(std::string_view s) {
    U64(s.size());
    Bytes(s.data(), s.size());
  }
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_ = 0xcbf29ce484222325ull;
};

uint64_t Fingerprint(const ModelConfig& c, const std::vector<const TensorView*>& tensors_by_name) {
  Fnv1a64 h;
  h.Str(c.architecture_name);
  for (int64_t v : {int64_t{c.vocab_size}, int64_t{c.hidden_size}, int64_t{c.intermediate_size}, int64_t{c.num_layers},
                    int64_t{c.num_heads}, int64_t{c.num_kv_heads}, int64_t{c.head_dim}, c.max_position_embeddings,
                    c.rope.original_max_position_embeddings}) {
    h.U64(static_cast<uint64_t>(v));
  }
  h.F64(c.rms_norm_eps);
  h.Str(c.rope.type);
  for (double v : {c.rope.theta, c.rope.factor, c.rope.low_freq_factor, c.rope.high_freq_factor}) h.F64(v);
  for (bool b : {c.attention_bias, c.o_proj_bias, c.mlp_bias, c.tie_word_embeddings}) h.U64(b ? 1 : 0);

  h.U64(tensors_by_name.size());
  for (const TensorView* t : tensors_by_name) {
    h.Str(t->name);
    h.Str(DTypeName(t->dtype));
    h.U64(t->shape.size());
    for (int64_t d : t->shape) h.U64(static_cast<uint64_t>(d));
    const size_t head = std::min(t->nbytes, kFingerprintSample);
    h.Bytes(t->data, head);
    const size_t tail = std::min(t->nbytes - head, kFingerprintSample);
    h.Bytes(t->data + t->nbytes - tail, tail);
  }
  return h.value();
}

// The JSON a checkpoint's files may carry, from the shapes of the model its
// config describes: the tensors stay memory-mapped (untouched until read),
// but each safetensors header and the shard index are parsed into memory, so
// they are bounded by the number of tensors the model can have, with room for
// extras (rotary buffers, biases, a few unused heads). A real header takes
// about 150 bytes per tensor.
struct CheckpointBounds {
  SafetensorsLimits header;
  uint64_t max_index_bytes = 0;
};

CheckpointBounds BoundsFor(const ModelConfig& c) {
  // Per layer at most 16 tensors (norms, projections, their biases); 8 more
  // around them; 4x as many allowed for tensors the model does not use.
  constexpr uint64_t kTensorsPerLayer = 16, kOtherTensors = 8, kSlack = 4;
  constexpr uint64_t kBytesPerTensor = 512, kBaseBytes = uint64_t{1} << 20;
  const uint64_t layers = c.num_layers > 0 ? static_cast<uint64_t>(c.num_layers) : 0;
  const uint64_t tensors = kSlack * (layers * kTensorsPerLayer + kOtherTensors);
  CheckpointBounds b;
  b.header.max_header_bytes = std::min(b.header.max_header_bytes, kBaseBytes + tensors * kBytesPerTensor);
  b.header.source = "a " + std::to_string(c.num_layers) + "-layer model's checkpoint";
  b.max_index_bytes = b.header.max_header_bytes;
  return b;
}

// A shard name from weight_map must name a file beside the index.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

}  // namespace

Checkpoint::~Checkpoint() = default;

StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = dir;
  {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return NotFound(dir + ": not a checkpoint directory (no such directory)");
  }
  SEER_ASSIGN_OR_RETURN(ckpt->config_, LoadModelConfig(Join(dir, kConfigFile)));
  const CheckpointBounds bounds = BoundsFor(ckpt->config_);

  const std::string index_path = Join(dir, kIndexFile);
  if (IsRegularFile(index_path)) {
    // Sharded: weight_map names the shard of every tensor.
    std::error_code ec;
    const uint64_t index_bytes = fs::file_size(index_path, ec);
    if (ec) return InvalidArgument(index_path + ": cannot read its size: " + ec.message());
    if (index_bytes > bounds.max_index_bytes) {
      return InvalidArgument(index_path + ": " + std::to_string(index_bytes) + " bytes, more than the limit of " +
                             std::to_string(bounds.max_index_bytes) + " (" + bounds.header.source + ")");
    }
    SEER_ASSIGN_OR_RETURN(JsonValue index, ReadJsonFile(index_path));
    const JsonValue* map = index.Find("weight_map");
    if (map == nullptr) return InvalidArgument(index_path + ": missing field 'weight_map'");
    if (!map->is_object()) {
      return InvalidArgument(index_path + ": field 'weight_map' must be an object, got " +
                             JsonValue::TypeName(map->type()));
    }
    std::map<std::string, size_t> shard_index;  // shard file -> position in files_
    for (const auto& [tensor, shard] : map->as_object()) {
      if (!shard.is_string() || !IsPlainFileName(shard.as_string())) {
        return InvalidArgument(index_path + ": field 'weight_map." + tensor +
                               "' must be a file name in the checkpoint directory, got " + shard.Dump());
      }
      shard_index.emplace(shard.as_string(), 0);
    }
    if (shard_index.empty()) return InvalidArgument(index_path + ": field 'weight_map' is empty");
    for (auto& [shard, position] : shard_index) {
      auto file = SafetensorsFile::Open(Join(dir, shard), bounds.header);
      if (!file.ok()) return file.status().WithContext(index_path + ": shard '" + shard + "'");
      position = ckpt->files_.size();
      ckpt->files_.push_back(std::move(file).value());
    }
    for (const auto& [tensor, shard] : map->as_object()) {
      const SafetensorsFile& file = *ckpt->files_[shard_index.at(shard.as_string())];
      if (file.Find(tensor) == nullptr) {
        return InvalidArgument(index_path + ": field 'weight_map' puts tensor '" + tensor + "' in " + file.path() +
                               ", which has no such tensor");
      }
    }
  } else if (const std::string single = Join(dir, kSingleFile); IsRegularFile(single)) {
    SEER_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single, bounds.header));
    ckpt->files_.push_back(std::move(file));
  } else {
    // Fallback: every *.safetensors in the directory.
    std::vector<std::string> paths;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".safetensors" && IsRegularFile(it->path().string())) {
        paths.push_back(it->path().string());
      }
    }
    if (ec) return InvalidArgument(dir + ": cannot list directory: " + ec.message());
    if (paths.empty()) {
      return NotFound(dir + ": no " + kSingleFile + ", " + kIndexFile + " or other *.safetensors file");
    }
    std::sort(paths.begin(), paths.end());
    for (const std::string& p : paths) {
      SEER_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(p, bounds.header));
      ckpt->files_.push_back(std::move(file));
    }
  }

  // One name, one tensor: a name in two files would make Get() ambiguous.
  std::map<std::string_view, const TensorView*> by_name;
  for (const auto& file : ckpt->files_) {
    for (const TensorView& t : file->tensors()) {
      auto [it, inserted] = by_name.emplace(t.name, &t);
      if (!inserted) {
        return InvalidArgument(dir + ": tensor '" + t.name + "' appears in both " + it->second->file + " and " +
                               t.file);
      }
    }
  }
  std::vector<const TensorView*> sorted;
  sorted.reserve(by_name.size());
  for (const auto& [name, t] : by_name) sorted.push_back(t);
  ckpt->fingerprint_ = Fingerprint(ckpt->config_, sorted);
  return ckpt;
}

bool Checkpoint::Has(std::string_view name) const {
  for (const auto& file : files_) {
    if (file->Find(name) != nullptr) return true;
  }
  return false;
}

StatusOr<TensorView> Checkpoint::Get(std::string_view name, const std::vector<int64_t>& expected_shape) const {
  const TensorView* found = nullptr;
  for (const auto& file : files_) {
    found = file->Find(name);
    if (found != nullptr) break;
  }
  if (found == nullptr) {
    std::string searched;
    for (const auto& file : files_) searched += (searched.empty() ? "" : ", ") + file->path();
    return NotFound(dir_ + ": missing tensor '" + std::string(name) + "' (searched " + searched + ")");
  }
  if (found->dtype != DType::kF32 && found->dtype != DType::kF16 && found->dtype != DType::kBF16) {
    return InvalidArgument("unsupported dtype " + std::string(DTypeName(found->dtype)) + " for tensor '" + found->name +
                           "' in " + found->file + " (expected F32, F16 or BF16)");
  }
  if (found->shape != expected_shape) {
    return InvalidArgument(found->file + ": tensor '" + found->name + "' has shape " + ShapeToString(found->shape) +
                           ", expected " + ShapeToString(expected_shape));
  }
  return *found;
}

StatusOr<ModelWeightViews> BindModelWeights(const Checkpoint& ckpt) {
  const ModelConfig& c = ckpt.config();
  const int64_t hidden = c.hidden_size;
  const int64_t inter = c.intermediate_size;
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;

  ModelWeightViews w;
  SEER_ASSIGN_OR_RETURN(w.embed_tokens, ckpt.Get("model.embed_tokens.weight", {c.vocab_size, hidden}));
  SEER_ASSIGN_OR_RETURN(w.norm, ckpt.Get("model.norm.weight", {hidden}));
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
  } else {
    auto lm_head = ckpt.Get("lm_head.weight", {c.vocab_size, hidden});
    if (!lm_head.ok()) {
      if (lm_head.status().code() != StatusCode::kNotFound) return lm_head.status();
      return NotFound(lm_head.status().message() + "; config.json has tie_word_embeddings: false, so it is required");
    }
    w.lm_head = *lm_head;
  }

  // Grown layer by layer: a config claiming absurdly many layers fails at
  // the first missing tensor instead of allocating them all up front.
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeightViews& l = w.layers.emplace_back();
    SEER_ASSIGN_OR_RETURN(l.input_norm, ckpt.Get(p + "input_layernorm.weight", {hidden}));
    SEER_ASSIGN_OR_RETURN(l.post_attention_norm, ckpt.Get(p + "post_attention_layernorm.weight", {hidden}));
    SEER_ASSIGN_OR_RETURN(l.q_proj, ckpt.Get(p + "self_attn.q_proj.weight", {q_dim, hidden}));
    SEER_ASSIGN_OR_RETURN(l.k_proj, ckpt.Get(p + "self_attn.k_proj.weight", {kv_dim, hidden}));
    SEER_ASSIGN_OR_RETURN(l.v_proj, ckpt.Get(p + "self_attn.v_proj.weight", {kv_dim, hidden}));
    SEER_ASSIGN_OR_RETURN(l.o_proj, ckpt.Get(p + "self_attn.o_proj.weight", {hidden, q_dim}));
    if (c.attention_bias) {
      SEER_ASSIGN_OR_RETURN(l.q_bias, ckpt.Get(p + "self_attn.q_proj.bias", {q_dim}));
      SEER_ASSIGN_OR_RETURN(l.k_bias, ckpt.Get(p + "self_attn.k_proj.bias", {kv_dim}));
      SEER_ASSIGN_OR_RETURN(l.v_bias, ckpt.Get(p + "self_attn.v_proj.bias", {kv_dim}));
    }
    if (c.o_proj_bias) {
      SEER_ASSIGN_OR_RETURN(l.o_bias, ckpt.Get(p + "self_attn.o_proj.bias", {hidden}));
    }
    SEER_ASSIGN_OR_RETURN(l.gate_proj, ckpt.Get(p + "mlp.gate_proj.weight", {inter, hidden}));
    SEER_ASSIGN_OR_RETURN(l.up_proj, ckpt.Get(p + "mlp.up_proj.weight", {inter, hidden}));
    SEER_ASSIGN_OR_RETURN(l.down_proj, ckpt.Get(p + "mlp.down_proj.weight", {hidden, inter}));
    if (c.mlp_bias) {
      SEER_ASSIGN_OR_RETURN(l.gate_bias, ckpt.Get(p + "mlp.gate_proj.bias", {inter}));
      SEER_ASSIGN_OR_RETURN(l.up_bias, ckpt.Get(p + "mlp.up_proj.bias", {inter}));
      SEER_ASSIGN_OR_RETURN(l.down_bias, ckpt.Get(p + "mlp.down_proj.bias", {hidden}));
    }
  }
  // A checkpoint with more layers than config.json says would load and run
  // a truncated model: refuse it, as Hugging Face's loader at least warns.
  const std::string next = "model.layers." + std::to_string(c.num_layers) + ".";
  for (const char* tensor : {"input_layernorm.weight", "self_attn.q_proj.weight", "mlp.down_proj.weight"}) {
    if (ckpt.Has(next + tensor)) {
      return InvalidArgument(ckpt.dir() + ": the checkpoint has tensors of layer " + std::to_string(c.num_layers) +
                             " ('" + next + tensor + "'), but config.json has num_hidden_layers " +
                             std::to_string(c.num_layers) + "; a model cut short would run");
    }
  }
  return w;
}

}  // namespace seer
