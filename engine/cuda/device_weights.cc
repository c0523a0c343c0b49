#include "engine/cuda/device_weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "engine/cuda/cuda_status.h"
#include "kernels/gate/gate.h"
#include "kernels/ops/ops.h"

namespace seer {
namespace {

constexpr size_t kAlign = 256;

// Hands out aligned pieces of one allocation. With a null base it only
// counts, which is how the size is planned before anything is allocated.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* Take(size_t count) {
    offset_ = (offset_ + kAlign - 1) / kAlign * kAlign;
    T* p = base_ != nullptr ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += count * sizeof(T);
    return p;
  }
  size_t size() const { return offset_; }

 private:
  char* base_;
  size_t offset_ = 0;
};

// kUniformBf16: uniform draws rounded to bf16, kept as float32 (the gates).
enum class Init { kUniform, kUniformBf16, kOnes, kRopeFreq, kGateRopeFreq };

// One tensor of the device copy: where it goes, its element count, and where
// its values come from (a checkpoint view, host floats, or a random draw).
struct Slot {
  std::string name;
  void* dst = nullptr;
  bool bf16 = true;
  size_t count = 0;
  Init init = Init::kUniform;
  float scale = 0.0f;  // random draws: uniform in [-scale, scale)
  const TensorView* view = nullptr;
  const std::vector<float>* host = nullptr;
  int host_heads = 0;  // gate weights stored for fewer heads than Hq: repeat each
};

struct LayoutInputs {
  const ModelConfig& config;
  GateShape gates;
  bool tied = false;
  const ModelWeightViews* views = nullptr;  // upload sources, or null
  const GateWeights* gate_weights = nullptr;
};

