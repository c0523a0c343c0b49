#include "engine/kv/kv_wire_error.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <thread>

#include "kernels/common/parallel.h"
#include "kernels/kv_quant/e4m3.h"
#include "kernels/kv_quant/kv_quant_cpu.h"
#include "kernels/sampling/sampler.h"

namespace seer {
namespace {

std::string Str(int64_t v) { return std::to_string(v); }

double RelError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

}  // namespace

std::string KvWireEncodingName(KvWireEncoding e) {
  switch (e) {
    case KvWireEncoding::kExact: return "exact";
    case KvWireEncoding::kBf16: return "bf16";
    case KvWireEncoding::kFp8E4m3: return "fp8_e4m3";
  }
  return "?";
}

int64_t KvWireBytes(const KvLayout& layout, int tokens, KvWireEncoding encoding, int block_tokens) {
  const int64_t elems = int64_t{2} * layout.num_layers * layout.num_kv_heads * tokens * layout.head_dim;
  switch (encoding) {
    case KvWireEncoding::kExact: return elems * static_cast<int64_t>(DTypeSize(layout.dtype));
    case KvWireEncoding::kBf16: return elems * 2;
    case KvWireEncoding::kFp8E4m3:
      return elems + int64_t{2} * layout.num_layers * layout.num_kv_heads * kvq::ScaleBlocks(tokens, block_tokens) * 4;
  }
  return 0;
}

Status CopyKvThroughWire(const KvCache& src, int tokens, KvWireEncoding encoding, int block_tokens, KvCache* dst) {
  const KvLayout& s = src.layout();
  const KvLayout& d = dst->layout();
  if (s.num_layers != d.num_layers || s.num_kv_heads != d.num_kv_heads || s.head_dim != d.head_dim)
    return InvalidArgument("KV wire copy: the caches have different layouts");
  if (tokens < 0 || tokens > src.capacity() || tokens > dst->capacity())
    return InvalidArgument("KV wire copy: " + Str(tokens) + " tokens do not fit the caches (" + Str(src.capacity()) +
                           ", " + Str(dst->capacity()) + ")");
  if (block_tokens < 1) return InvalidArgument("KV wire copy: block_tokens must be >= 1");
  if (s.dtype != DType::kF32 && s.dtype != DType::kBF16)
    return InvalidArgument("KV wire copy: source caches of " + std::string(DTypeName(s.dtype)) + " are not supported");
  const int H = s.num_kv_heads, D = s.head_dim;
  const size_t n = static_cast<size_t>(H) * tokens * D;
  const size_t esize = DTypeSize(s.dtype);
  std::vector<unsigned char> k(n * esize), v(n * esize);
  std::vector<uint16_t> k16, v16;
  std::vector<uint8_t> codes(n);
  std::vector<float> scales(static_cast<size_t>(H) * kvq::ScaleBlocks(tokens, block_tokens));
  const kvq::KvElem elem = s.dtype == DType::kF32 ? kvq::KvElem::kF32 : kvq::KvElem::kBF16;
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int layer = 0; layer < s.num_layers; ++layer) {
    SEER_RETURN_IF_ERROR(src.ReadLayer(layer, 0, tokens, k.data(), v.data()));
    DType wire = s.dtype;
    const void* kp = k.data();
    const void* vp = v.data();
    if (encoding == KvWireEncoding::kBf16 && s.dtype == DType::kF32) {
      k16.resize(n);
      v16.resize(n);
      const float* kf = reinterpret_cast<const float*>(k.data());
      const float* vf = reinterpret_cast<const float*>(v.data());
      for (size_t i = 0; i < n; ++i) {
        k16[i] = kvq::FloatToBf16Rne(kf[i]);
        v16[i] = kvq::FloatToBf16Rne(vf[i]);
      }
      wire = DType::kBF16;
      kp = k16.data();
      vp = v16.data();
    } else if (encoding == KvWireEncoding::kFp8E4m3) {
      // Quantise and dequantise in place, head by head on every core.
      for (unsigned char* buf : {k.data(), v.data()}) {
        const size_t head_elems = static_cast<size_t>(tokens) * D;
        const int blocks = kvq::ScaleBlocks(tokens, block_tokens);
        cpu::ParallelFor(H, threads, [&](int h) {
          unsigned char* head = buf + h * head_elems * esize;
          kvq::QuantizeE4m3(elem, head, 0, 1, tokens, D, block_tokens, codes.data() + h * head_elems,
                            scales.data() + static_cast<size_t>(h) * blocks);
          kvq::DequantizeE4m3(codes.data() + h * head_elems, scales.data() + static_cast<size_t>(h) * blocks, 1, tokens,
                              D, block_tokens, elem, head, 0);
        });
      }
    }
    SEER_RETURN_IF_ERROR(dst->WriteLayer(layer, 0, tokens, wire, kp, vp));
  }
  dst->set_length(tokens);
  return OkStatus();
}

