// LoadGates: a SeerAttention gate directory as the authors release it
// (config.json with the seerattn_* fields plus attn_gate_weights.pth), or
// with *.safetensors instead of the .pth. Everything is checked against the
// model before a single gate runs: a mismatch names the key and both shapes.

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/json.h"
#include "base/strings.h"
#include "engine/model/gates.h"
#include "formats/pth_reader.h"
#include "formats/safetensors.h"
#include "kernels/gate/distill_target_cpu.h"
#include "kernels/ops/ops_cpu.h"

namespace seer {
namespace {

constexpr std::string_view kGateType = "Qavg_Kmaxminavg";
constexpr int kBlockSize = 64;  // the only size the kernels and the released gates use
constexpr std::string_view kPthName = "attn_gate_weights.pth";
constexpr std::string_view kLayerPrefix = "model.layers.";
constexpr std::string_view kGateInfix = ".self_attn.attn_gate.";
constexpr std::string_view kKWeight = "mask_linear_k.weight";
constexpr std::string_view kQWeight = "mask_linear_q.weight";

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string KeyFor(int layer, std::string_view which) {
  return std::string(kLayerPrefix) + std::to_string(layer) + std::string(kGateInfix) + std::string(which);
}

// --- config.json -------------------------------------------------------------

struct GateFileConfig {
  GateConfig gate;
  bool force_double = false;
};

StatusOr<GateFileConfig> ParseGateConfig(const JsonValue& root, const std::string& path, const ModelConfig& model) {
  if (!root.is_object()) return InvalidArgument(path + ": must hold a JSON object");
  const JsonFieldReader r(root, path);
  constexpr int64_t kAnyInt = std::numeric_limits<int64_t>::max();
  GateFileConfig out;
  GateConfig& gc = out.gate;
  // Defaults are those of the authors' config class (SeerAttnLlamaConfig).
  SEER_ASSIGN_OR_RETURN(gc.base_model, r.String("base_model", ""));
  SEER_ASSIGN_OR_RETURN(gc.gate_type, r.String("seerattn_gate_type", gc.gate_type));
  SEER_ASSIGN_OR_RETURN(const int64_t block, r.Int("seerattn_gate_block_size", -kAnyInt, kAnyInt, kBlockSize));
  SEER_ASSIGN_OR_RETURN(const int64_t hidden, r.Int("seerattn_gate_hidden_size", -kAnyInt, kAnyInt, 128));
  SEER_ASSIGN_OR_RETURN(out.force_double, r.Bool("seerattn_gate_force_double", false));
  SEER_ASSIGN_OR_RETURN(const std::string method, r.String("seerattn_sparsity_method", "threshold"));
  SEER_ASSIGN_OR_RETURN(const double threshold, r.Number("seerattn_threshold", 0.0));
  SEER_ASSIGN_OR_RETURN(const double nz_ratio, r.Number("seerattn_nz_ratio", 1.0));
  SEER_ASSIGN_OR_RETURN(gc.sparsity.last_block_dense, r.Bool("seerattn_last_block_dense", true));

  if (gc.gate_type != kGateType) {
    return r.Error("seerattn_gate_type", "is " + Quoted(gc.gate_type) + "; only " + Quoted(kGateType) +
                                             " (the released prefill gates) is supported");
  }
  if (block != kBlockSize) {
    return r.Error("seerattn_gate_block_size",
                   "is " + std::to_string(block) + "; only " + std::to_string(kBlockSize) + " is supported");
  }
  if (hidden <= 0 || hidden % 2 != 0 || hidden > 65536) {
    return r.Error("seerattn_gate_hidden_size",
                   "is " + std::to_string(hidden) + "; it must be a positive even number (RoPE pairs) up to 65536");
  }
  gc.block_size = static_cast<int>(block);
  gc.hidden = static_cast<int>(hidden);
  if (!SparsityValueInRange(SparsityMode::kThreshold, threshold)) {
    return r.Error("seerattn_threshold", "is " + root.Find("seerattn_threshold")->Dump() + "; need " +
                                             std::string(SparsityRangeRule(SparsityMode::kThreshold)));
  }
  if (!SparsityValueInRange(SparsityMode::kNzRatio, nz_ratio)) {
    return r.Error("seerattn_nz_ratio", "is " + root.Find("seerattn_nz_ratio")->Dump() + "; need " +
                                            std::string(SparsityRangeRule(SparsityMode::kNzRatio)));
  }
  gc.sparsity.threshold = threshold;
  gc.sparsity.nz_ratio = nz_ratio;
  if (method == "threshold") {
    gc.sparsity.mode = SparsityMode::kThreshold;
  } else if (method == "nz_ratio") {
    gc.sparsity.mode = SparsityMode::kNzRatio;
  } else {
    return r.Error("seerattn_sparsity_method", "is " + Quoted(method) + "; expected 'threshold' or 'nz_ratio'");
  }

  // A gate config is the base model's config plus the seerattn_* fields.
  // Where it states the model's shape, it must be this model's shape.
  struct ShapeField {
    const char* name;
    int64_t model_value;
  };
  const ShapeField shape_fields[] = {{"num_hidden_layers", model.num_layers},
                                     {"num_attention_heads", model.num_heads},
                                     {"num_key_value_heads", model.num_kv_heads},
                                     {"head_dim", model.head_dim}};
  for (const ShapeField& f : shape_fields) {
    SEER_ASSIGN_OR_RETURN(const int64_t v, r.Int(f.name, -kAnyInt, kAnyInt, f.model_value));
    if (v != f.model_value) {
      return r.Error(f.name, "is " + std::to_string(v) + " but the model has " + std::to_string(f.model_value) +
                                 (gc.base_model.empty() ? "" : " (the gates were trained for " + gc.base_model + ")"));
    }
  }
  return out;
}

// --- what a gate file may hold ---------------------------------------------------

// Products of shapes, saturating instead of wrapping.
uint64_t SatMul(uint64_t a, uint64_t b) {
  uint64_t out;
  return __builtin_mul_overflow(a, b, &out) ? UINT64_MAX : out;
}
uint64_t SatAdd(uint64_t a, uint64_t b) {
  uint64_t out;
  return __builtin_add_overflow(a, b, &out) ? UINT64_MAX : out;
}

// Bounds on a gate file, from the shapes the model and the gate config call
// for: the expected tensors in float32 (the widest type accepted), the pickle
// that can describe them, and the zip or safetensors records around them. A
// file beyond them is refused before it is read; the readers' memory stays
// proportional to what the model needs. Twice the expected values are
// allowed, so that a near miss (a layer too many, a wider shape) still gets
// the precise message of the shape checks below.
struct GateFileBounds {
  PthLimits pth;
  SafetensorsLimits safetensors;
  uint64_t max_value_bytes = 0;  // float32 values of every tensor together
};

constexpr uint64_t kValueSlackBytes = 1 << 20;

// Pickle and header bytes per tensor: a tensor takes about 200 bytes of
// torch's pickle and about 120 of a safetensors header; 10x that is allowed.
constexpr uint64_t kRecordBytesPerTensor = 2048;
constexpr uint64_t kRecordBytesBase = 64 << 10;
// Zip records per entry: two headers, the name twice (at most 4096 bytes
// each), torch's alignment padding.
constexpr uint64_t kZipBytesPerEntry = 16 << 10;
// Entries besides the storages: data.pkl, byteorder, version, ...
constexpr uint64_t kZipOtherEntries = 16;

GateFileBounds BoundsFor(const ModelConfig& model, const GateConfig& gate, bool expect_q) {
  const uint64_t d = static_cast<uint64_t>(model.head_dim), hidden = static_cast<uint64_t>(gate.hidden);
  const uint64_t k_heads = static_cast<uint64_t>(expect_q ? model.num_kv_heads : model.num_heads);
  const uint64_t per_layer_values =
      SatAdd(SatMul(SatMul(k_heads, 3 * d), hidden), expect_q ? SatMul(SatMul(model.num_heads, d), hidden) : 0);
  const uint64_t layers = static_cast<uint64_t>(model.num_layers);
  const uint64_t tensors = layers * (expect_q ? 2 : 1);

  GateFileBounds b;
  b.max_value_bytes = SatAdd(SatMul(SatMul(SatMul(per_layer_values, layers), sizeof(float)), 2), kValueSlackBytes);
  const std::string source = "the gates of a " + std::to_string(model.num_layers) + "-layer model with " +
                             std::to_string(model.num_heads) + "/" + std::to_string(model.num_kv_heads) +
                             " heads, head_dim " + std::to_string(model.head_dim) + " and gate hidden size " +
                             std::to_string(gate.hidden);
  const uint64_t records = SatAdd(kRecordBytesBase, SatMul(tensors, kRecordBytesPerTensor));
  b.pth.source = source;
  b.pth.max_pickle_bytes = static_cast<size_t>(std::min<uint64_t>(records, b.pth.max_pickle_bytes));
  b.pth.max_value_bytes = b.max_value_bytes;
  b.pth.max_file_bytes =
      SatAdd(SatAdd(b.max_value_bytes, records), SatMul(tensors + kZipOtherEntries, kZipBytesPerEntry));
  b.safetensors.source = source;
  b.safetensors.max_header_bytes = std::min<uint64_t>(records, b.safetensors.max_header_bytes);
  return b;
}

// --- weight files ------------------------------------------------------------

struct LoadedTensor {
  std::string file;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

Status AddTensor(std::map<std::string, LoadedTensor>* all, const std::string& name, LoadedTensor t) {
  if (all->count(name)) {
    return InvalidArgument(t.file + ": key " + Quoted(name) + " also appears in " + (*all)[name].file);
  }
  // An inf or NaN weight (a diverged training run) would make every score
  // of its heads inf or NaN and the selection meaningless.
  for (size_t i = 0; i < t.values.size(); ++i) {
    if (!std::isfinite(t.values[i])) {
      return InvalidArgument(t.file + ": key " + Quoted(name) + ": element " + std::to_string(i) + " is " +
                             (std::isnan(t.values[i]) ? "NaN" : "infinite") + "; gate weights must be finite");
    }
  }
  (*all)[name] = std::move(t);
  return OkStatus();
}

Status ReadSafetensors(const std::string& path, const GateFileBounds& bounds, uint64_t* value_bytes,
                       std::map<std::string, LoadedTensor>* all) {
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path, bounds.safetensors));
  for (const TensorView& v : file->tensors()) {
    // Converted to float32 only while the total stays within what the model
    // needs; the bytes of a tensor beyond it are never read.
    *value_bytes = SatAdd(*value_bytes, SatMul(static_cast<uint64_t>(v.numel()), sizeof(float)));
    if (*value_bytes > bounds.max_value_bytes) {
      return InvalidArgument(path + ": key " + Quoted(v.name) + ": the tensors add up to more than " +
                             std::to_string(bounds.max_value_bytes) + " bytes of float32 values (" +
                             bounds.safetensors.source + ")");
    }
    if (v.dtype != DType::kBF16 && v.dtype != DType::kF16 && v.dtype != DType::kF32) {
      return InvalidArgument(path + ": key " + Quoted(v.name) + " has dtype " + std::string(DTypeName(v.dtype)) +
                             "; gate weights must be BF16, F16 or F32");
    }
    LoadedTensor t;
    t.file = path;
    t.dtype = v.dtype;
    t.shape = v.shape;
    t.values.resize(static_cast<size_t>(v.numel()));
    if (!ConvertToFloat(v.dtype, v.data, t.values.size(), t.values.data())) {
      return InvalidArgument(path + ": key " + Quoted(v.name) + " cannot be converted to float");
    }
    SEER_RETURN_IF_ERROR(AddTensor(all, v.name, std::move(t)));
  }
  return OkStatus();
}

StatusOr<std::map<std::string, LoadedTensor>> ReadWeights(const std::string& dir, const GateFileBounds& bounds,
                                                          std::string* source) {
  namespace fs = std::filesystem;
  std::map<std::string, LoadedTensor> all;
  const fs::path pth = fs::path(dir) / kPthName;
  std::error_code ec;
  if (fs::is_regular_file(pth, ec)) {
    *source = pth.string();
    SEER_ASSIGN_OR_RETURN(PthStateDict sd, ReadPthFile(pth.string(), bounds.pth));
    for (PthTensor& t : sd.tensors) {
      LoadedTensor l;
      l.file = pth.string();
      l.dtype = t.dtype;
      l.shape = std::move(t.shape);
      l.values = std::move(t.values);
      SEER_RETURN_IF_ERROR(AddTensor(&all, t.name, std::move(l)));
    }
    return all;
  }
  std::vector<std::string> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".safetensors" && it->is_regular_file(ec)) files.push_back(it->path().string());
  }
  if (ec) return NotFound(dir + ": cannot list the gate directory: " + ec.message());
  if (files.empty()) {
    return NotFound(dir + ": no " + std::string(kPthName) + " and no *.safetensors gate weights");
  }
  std::sort(files.begin(), files.end());
  *source = files.size() == 1 ? files[0] : dir + "/*.safetensors";
  uint64_t value_bytes = 0;
  for (const std::string& f : files) SEER_RETURN_IF_ERROR(ReadSafetensors(f, bounds, &value_bytes, &all));
  return all;
}