std::vector<Slot> Layout(const LayoutInputs& in, Carver& carver, DeviceModelWeights* out) {
  const ModelConfig& c = in.config;
  const size_t hidden = c.hidden_size;
  const size_t q_out = static_cast<size_t>(c.num_heads) * c.head_dim;
  const size_t kv_out = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  const size_t inter = c.intermediate_size;
  const size_t vocab = c.vocab_size;
  std::vector<Slot> slots;
  auto uniform = [](size_t fan_in) { return static_cast<float>(std::sqrt(3.0 / static_cast<double>(fan_in))); };

  auto matrix = [&](const std::string& name, size_t rows, size_t cols, const TensorView* view, float scale) {
    Slot s;
    s.name = name;
    s.dst = carver.Take<__nv_bfloat16>(rows * cols);
    s.count = rows * cols;
    s.scale = scale;
    s.view = view;
    slots.push_back(s);
    return static_cast<__nv_bfloat16*>(s.dst);
  };
  auto vec = [&](const std::string& name, size_t n, Init init, const TensorView* view, float scale) {
    Slot s;
    s.name = name;
    s.dst = carver.Take<float>(n);
    s.bf16 = false;
    s.count = n;
    s.init = init;
    s.scale = scale;
    s.view = view;
    slots.push_back(s);
    return static_cast<float*>(s.dst);
  };
  const ModelWeightViews* v = in.views;

  out->embed_tokens = matrix("model.embed_tokens.weight", vocab, hidden, v ? &v->embed_tokens : nullptr, 1.0f);
  out->norm = vec("model.norm.weight", hidden, Init::kOnes, v ? &v->norm : nullptr, 0.0f);
  out->lm_head =
      in.tied ? out->embed_tokens : matrix("lm_head.weight", vocab, hidden, v ? &v->lm_head : nullptr, uniform(hidden));
  out->rope_inv_freq = vec("rope inv_freq", c.head_dim / 2, Init::kRopeFreq, nullptr, 0.0f);
  out->gate_rope_inv_freq =
      in.gates.gate_hidden > 0 ? vec("gate rope inv_freq", in.gates.gate_hidden / 2, Init::kGateRopeFreq, nullptr, 0.0f)
                               : nullptr;

  out->layers.assign(c.num_layers, DeviceLayerWeights{});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const LayerWeightViews* lv = v ? &v->layers[i] : nullptr;
    DeviceLayerWeights& L = out->layers[i];
    L.input_norm = vec(p + "input_layernorm.weight", hidden, Init::kOnes, lv ? &lv->input_norm : nullptr, 0.0f);
    L.post_attention_norm =
        vec(p + "post_attention_layernorm.weight", hidden, Init::kOnes, lv ? &lv->post_attention_norm : nullptr, 0.0f);
    L.q_proj = matrix(p + "self_attn.q_proj.weight", q_out, hidden, lv ? &lv->q_proj : nullptr, uniform(hidden));
    L.k_proj = matrix(p + "self_attn.k_proj.weight", kv_out, hidden, lv ? &lv->k_proj : nullptr, uniform(hidden));
    L.v_proj = matrix(p + "self_attn.v_proj.weight", kv_out, hidden, lv ? &lv->v_proj : nullptr, uniform(hidden));
    L.o_proj = matrix(p + "self_attn.o_proj.weight", hidden, q_out, lv ? &lv->o_proj : nullptr, uniform(q_out));
    L.gate_proj = matrix(p + "mlp.gate_proj.weight", inter, hidden, lv ? &lv->gate_proj : nullptr, uniform(hidden));
    L.up_proj = matrix(p + "mlp.up_proj.weight", inter, hidden, lv ? &lv->up_proj : nullptr, uniform(hidden));
    L.down_proj = matrix(p + "mlp.down_proj.weight", hidden, inter, lv ? &lv->down_proj : nullptr, uniform(inter));
    constexpr float kBias = 0.02f;
    if (c.attention_bias) {
      L.q_bias = vec(p + "self_attn.q_proj.bias", q_out, Init::kUniform, lv ? &lv->q_bias : nullptr, kBias);
      L.k_bias = vec(p + "self_attn.k_proj.bias", kv_out, Init::kUniform, lv ? &lv->k_bias : nullptr, kBias);
      L.v_bias = vec(p + "self_attn.v_proj.bias", kv_out, Init::kUniform, lv ? &lv->v_bias : nullptr, kBias);
    }
    if (c.o_proj_bias) {
      L.o_bias = vec(p + "self_attn.o_proj.bias", hidden, Init::kUniform, lv ? &lv->o_bias : nullptr, kBias);
    }
    if (c.mlp_bias) {
      L.gate_bias = vec(p + "mlp.gate_proj.bias", inter, Init::kUniform, lv ? &lv->gate_bias : nullptr, kBias);
      L.up_bias = vec(p + "mlp.up_proj.bias", inter, Init::kUniform, lv ? &lv->up_bias : nullptr, kBias);
      L.down_bias = vec(p + "mlp.down_proj.bias", hidden, Init::kUniform, lv ? &lv->down_bias : nullptr, kBias);
    }
    if (in.gates.gate_hidden > 0) {
      const size_t gh = in.gates.gate_hidden;
      const size_t d = c.head_dim;
      const GateLayerWeights* gw = in.gate_weights ? &in.gate_weights->layers[i] : nullptr;
      L.gate_k_weight = vec(p + "self_attn.attn_gate.mask_linear_k.weight", c.num_heads * 3 * d * gh,
                            Init::kUniformBf16, nullptr, uniform(3 * d));
      if (gw != nullptr) {
        slots.back().host = &gw->k_weight;
        slots.back().host_heads = static_cast<int>(gw->k_weight.size() / (3 * d * gh));
      }
      if (in.gates.has_q) {
        L.gate_q_weight = vec(p + "self_attn.attn_gate.mask_linear_q.weight", c.num_heads * d * gh, Init::kUniformBf16,
                              nullptr, uniform(d));
        if (gw != nullptr) {
          slots.back().host = &gw->q_weight;
          slots.back().host_heads = c.num_heads;
        }
      }
    }
  }
  return slots;
}

std::vector<float> InvFreq(const RopeConfig& rope, int dim) {
  std::vector<double> d = RopeInvFreq(rope, dim);
  return std::vector<float>(d.begin(), d.end());
}

Status CopyFloats(const Slot& s, const float* src, cudaStream_t stream) {
  std::vector<uint16_t> bf;
  const void* bytes = src;
  size_t nbytes = s.count * sizeof(float);
  if (s.bf16) {
    bf.resize(s.count);
    for (size_t i = 0; i < s.count; ++i) bf[i] = FloatToBf16(src[i]);
    bytes = bf.data();
    nbytes = s.count * sizeof(uint16_t);
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(s.dst, bytes, nbytes, cudaMemcpyHostToDevice, stream));
  // The staging vector dies at return: wait for the copy to have read it.
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  return OkStatus();
}