StatusOr<std::vector<KvWireErrorReport>> MeasureKvWireError(Engine& engine, std::span<const int32_t> ids,
                                                            const PrefillOptions& options, int steps,
                                                            std::span<const KvWireEncoding> encodings, int block_tokens,
                                                            const KvWireCopier& copier) {
  const int L = static_cast<int>(ids.size());
  if (steps < 1) return InvalidArgument("steps: must be >= 1");
  if (L + steps > engine.config().max_position_embeddings)
    return InvalidArgument("prompt plus steps: " + Str(L + steps) + " exceed max_position_embeddings " +
                           Str(engine.config().max_position_embeddings));
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> prefilled, engine.NewCache(L));
  SEER_ASSIGN_OR_RETURN(PrefillResult prefill, engine.Prefill(ids, options, prefilled.get(), nullptr));
  const int vocab = engine.config().vocab_size;
  const int32_t first =
      ArgMax(std::span<const float>(prefill.logits.data() + prefill.logits.size() - vocab, static_cast<size_t>(vocab)));

  auto copy = [&](KvWireEncoding e, KvCache* dst) -> Status {
    Status st;
    if (copier && copier(*prefilled, L, e, block_tokens, dst, &st)) return st;
    return CopyKvThroughWire(*prefilled, L, e, block_tokens, dst);
  };

  // The bf16 transfer's decode: its logits per step and greedy tokens.
  std::vector<std::vector<float>> ref_logits(steps);
  std::vector<int32_t> tokens(steps);
  {
    SEER_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, engine.NewCache(L + steps));
    SEER_RETURN_IF_ERROR(copy(KvWireEncoding::kBf16, cache.get()));
    int32_t token = first;
    for (int i = 0; i < steps; ++i) {
      tokens[i] = token;
      SEER_RETURN_IF_ERROR(engine.DecodeStep(token, cache.get(), &ref_logits[i]));
      token = ArgMax(ref_logits[i]);
    }
  }

  std::vector<KvWireErrorReport> reports;
  for (KvWireEncoding e : encodings) {
    KvWireErrorReport r;
    r.encoding = e;
    r.prompt_tokens = L;
    r.steps = steps;
    r.wire_bytes = KvWireBytes(prefilled->layout(), L, e, block_tokens);
    SEER_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, engine.NewCache(L + steps));
    SEER_RETURN_IF_ERROR(copy(e, cache.get()));
    std::vector<float> logits;
    for (int i = 0; i < steps; ++i) {
      SEER_RETURN_IF_ERROR(engine.DecodeStep(tokens[i], cache.get(), &logits));
      const double err = RelError(logits, ref_logits[i]);
      r.logits_rel_error.push_back(err);
      r.mean_rel_error += err / steps;
      r.max_rel_error = std::max(r.max_rel_error, err);
      if (ArgMax(logits) == ArgMax(ref_logits[i])) ++r.greedy_agree;
    }
    reports.push_back(std::move(r));
  }
  return reports;
}

}  // namespace seer