// Splits "model.layers.{i}.self_attn.attn_gate.{what}" into i and what.
bool ParseGateKey(std::string_view key, int64_t* layer, std::string_view* what) {
  if (key.substr(0, kLayerPrefix.size()) != kLayerPrefix) return false;
  key.remove_prefix(kLayerPrefix.size());
  size_t digits = 0;
  while (digits < key.size() && key[digits] >= '0' && key[digits] <= '9') ++digits;
  if (digits == 0 || digits > 9 || (digits > 1 && key[0] == '0')) return false;
  *layer = std::stoll(std::string(key.substr(0, digits)));
  key.remove_prefix(digits);
  if (key.substr(0, kGateInfix.size()) != kGateInfix) return false;
  *what = key.substr(kGateInfix.size());
  return true;
}

}  // namespace

StatusOr<GateWeights> LoadGates(const std::string& dir, const ModelConfig& model) {
  const std::string config_path = dir + "/config.json";
  SEER_ASSIGN_OR_RETURN(JsonValue root, ReadJsonFile(config_path));
  SEER_ASSIGN_OR_RETURN(GateFileConfig fc, ParseGateConfig(root, config_path, model));

  if (model.num_layers <= 0 || model.num_heads <= 0 || model.num_kv_heads <= 0 || model.head_dim <= 0 ||
      model.num_heads % model.num_kv_heads != 0) {
    return InvalidArgument(dir + ": the model's shape (layers " + std::to_string(model.num_layers) + ", heads " +
                           std::to_string(model.num_heads) + "/" + std::to_string(model.num_kv_heads) + ", head_dim " +
                           std::to_string(model.head_dim) + ") cannot carry gates");
  }

  // The authors' gate has mask_linear_q only in the "double" form (forced, or
  // when hidden != head_dim); then mask_linear_k has one head per KV head.
  const int hq = model.num_heads, hkv = model.num_kv_heads, d = model.head_dim, hidden = fc.gate.hidden;
  const bool expect_q = fc.force_double || hidden != d;

  std::string source;
  SEER_ASSIGN_OR_RETURN(auto tensors, ReadWeights(dir, BoundsFor(model, fc.gate, expect_q), &source));
  const std::vector<int64_t> k_shape = {expect_q ? hkv : hq, 3 * d, hidden};
  const std::vector<int64_t> q_shape = {hq, d, hidden};
  const std::string k_formula = std::string("[") + (expect_q ? "Hkv" : "Hq") + ", 3*head_dim, hidden]";

  // Every tensor must be a gate weight of a layer the model has.
  for (const auto& [name, t] : tensors) {
    int64_t layer = -1;
    std::string_view what;
    if (!ParseGateKey(name, &layer, &what) || (what != kKWeight && what != kQWeight)) {
      return InvalidArgument(source + ": unexpected tensor " + Quoted(name) +
                             "; a prefill gate holds only model.layers.{i}.self_attn.attn_gate." +
                             std::string(kKWeight) + " (and " + std::string(kQWeight) + ")");
    }
    if (layer >= model.num_layers) {
      return InvalidArgument(source + ": key " + Quoted(name) + " is for layer " + std::to_string(layer) +
                             " but the model has " + std::to_string(model.num_layers) + " layers");
    }
    if (what == kQWeight && !expect_q) {
      return InvalidArgument(source + ": unexpected key " + Quoted(name) +
                             ": the gate config has seerattn_gate_force_double false and hidden == head_dim, "
                             "so the gate has no mask_linear_q");
    }
    if (t.dtype != DType::kBF16 && t.dtype != DType::kF16 && t.dtype != DType::kF32) {
      return InvalidArgument(source + ": key " + Quoted(name) + " has dtype " + std::string(DTypeName(t.dtype)) +
                             "; gate weights must be BF16, F16 or F32");
    }
  }

  GateWeights gw;
  gw.config = fc.gate;
  gw.layers.resize(model.num_layers);
  for (int i = 0; i < model.num_layers; ++i) {
    auto take = [&](std::string_view which, const std::vector<int64_t>& want, const std::string& formula,
                    std::vector<float>* out) -> Status {
      const std::string key = KeyFor(i, which);
      auto it = tensors.find(key);
      if (it == tensors.end()) return InvalidArgument(source + ": missing key " + key);
      if (it->second.shape != want) {
        return InvalidArgument(source + ": key " + key + " has shape " + ShapeText(it->second.shape) +
                               ", the model needs " + formula + " = " + ShapeText(want));
      }
      *out = std::move(it->second.values);
      return OkStatus();
    };
    SEER_RETURN_IF_ERROR(take(kKWeight, k_shape, k_formula, &gw.layers[i].k_weight));
    if (expect_q) {
      SEER_RETURN_IF_ERROR(take(kQWeight, q_shape, "[Hq, head_dim, hidden]", &gw.layers[i].q_weight));
      gw.layers[i].q_in = d;
    }
  }
  return gw;
}