// A checkpoint tensor: bf16 to bf16 is a plain copy; anything else goes
// through float32 in bounded chunks.
Status UploadView(const Slot& s, const TensorView& view, cudaStream_t stream) {
  if (view.data == nullptr) {
    return InvalidArgument(view.file + ": tensor '" + s.name + "' is missing but the config needs it");
  }
  if (static_cast<size_t>(view.numel()) != s.count) {
    return InvalidArgument(view.file + ": tensor '" + s.name + "' has " + std::to_string(view.numel()) +
                           " elements, the config needs " + std::to_string(s.count));
  }
  if (s.bf16 && view.dtype == DType::kBF16) {
    SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(s.dst, view.data, s.count * 2, cudaMemcpyHostToDevice, stream));
    return OkStatus();
  }
  constexpr size_t kChunk = size_t{1} << 22;
  const size_t elem = DTypeSize(view.dtype);
  std::vector<float> f(std::min(kChunk, s.count));
  std::vector<uint16_t> bf(s.bf16 ? f.size() : 0);
  for (size_t off = 0; off < s.count; off += kChunk) {
    const size_t n = std::min(kChunk, s.count - off);
    if (!ConvertToFloat(view.dtype, view.data + off * elem, n, f.data())) {
      return InvalidArgument(view.file + ": tensor '" + s.name + "' has dtype " + std::string(DTypeName(view.dtype)) +
                             ", need BF16, F16, F32 or F64");
    }
    const void* bytes = f.data();
    size_t nbytes = n * sizeof(float);
    if (s.bf16) {
      for (size_t i = 0; i < n; ++i) bf[i] = FloatToBf16(f[i]);
      bytes = bf.data();
      nbytes = n * sizeof(uint16_t);
    }
    char* dst = static_cast<char*>(s.dst) + off * (s.bf16 ? 2 : 4);
    SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(dst, bytes, nbytes, cudaMemcpyHostToDevice, stream));
    SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  }
  return OkStatus();
}

// Gate weights held for `host_heads` heads (force_double gates keep one per
// KV head) are repeated to every Q head: head h reads head h / group.
Status UploadGate(const Slot& s, const ModelConfig& c, cudaStream_t stream) {
  const std::vector<float>& src = *s.host;
  if (s.host_heads <= 0 || c.num_heads % s.host_heads != 0 || src.size() % s.host_heads != 0 ||
      src.size() / s.host_heads * c.num_heads != s.count) {
    return InvalidArgument("gate tensor '" + s.name + "' has " + std::to_string(src.size()) +
                           " values, which is not a whole number of heads of the expected " +
                           std::to_string(s.count / c.num_heads));
  }
  if (s.host_heads == c.num_heads) return CopyFloats(s, src.data(), stream);
  const size_t per_head = src.size() / s.host_heads;
  const int group = c.num_heads / s.host_heads;
  std::vector<float> expanded(s.count);
  for (int h = 0; h < c.num_heads; ++h) {
    std::memcpy(expanded.data() + h * per_head, src.data() + (h / group) * per_head, per_head * sizeof(float));
  }
  return CopyFloats(s, expanded.data(), stream);
}

Status FillSlot(const Slot& s, const ModelConfig& c, const GateShape& g, uint64_t seed, cudaStream_t stream) {
  switch (s.init) {
    case Init::kRopeFreq: {
      const std::vector<float> f = InvFreq(c.rope, c.head_dim);
      return CopyFloats(s, f.data(), stream);
    }
    case Init::kGateRopeFreq: {
      const std::vector<float> f = InvFreq(c.rope, g.gate_hidden);
      return CopyFloats(s, f.data(), stream);
    }
    case Init::kOnes:
      SEER_RETURN_IF_CUDA_ERROR(cuda::Fill(static_cast<float*>(s.dst), s.count, 1.0f, stream));
      return OkStatus();
    case Init::kUniformBf16:
      SEER_RETURN_IF_CUDA_ERROR(
          cuda::FillUniform(static_cast<float*>(s.dst), s.count, seed, s.scale, stream, /*bf16_values=*/true));
      return OkStatus();
    case Init::kUniform:
      if (s.bf16) {
        SEER_RETURN_IF_CUDA_ERROR(
            cuda::FillUniform(static_cast<__nv_bfloat16*>(s.dst), s.count, seed, s.scale, stream));
      } else {
        SEER_RETURN_IF_CUDA_ERROR(cuda::FillUniform(static_cast<float*>(s.dst), s.count, seed, s.scale, stream));
      }
      return OkStatus();
  }
  return Internal("unknown weight init");
}