// --- running one layer on the CPU ---------------------------------------------

namespace {

// The [Hq, nb, nb] probability and mask outputs are bounded so that a huge
// prompt is a clear error rather than an allocation failure.
constexpr uint64_t kMaxScoreEntries = uint64_t{1} << 31;

std::string Str(int64_t v) { return std::to_string(v); }

// Checks everything the twin reads and describes it as a GateProblem, so that
// the twin's loops index safely.
Status DescribeGate(const GateLayerWeights& w, const GateConfig& gc, const ModelConfig& model, const float* q,
                    const float* k, int seq_len, cpu::GateProblem* out) {
  if (gc.gate_type != kGateType) {
    return InvalidArgument("gate type '" + gc.gate_type + "' is not supported; only " + std::string(kGateType));
  }
  if (gc.block_size <= 0) return InvalidArgument("gate block_size " + Str(gc.block_size) + " must be positive");
  if (gc.hidden <= 0 || gc.hidden % 2 != 0) {
    return InvalidArgument("gate hidden size " + Str(gc.hidden) + " must be positive and even (RoPE pairs)");
  }
  if (model.num_heads <= 0 || model.num_kv_heads <= 0 || model.head_dim <= 0) {
    return InvalidArgument("model heads " + Str(model.num_heads) + "/" + Str(model.num_kv_heads) + " and head_dim " +
                           Str(model.head_dim) + " must be positive");
  }
  if (model.num_heads % model.num_kv_heads != 0) {
    return InvalidArgument("model num_heads " + Str(model.num_heads) + " is not a multiple of num_kv_heads " +
                           Str(model.num_kv_heads));
  }
  if (seq_len < 0) return InvalidArgument("gate seq_len " + Str(seq_len) + " is negative");
  if (seq_len > 0 && (q == nullptr || k == nullptr)) return InvalidArgument("gate input q or k is null");

  cpu::GateProblem p;
  p.q = q;
  p.k = k;
  p.seq_len = seq_len;
  p.num_heads = model.num_heads;
  p.num_kv_heads = model.num_kv_heads;
  p.head_dim = model.head_dim;
  p.block_size = gc.block_size;
  p.hidden = gc.hidden;
  p.k_weight = w.k_weight.data();
  p.q_weight = w.q_weight.empty() ? nullptr : w.q_weight.data();

  const uint64_t k_per_head = uint64_t{3} * p.head_dim * p.hidden;
  if (w.k_weight.size() == k_per_head * p.num_heads) {
    p.k_weight_heads = p.num_heads;
  } else if (p.q_weight != nullptr && w.k_weight.size() == k_per_head * p.num_kv_heads) {
    // force_double gates: mask_linear_k has one head per KV head and its
    // output is repeated to the Q heads, which is the same as using W[h / group].
    p.k_weight_heads = p.num_kv_heads;
  } else {
    return InvalidArgument("mask_linear_k has " + Str(static_cast<int64_t>(w.k_weight.size())) +
                           " values, the model needs [" + Str(p.num_heads) + ", " + Str(3 * p.head_dim) + ", " +
                           Str(p.hidden) + "] = " + Str(static_cast<int64_t>(k_per_head * p.num_heads)));
  }
  if (p.q_weight != nullptr) {
    // Q is pooled by average only, so mask_linear_q reads head_dim channels.
    if (w.q_in != p.head_dim) {
      return InvalidArgument("mask_linear_q input size " + Str(w.q_in) + " must equal head_dim " + Str(p.head_dim) +
                             " for gate type " + std::string(kGateType));
    }
    const uint64_t need = uint64_t(p.num_heads) * uint64_t(w.q_in) * uint64_t(p.hidden);
    if (w.q_weight.size() != need) {
      return InvalidArgument("mask_linear_q has " + Str(static_cast<int64_t>(w.q_weight.size())) +
                             " values, the model needs [" + Str(p.num_heads) + ", " + Str(w.q_in) + ", " +
                             Str(p.hidden) + "] = " + Str(static_cast<int64_t>(need)));
    }
  } else if (p.hidden != p.head_dim) {
    return InvalidArgument("gate hidden size " + Str(p.hidden) + " differs from head_dim " + Str(p.head_dim) +
                           " but the gate has no mask_linear_q");
  }
  const uint64_t nb = (uint64_t(seq_len) + uint64_t(p.block_size) - 1) / uint64_t(p.block_size);
  const uint64_t entries = uint64_t(p.num_heads) * nb * nb;
  if (entries > kMaxScoreEntries) {
    return ResourceExhausted("gate for " + Str(seq_len) + " tokens needs " + Str(static_cast<int64_t>(entries)) +
                             " block scores, above the limit of " + Str(static_cast<int64_t>(kMaxScoreEntries)));
  }
  *out = p;
  return OkStatus();
}

// The oracle baseline's ranking: the true distillation target of this layer,
// from q and k with the model's own RoPE (what its attention sees).
StatusOr<std::vector<float>> OracleTarget(const GateConfig& gc, const ModelConfig& model, const float* q,
                                          const float* k, int seq_len, int threads) {
  const int hq = model.num_heads, hkv = model.num_kv_heads, d = model.head_dim;
  std::vector<float> q_rope, k_rope, inv_freq;
  std::vector<int32_t> positions(seq_len);
  try {
    q_rope.assign(q, q + size_t(seq_len) * hq * d);
    k_rope.assign(k, k + size_t(seq_len) * hkv * d);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("oracle sparsity: not enough host memory for a copy of " + Str(seq_len) +
                             " tokens' Q and K");
  }
  for (double f : RopeInvFreq(model.rope, d)) inv_freq.push_back(static_cast<float>(f));
  for (int i = 0; i < seq_len; ++i) positions[i] = i;
  cpu::ApplyRope(q_rope.data(), seq_len, hq, d, positions.data(), inv_freq.data());
  cpu::ApplyRope(k_rope.data(), seq_len, hkv, d, positions.data(), inv_freq.data());
  cpu::DistillTargetProblem p;
  p.q = q_rope.data();
  p.k = k_rope.data();
  p.seq_len = seq_len;
  p.num_heads = hq;
  p.num_kv_heads = hkv;
  p.head_dim = d;
  p.block_size = gc.block_size;
  // As the CPU engine and HF scale the attention scores: head_dim^-0.5 in float32.
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  return cpu::DistillTarget(p, threads);
}

}  // namespace