Status CheckShape(const ModelConfig& c) {
  if (c.num_layers <= 0 || c.hidden_size <= 0 || c.intermediate_size <= 0 || c.vocab_size <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0 || c.head_dim <= 0 || c.head_dim % 2 != 0 || c.num_heads % c.num_kv_heads != 0) {
    return InvalidArgument(
        "model config: layers, hidden_size, intermediate_size, vocab_size, heads and an even "
        "head_dim must be positive, and num_heads a multiple of num_kv_heads");
  }
  return OkStatus();
}

StatusOr<DeviceModelWeights> Allocate(const LayoutInputs& in, std::vector<Slot>* slots) {
  DeviceModelWeights w;
  Carver counter(nullptr);
  Layout(in, counter, &w);
  SEER_ASSIGN_OR_RETURN(w.storage, DeviceBuffer::Allocate(counter.size(), "the model weights"));
  Carver carver(w.storage.as<char>());
  *slots = Layout(in, carver, &w);
  return w;
}

}  // namespace

GateShape GateShapeOf(const GateWeights* gates) {
  GateShape g;
  if (gates == nullptr) return g;
  g.gate_hidden = gates->config.hidden;
  for (const GateLayerWeights& l : gates->layers) g.has_q = g.has_q || !l.q_weight.empty();
  return g;
}

size_t ModelWeightBytes(const ModelConfig& config, const GateShape& gates, bool tied_lm_head) {
  if (!CheckShape(config).ok()) return 0;
  DeviceModelWeights scratch;
  Carver counter(nullptr);
  Layout(LayoutInputs{config, gates, tied_lm_head}, counter, &scratch);
  return counter.size();
}

StatusOr<DeviceModelWeights> UploadModelWeights(const ModelConfig& config, const ModelWeightViews& views,
                                                const GateWeights* gates, cudaStream_t stream) {
  SEER_RETURN_IF_ERROR(CheckShape(config));
  if (views.layers.size() != static_cast<size_t>(config.num_layers)) {
    return InvalidArgument("bound weights have " + std::to_string(views.layers.size()) + " layers, config has " +
                           std::to_string(config.num_layers));
  }
  const GateShape g = GateShapeOf(gates);
  if (gates != nullptr && gates->layers.size() != static_cast<size_t>(config.num_layers)) {
    return InvalidArgument("gates have " + std::to_string(gates->layers.size()) + " layers, the model has " +
                           std::to_string(config.num_layers));
  }
  const bool tied = views.lm_head.data == nullptr || views.lm_head.data == views.embed_tokens.data;
  LayoutInputs in{config, g, tied, &views, gates};
  std::vector<Slot> slots;
  SEER_ASSIGN_OR_RETURN(DeviceModelWeights w, Allocate(in, &slots));
  for (const Slot& s : slots) {
    if (s.view != nullptr) {
      SEER_RETURN_IF_ERROR(UploadView(s, *s.view, stream));
    } else if (s.host != nullptr) {
      SEER_RETURN_IF_ERROR(UploadGate(s, config, stream));
    } else {
      SEER_RETURN_IF_ERROR(FillSlot(s, config, g, 0, stream));
    }
  }
  if (gates != nullptr) {
    for (int i = 0; i < config.num_layers; ++i) {
      const GateLayerWeights& l = gates->layers[i];
      w.layers[i].gate_weights_tf32 = cuda::WeightsAreTf32(l.k_weight.data(), l.k_weight.size()) &&
                                      cuda::WeightsAreTf32(l.q_weight.data(), l.q_weight.size());
    }
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  return w;
}

StatusOr<DeviceModelWeights> RandomModelWeights(const ModelConfig& config, const GateShape& gates, uint64_t seed,
                                                cudaStream_t stream) {
  SEER_RETURN_IF_ERROR(CheckShape(config));
  LayoutInputs in{config, gates, config.tie_word_embeddings};
  std::vector<Slot> slots;
  SEER_ASSIGN_OR_RETURN(DeviceModelWeights w, Allocate(in, &slots));
  uint64_t tensor_seed = seed * 0x100000001b3ull;
  for (const Slot& s : slots) {
    SEER_RETURN_IF_ERROR(FillSlot(s, config, gates, ++tensor_seed, stream));
  }
  for (DeviceLayerWeights& l : w.layers) l.gate_weights_tf32 = gates.gate_hidden > 0;  // drawn as bf16 values
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  return w;
}

}  // namespace seer