StatusOr<GateOutput> RunGate(const GateLayerWeights& w, const GateConfig& gc, const ModelConfig& model, const float* q,
                             const float* k, int seq_len, const SparsityConfig& sparsity, int num_threads) {
  cpu::GateProblem problem;
  SEER_RETURN_IF_ERROR(DescribeGate(w, gc, model, q, k, seq_len, &problem));
  std::vector<float> inv_freq;
  for (double f : RopeInvFreq(model.rope, gc.hidden)) inv_freq.push_back(static_cast<float>(f));
  problem.rope_inv_freq = inv_freq.data();
  const int threads =
      num_threads > 0 ? num_threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<float> oracle_target;
  if (sparsity.mode == SparsityMode::kOracle && seq_len > 0) {
    SEER_ASSIGN_OR_RETURN(oracle_target, OracleTarget(gc, model, q, k, seq_len, threads));
    problem.oracle_target = oracle_target.data();
  }
  return cpu::RunGate(problem, sparsity, threads);
}

uint64_t GatesFingerprint(const GateWeights& gates) {
  uint64_t h = 0x9E3779B97F4A7C15ull;
  auto mix = [&h](uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  };
  for (char c : gates.config.gate_type) mix(static_cast<unsigned char>(c));
  mix(static_cast<uint64_t>(gates.config.block_size));
  mix(static_cast<uint64_t>(gates.config.hidden));
  for (const GateLayerWeights& l : gates.layers) {
    mix(static_cast<uint64_t>(l.q_in));
    for (const std::vector<float>* w : {&l.k_weight, &l.q_weight}) {
      mix(w->size());
      uint32_t bits = 0;
      for (float x : *w) {
        std::memcpy(&bits, &x, sizeof bits);
        mix(bits);
      }
    }
  }
  return h;
}

}  // namespace seer
