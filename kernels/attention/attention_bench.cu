// Attention benchmark: Seer's block-sparse kernels (by default the FA2-class
// v2 and the sm90 v3, v4 and v6) at 8k, 32k and 128k tokens x sparsity 0, 0.5 and 0.9
// x head dim 64 and 128 (32 heads, 32 KV heads unless --kv-heads, causal,
// bf16 unless --dtypes), and the GPU gate (old multi-kernel vs fused) as a
// share of the sparse attention time. Prints tables.
//
// Masks: per head, exactly round(s * causal blocks) of the off-diagonal
// causal blocks are skipped, uniformly at random from a fixed seed; the
// diagonal is always kept. --masks=topk shapes them as nz_ratio selection
// does instead: every query row keeps the same number of blocks (the diagonal
// and the rest uniformly at random; shorter rows keep all), the number chosen
// so that the total matches the sparsity. Sparsity 0 runs the dense path
// (null lists). --masks-from=FILE,... also times masks read from files (the
// format below; seer-prefill-bench --dump-masks writes the gate's), each at
// the --seqs entry equal to its length and with --heads equal to its heads.
// --masks-dir DIR writes every mask as DIR/mask_<seq>_<sparsity>.bin so that
// kernels/attention/attention_peers.py runs FlexAttention on the identical masks:
//   8 bytes "SEERMSK1", int32 seq_len, heads, num_blocks, block_size, then
//   keep[h][qb][kb] (nb x nb per head) packed 8 per byte, LSB first.
//
// Timing: CUDA events around each launch, after warm-up; the median of the
// timed runs. The GPU is idle when the start event is recorded, so a time
// includes the host's launch latency, as the peers' times do (their script
// times the same way). --queued instead runs a 200 us spin kernel before the
// start event, so that the host has queued the launches before the GPU
// reaches it: the GPU's time alone, as in a pipeline that runs ahead.
// Inputs are random (never zeros). FLOPs: effective = 4 S^2 D H / 2
// (causal); "computed" counts 4 * 64 * 64 * D per block actually computed.
//
// --key-splits=N (a diagnostic) also times each sparse mask as N launches,
// launch j keeping only the key blocks of the j-th of N equal key ranges:
// the sum of their times is what the same work costs when a pass touches
// 1/N of a head's K and V (the outputs are overwritten, so only the time
// means anything).
//
// --power adds, for each attention and gate row, what the board did during
// its timed runs (NVML, kernels/common/power_sampler.h): the mean SM clock,
// the mean power from the energy counter, the energy per computed TFLOP
// (attention), and the share of 5 ms samples in which the software power
// cap held the clock. The window holds the timed runs and the host's gaps
// between them (a launch, an event wait), so use --min-seconds of a few
// seconds; power and energy print as "-" for windows under a second.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "base/version.h"
#include "kernels/common/bench_flags.h"
#include "kernels/common/device_util.cuh"
#include "kernels/common/block_lists.h"
#include "kernels/common/random_masks.h"
#include "kernels/attention/attention.h"
#include "kernels/attention/attention_sm90.h"
#include "kernels/attention/attention_variants.h"
#include "kernels/common/check.h"
#include "kernels/common/power_sampler.h"
#include "kernels/gate/gate.h"

namespace {

using seer::cuda::ElemType;
using seer::cuda::FwdVariant;

struct Options {
  std::vector<int> seqs = {8192, 32768, 131072};
  std::vector<double> sparsities = {0.0, 0.5, 0.9};
  std::vector<ElemType> dtypes = {ElemType::kBF16};
  std::vector<FwdVariant> variants = {FwdVariant::kRows32PerWarp, FwdVariant::kSm90, FwdVariant::kSm90Rows,
                                      FwdVariant::kSm90Pairs};
  std::vector<int> dims = {64, 128};
  int heads = 32;
  int kv_heads = 32;
  int warmup = 2;
  double min_seconds = 0.5;  // time at least this long per row...
  int min_iters = 3;  // ...and at least this many runs
  int max_iters = 50;
  std::string masks_dir;
  bool topk_masks = false;  // --masks=topk
  std::vector<std::string> masks_from;  // SEERMSK1 files, timed beside the generated masks
  bool gate = true;
  std::vector<std::string> gate_weights = {"bf16"};  // --gate-weights: bf16 and/or f32
  std::vector<int> kv_heads_per_pass = {0};  // AttentionParams::kv_heads_per_pass; 0: the kernel's choice
  bool queued = false;  // --queued: the launches queued behind a spin kernel
  bool power = false;  // --power: clock, power and energy per attention row (NVML)
  std::vector<int> key_splits;  // --key-splits: also time each mask as N launches over key ranges
};

using seer::bench::SplitCommas;

constexpr char kUsage[] =
    "usage: seer-attention-bench [--seqs=8192,32768,131072] [--sparsities=0,0.5,0.9] [--dtypes=bf16,fp16]\n"
    "          [--variants=v2,v3,v4,v6 (auto,v1,v2,v3,v3s,v4,v6)] [--heads=32] [--kv-heads=32] [--dims=64,128]\n"
    "          [--warmup=2] [--min-seconds=0.5] [--min-iters=3] [--max-iters=50] [--masks-dir=DIR]\n"
    "          [--masks=uniform|topk] [--masks-from=FILE,...] [--no-gate] [--gate-weights=bf16,f32]\n"
    "          [--kv-heads-per-pass=0,1] [--queued] [--power] [--key-splits=2,4]\n";

constexpr char kHelp[] =
    "Times Seer's block-sparse attention kernels (causal) at each length, sparsity, head dim\n"
    "and dtype, and the GPU gate (nz_ratio = 0.1, the multi-kernel and the fused one) as a\n"
    "share of the attention at sparsity 0.9. Prints markdown tables.\n"
    "\n"
    "  --seqs, --sparsities, --dims, --dtypes   the grid (sparsity 0 runs the dense path)\n"
    "  --variants       kernels to time: v2 (FA2-class, sm80), v3/v3s/v4/v6 (sm90), auto\n"
    "  --heads, --kv-heads   query and KV heads (GQA when they differ)\n"
    "  --warmup, --min-seconds, --min-iters, --max-iters   how long each cell is timed;\n"
    "                   the median run is reported\n"
    "  --masks=uniform  each head skips round(s x causal blocks) off-diagonal blocks at\n"
    "                   random (the default); topk: every row keeps the same count\n"
    "  --masks-from     also time SEERMSK1 mask files (seer-prefill-bench --dump-masks)\n"
    "  --masks-dir=DIR  write every mask there, for attention_peers.py (FlexAttention)\n"
    "  --no-gate        skip the gate\n"
    "  --gate-weights   the gate's weight values: bf16 (the default: SeerAttention's gates are\n"
    "                   stored in bf16, so the projection skips the weights' tf32 lo parts) and/or\n"
    "                   f32 (full float32 values, every product taken); rows say f32 where used\n"
    "  --kv-heads-per-pass  the Hopper scheduler's tile order: passes over this many KV heads\n"
    "                   at a time, heaviest tiles first across a pass; 0 (the default) lets the\n"
    "                   kernel choose (as many as half the L2 holds K and V of); a list times\n"
    "                   each, and rows other than 0 name theirs\n"
    "  --queued         start the clock after a 200 us spin kernel: the GPU's time alone\n"
    "  --power          add the mean SM clock, board power and power-cap share (NVML);\n"
    "                   power needs windows of a second or more (--min-seconds)\n"
    "  --key-splits=N,...  diagnostic: also time each sparse mask as N launches, launch j\n"
    "                   keeping only the key blocks of the j-th of N equal key ranges (each\n"
    "                   launch overwrites the output, so only the summed time means\n"
    "                   anything: what a working set of 1/N of a head's K and V costs)\n";

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) { return seer::bench::FlagValue(argv[i], name); };
    if (const char* v = value("--seqs")) {
      o->seqs = seer::bench::IntList(v);
    } else if (const char* v = value("--sparsities")) {
      o->sparsities = seer::bench::DoubleList(v);
    } else if (const char* v = value("--dtypes")) {
      o->dtypes = seer::bench::ElemTypeList(v);
    } else if (const char* v = value("--variants")) {
      o->variants.clear();
      for (const auto& s : SplitCommas(v)) {
        static const std::pair<const char*, FwdVariant> kNames[] = {
            {"auto", FwdVariant::kAuto},    {"v1", FwdVariant::kRows16PerWarp}, {"v2", FwdVariant::kRows32PerWarp},
            {"v3", FwdVariant::kSm90},      {"v3s", FwdVariant::kSm90Static},   {"v4", FwdVariant::kSm90Rows},
            {"v6", FwdVariant::kSm90Pairs},
        };
        const auto* it =
            std::find_if(std::begin(kNames), std::end(kNames), [&](const auto& n) { return s == n.first; });
        if (it == std::end(kNames)) {
          std::fprintf(stderr, "--variants: unknown variant '%s' (auto, v1, v2, v3, v3s, v4, v6)\n", s.c_str());
          return false;
        }
        o->variants.push_back(it->second);
      }
    } else if (const char* v = value("--heads")) {
      o->heads = std::atoi(v);
    } else if (const char* v = value("--kv-heads")) {
      o->kv_heads = std::atoi(v);
    } else if (const char* v = value("--dims")) {
      o->dims = seer::bench::IntList(v);
    } else if (const char* v = value("--warmup")) {
      o->warmup = std::atoi(v);
    } else if (const char* v = value("--min-seconds")) {
      o->min_seconds = std::atof(v);
    } else if (const char* v = value("--min-iters")) {
      o->min_iters = std::atoi(v);
    } else if (const char* v = value("--max-iters")) {
      o->max_iters = std::atoi(v);
    } else if (const char* v = value("--masks")) {
      if (std::string(v) != "uniform" && std::string(v) != "topk") {
        std::fprintf(stderr, "--masks takes uniform or topk, not '%s'\n", v);
        return false;
      }
      o->topk_masks = std::string(v) == "topk";
    } else if (const char* v = value("--masks-from")) {
      o->masks_from = SplitCommas(v);
    } else if (const char* v = value("--masks-dir")) {
      o->masks_dir = v;
    } else if (const char* v = value("--gate-weights")) {
      o->gate_weights = SplitCommas(v);
      for (const std::string& w : o->gate_weights) {
        if (w != "bf16" && w != "f32") {
          std::fprintf(stderr, "--gate-weights: unknown kind '%s' (bf16, f32)\n", w.c_str());
          return false;
        }
      }
    } else if (const char* v = value("--kv-heads-per-pass")) {
      o->kv_heads_per_pass = seer::bench::IntList(v);
      for (int n : o->kv_heads_per_pass) {
        if (n < 0) {
          std::fprintf(stderr, "--kv-heads-per-pass: %d is negative (0 lets the kernel choose)\n", n);
          return false;
        }
      }
    } else if (const char* v = value("--key-splits")) {
      o->key_splits = seer::bench::IntList(v);
      for (int n : o->key_splits) {
        if (n < 2) {
          std::fprintf(stderr, "--key-splits: %d is not a split (2 or more)\n", n);
          return false;
        }
      }
    } else if (a == "--no-gate") {
      o->gate = false;
    } else if (a == "--queued") {
      o->queued = true;
    } else if (a == "--power") {
      o->power = true;
    } else {
      std::fprintf(stderr, "%sunknown flag: %s (--help explains)\n", kUsage, argv[i]);
      return false;
    }
  }
  return true;
}

void Fill(void* x, int64_t n, ElemType t, uint32_t seed, float scale) {
  SEER_CUDA_CHECK(seer::cuda::FillUniform(x, n, t, seed, scale));
}

// A --masks-from file, or false after saying why.
bool ReadMaskFile(const std::string& path, seer::BlockMask* m) {
  std::string error;
  if (seer::ReadBlockMask(path, m, &error)) return true;
  std::fprintf(stderr, "--masks-from: %s\n", error.c_str());
  return false;
}

std::string MaskName(int seq, double sparsity) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "mask_%d_%.2f.bin", seq, sparsity);
  return buf;
}

// Holds the stream for `ns` nanoseconds of the GPU's clock (--queued).
__global__ void SpinKernel(uint64_t ns) {
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

// Median milliseconds of `launch` (which returns cudaError_t); with a
// sampler, what the board did over the timed runs into *power.
template <typename Fn>
double TimeMs(const Options& o, Fn launch, seer::bench::PowerSampler* sampler = nullptr,
              seer::bench::PowerSummary* power = nullptr) {
  cudaEvent_t start, stop;
  SEER_CUDA_CHECK(cudaEventCreate(&start));
  SEER_CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < o.warmup; ++i) SEER_CUDA_CHECK(launch());
  SEER_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> ms;
  double total = 0.0;
  if (sampler != nullptr) sampler->Start();
  while (static_cast<int>(ms.size()) < o.max_iters &&
         (static_cast<int>(ms.size()) < o.min_iters || total < o.min_seconds * 1e3)) {
    if (o.queued) {
      SpinKernel<<<1, 1>>>(200000);
      SEER_CUDA_CHECK(cudaGetLastError());
    }
    SEER_CUDA_CHECK(cudaEventRecord(start));
    SEER_CUDA_CHECK(launch());
    SEER_CUDA_CHECK(cudaEventRecord(stop));
    SEER_CUDA_CHECK(cudaEventSynchronize(stop));
    float t = 0.0f;
    SEER_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
    total += t;
  }
  if (sampler != nullptr) *power = sampler->Stop();
  SEER_CUDA_CHECK(cudaEventDestroy(start));
  SEER_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Row {
  std::string dtype;
  int dim = 0;
  int seq = 0;
  double sparsity = 0.0;
  std::string kernel;
  double ms = 0.0;
  double eff_tflops = 0.0;
  double computed_tflops = 0.0;
  seer::bench::PowerSummary power;  // --power only
};

struct GateRow {
  int dim = 0;
  int seq = 0;
  std::string kernels;
  double ms = 0.0;
  double attn_sparse_ms = 0.0;  // the default kernel at sparsity 0.9, bf16
  seer::bench::PowerSummary power;  // --power only
};

bool Near(double a, double b) { return std::abs(a - b) < 1e-9; }

// A window's mean power (and, given the computed TFLOP/s, its energy per
// computed TFLOP), or "-" for a window under a second (the default
// --min-seconds), whose energy-counter steps make it meaningless.
std::string WattsText(const seer::bench::PowerSummary& power, double tflops = 0.0) {
  if (power.seconds < 1.0) return "-";
  char buf[32];
  if (tflops > 0.0) {
    std::snprintf(buf, sizeof(buf), "%.3f", power.watts / tflops);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f", power.watts);
  }
  return buf;
}

// The gate of one layer in the Llama-3.1-8B shape of this benchmark: q
// [L, H, D], k [L, 8 kv heads, D], hidden = D, nz_ratio = 0.1; the old
// multi-kernel gate and the fused one. With a sampler (--power), what the
// board did over each gate's timed runs.
void BenchGate(const Options& o, int seq, int D, double attn_sparse_ms, std::vector<GateRow>* rows,
               seer::bench::PowerSampler* sampler) {
  const int H = o.heads;
  const int nb = (seq + 63) / 64;
  const int gate_kv = 8 <= H && H % 8 == 0 ? 8 : H;
  void *q, *k;
  float *wk, *freq;
  SEER_CUDA_CHECK(cudaMalloc(&q, static_cast<size_t>(seq) * H * D * 2));
  SEER_CUDA_CHECK(cudaMalloc(&k, static_cast<size_t>(seq) * gate_kv * D * 2));
  SEER_CUDA_CHECK(cudaMalloc(&wk, static_cast<size_t>(H) * 3 * D * D * 4));
  SEER_CUDA_CHECK(cudaMalloc(&freq, static_cast<size_t>(D / 2) * 4));
  Fill(q, static_cast<int64_t>(seq) * H * D, ElemType::kBF16, 4u, 1.0f);
  Fill(k, static_cast<int64_t>(seq) * gate_kv * D, ElemType::kBF16, 5u, 1.0f);
  // Plain RoPE frequencies (theta 500000): the values do not change the timing.
  std::vector<float> ff(D / 2);
  for (int i = 0; i < D / 2; ++i) ff[i] = static_cast<float>(std::pow(500000.0, -2.0 * i / D));
  SEER_CUDA_CHECK(cudaMemcpy(freq, ff.data(), ff.size() * 4, cudaMemcpyHostToDevice));
  seer::cuda::GateParams g;
  g.q = q;
  g.k = k;
  g.seq_len = seq;
  g.num_heads = H;
  g.num_kv_heads = gate_kv;
  g.head_dim = D;
  g.hidden = D;
  g.k_weight = wk;
  g.rope_inv_freq = freq;
  g.mode = seer::SparsityMode::kNzRatio;
  g.nz_ratio = 0.1;
  const int64_t cap = seer::cuda::GateMaxIndices(g);
  int32_t *offsets, *indices;
  int64_t* kept;
  SEER_CUDA_CHECK(cudaMalloc(&offsets, (static_cast<size_t>(H) * nb + 1) * 4));
  SEER_CUDA_CHECK(cudaMalloc(&indices, static_cast<size_t>(cap) * 4));
  SEER_CUDA_CHECK(cudaMalloc(&kept, static_cast<size_t>(H) * 8));
  g.block_offsets = offsets;
  g.block_indices = indices;
  g.index_capacity = cap;
  g.kept_per_head = kept;
  g.workspace_bytes = std::max(seer::cuda::GateWorkspaceBytesVariant(g, seer::cuda::GateVariant::kUnfused),
                               seer::cuda::GateWorkspaceBytesVariant(g, seer::cuda::GateVariant::kFused));
  SEER_CUDA_CHECK(cudaMalloc(&g.workspace, g.workspace_bytes));
  for (const std::string& weights : o.gate_weights) {
    // The same draws either way; bf16: rounded to bf16 values, as a BF16
    // checkpoint's weights are, so that the projection skips their lo parts.
    std::vector<float> w(static_cast<size_t>(H) * 3 * D * D);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 0.05f);
    for (float& x : w) x = weights == "bf16" ? __bfloat162float(__float2bfloat16_rn(normal(rng))) : normal(rng);
    SEER_CUDA_CHECK(cudaMemcpy(wk, w.data(), w.size() * 4, cudaMemcpyHostToDevice));
    g.weights_tf32 = seer::cuda::WeightsAreTf32(w.data(), w.size());
    for (auto [variant, kernels] : {std::pair{seer::cuda::GateVariant::kUnfused, "unfused (old)"},
                                    std::pair{seer::cuda::GateVariant::kFused, "fused"}}) {
      const std::string name = std::string(kernels) + (weights == "f32" ? ", f32 weights" : "");
      seer::bench::PowerSummary power;
      const double ms = TimeMs(
          o, [&] { return seer::cuda::RunGateKernelsVariant(g, variant, nullptr); }, sampler, &power);
      rows->push_back({D, seq, name, ms, attn_sparse_ms, power});
      std::printf("  gate d=%d seq=%d %s: %.3f ms", D, seq, name.c_str(), ms);
      if (sampler != nullptr) {
        // (The energy counter moves in steps too coarse for a window under a
        // second: its power is left out there.)
        std::printf("  %.0f MHz  %s W  cap %.0f%%  (%d samples, %.2f s)", power.sm_mhz, WattsText(power).c_str(),
                    100.0 * power.power_cap_share, power.samples, power.seconds);
      }
      std::printf("\n");
      std::fflush(stdout);
#if defined(SEER_GATE_TRACE)
      for (int run = 0; run < 3; ++run) {
        SEER_CUDA_CHECK(seer::cuda::GateTraceReset());
        SEER_CUDA_CHECK(seer::cuda::RunGateKernelsVariant(g, variant, nullptr));
        SEER_CUDA_CHECK(cudaDeviceSynchronize());
        SEER_CUDA_CHECK(seer::cuda::GateTracePrint(name.c_str()));
      }
#endif
    }
  }
  SEER_CUDA_CHECK(cudaFree(q));
  SEER_CUDA_CHECK(cudaFree(k));
  SEER_CUDA_CHECK(cudaFree(wk));
  SEER_CUDA_CHECK(cudaFree(freq));
  SEER_CUDA_CHECK(cudaFree(offsets));
  SEER_CUDA_CHECK(cudaFree(indices));
  SEER_CUDA_CHECK(cudaFree(kept));
  SEER_CUDA_CHECK(cudaFree(g.workspace));
}

}  // namespace

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-attention-bench")) return 0;
  if (seer::PrintHelpIfAsked(argc, argv, kUsage, kHelp)) return 0;
  Options o;
  if (!ParseArgs(argc, argv, &o)) return 2;
  // Every mask file must fit this run before any is timed.
  for (const std::string& path : o.masks_from) {
    seer::BlockMask m;
    if (!ReadMaskFile(path, &m)) return 2;
    if (m.num_heads != o.heads || m.block_size != 64) {
      std::fprintf(stderr, "--masks-from: %s has %d heads of block %d; this run takes --heads=%d of block 64\n",
                   path.c_str(), m.num_heads, m.block_size, o.heads);
      return 2;
    }
    if (std::find(o.seqs.begin(), o.seqs.end(), m.seq_len) == o.seqs.end()) {
      std::fprintf(stderr, "--masks-from: %s is for %d tokens, which --seqs does not list\n", path.c_str(), m.seq_len);
      return 2;
    }
  }
  cudaDeviceProp prop;
  SEER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.0f MB L2\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1048576.0);
  if (const int mode = seer::cuda::Sm90DecomposeMode(); mode != 0) {
    static constexpr const char* kModes[] = {"", "no wgmma", "no copies", "neither wgmma nor copies"};
    std::printf(
        "DIAGNOSTIC BUILD, SEER_ATTENTION_DECOMPOSE=%d: v6 (Sm90PairsKernel) runs with %s; its outputs are "
        "wrong and its times take the kernel apart (tools/attention_decompose.sh)\n",
        mode, kModes[mode & 3]);
  }
  std::printf("shape: %d heads (%d kv), causal, block 64; kAuto runs %s\n", o.heads, o.kv_heads,
              seer::cuda::FwdVariantName(seer::cuda::ResolveFwdVariant(FwdVariant::kAuto)));
  std::unique_ptr<seer::bench::PowerSampler> sampler;
  if (o.power) {
    char bus[32] = {};
    SEER_CUDA_CHECK(cudaDeviceGetPCIBusId(bus, sizeof(bus), 0));
    std::string why;
    sampler = seer::bench::PowerSampler::Open(bus, 5, &why);
    if (sampler == nullptr) {
      std::fprintf(stderr, "--power: %s\n", why.c_str());
      return 1;
    }
  }
  std::vector<FwdVariant> variants;
  for (FwdVariant v : o.variants) {
    if (seer::cuda::FwdVariantAvailable(v)) {
      variants.push_back(v);
    } else {
      std::printf("  %s: not available on this device, skipped\n", seer::cuda::FwdVariantName(v));
    }
  }

  const int H = o.heads, Hkv = o.kv_heads;
  std::vector<Row> rows;
  std::vector<GateRow> gate_rows;

  for (int seq : o.seqs) {
    const int nb = (seq + 63) / 64;
    // Masks and their device lists, shared by every dtype and head dim.
    struct DevMask {
      double sparsity;
      int64_t kept;
      std::string label;  // the file a mask came from
      int32_t* offsets = nullptr;
      int32_t* indices = nullptr;
      // --key-splits: the lists of each key range, timed one launch each.
      std::vector<std::pair<int32_t*, int32_t*>> parts;
    };
    std::vector<DevMask> masks;
    std::vector<DevMask> split_masks;  // --key-splits, timed after the whole masks
    auto upload = [](const seer::BlockMask& m, DevMask* dm) {
      dm->kept = m.kept();
      const seer::BlockLists lists = seer::ToBlockLists(m);
      SEER_CUDA_CHECK(cudaMalloc(&dm->offsets, lists.offsets.size() * 4));
      SEER_CUDA_CHECK(cudaMalloc(&dm->indices, std::max<size_t>(1, lists.indices.size()) * 4));
      SEER_CUDA_CHECK(cudaMemcpy(dm->offsets, lists.offsets.data(), lists.offsets.size() * 4, cudaMemcpyHostToDevice));
      SEER_CUDA_CHECK(cudaMemcpy(dm->indices, lists.indices.data(), lists.indices.size() * 4, cudaMemcpyHostToDevice));
    };
    for (double s : o.sparsities) {
      DevMask dm{s, static_cast<int64_t>(H) * nb * (nb + 1) / 2};
      if (s > 0.0) {
        const uint32_t seed = 0x5EE5u + static_cast<uint32_t>(seq) * 31u + static_cast<uint32_t>(std::lround(s * 1000));
        const seer::BlockMask m =
            o.topk_masks ? seer::EqualRowsRandomMask(H, seq, s, seed) : seer::UniformRandomMask(H, seq, s, seed);
        if (!o.masks_dir.empty() && !seer::WriteBlockMask(m, o.masks_dir + "/" + MaskName(seq, s))) {
          std::fprintf(stderr, "cannot write %s/%s\n", o.masks_dir.c_str(), MaskName(seq, s).c_str());
          return 1;
        }
        upload(m, &dm);
        for (int n : o.key_splits) {
          DevMask split{s, m.kept(), "keys in " + std::to_string(n) + " launches"};
          for (int j = 0; j < n; ++j) {
            const int lo = static_cast<int>(static_cast<int64_t>(nb) * j / n);
            const int hi = static_cast<int>(static_cast<int64_t>(nb) * (j + 1) / n);
            seer::BlockMask part = m;
            for (size_t i = 0; i < part.keep.size(); ++i) {
              const int kb = static_cast<int>(i % static_cast<size_t>(nb));
              if (kb < lo || kb >= hi) part.keep[i] = 0;
            }
            DevMask d{s, 0};
            upload(part, &d);
            split.parts.emplace_back(d.offsets, d.indices);
          }
          split_masks.push_back(split);
        }
      }
      masks.push_back(dm);
    }
    masks.insert(masks.end(), split_masks.begin(), split_masks.end());
    for (const std::string& path : o.masks_from) {
      seer::BlockMask m;
      if (!ReadMaskFile(path, &m)) return 2;
      if (m.seq_len != seq) continue;
      DevMask dm{1.0 - m.density(), 0, path.substr(path.find_last_of('/') + 1)};
      upload(m, &dm);
      masks.push_back(dm);
    }

    for (int D : o.dims) {
      double sparse_ms = 0.0;  // the variant kAuto runs, first dtype, sparsity 0.9
      for (ElemType t : o.dtypes) {
        const char* tname = t == ElemType::kBF16 ? "bf16" : "fp16";
        void *q, *k, *v, *out;
        const size_t q_elems = static_cast<size_t>(seq) * H * D;
        const size_t kv_elems = static_cast<size_t>(seq) * Hkv * D;
        SEER_CUDA_CHECK(cudaMalloc(&q, q_elems * 2));
        SEER_CUDA_CHECK(cudaMalloc(&k, kv_elems * 2));
        SEER_CUDA_CHECK(cudaMalloc(&v, kv_elems * 2));
        SEER_CUDA_CHECK(cudaMalloc(&out, q_elems * 2));
        Fill(q, q_elems, t, 1u, 1.0f);
        Fill(k, kv_elems, t, 2u, 1.0f);
        Fill(v, kv_elems, t, 3u, 1.0f);
        seer::cuda::AttentionParams p;
        p.dtype = t;
        p.q = q;
        p.k = k;
        p.v = v;
        p.out = out;
        p.seq_len = seq;
        p.num_heads = H;
        p.num_kv_heads = Hkv;
        p.head_dim = D;
        p.kv_stride = seq;
        p.scale = 1.0f / std::sqrt(static_cast<float>(D));
        // The kernel's scratch once, as the engine would hold it.
        p.workspace_bytes = seer::cuda::PrefillWorkspaceBytes(H, seq);
        SEER_CUDA_CHECK(cudaMalloc(&p.workspace, p.workspace_bytes));
        const double causal_flops = 4.0 * seq * static_cast<double>(seq) * D * H / 2.0;
        for (const DevMask& dm : masks) {
          p.block_offsets = dm.offsets;
          p.block_indices = dm.indices;
          const double computed_flops = 4.0 * 64.0 * 64.0 * D * static_cast<double>(dm.kept);
          for (FwdVariant variant : variants) {
            for (int per_pass : o.kv_heads_per_pass) {
              p.kv_heads_per_pass = per_pass;
              seer::bench::PowerSummary power;
              double ms = 0.0;
              if (dm.parts.empty()) {
                ms = TimeMs(
                    o, [&] { return seer::cuda::BlockSparseAttentionVariant(p, variant, nullptr); }, sampler.get(),
                    &power);
              } else {
                for (const auto& [offsets, indices] : dm.parts) {
                  p.block_offsets = offsets;
                  p.block_indices = indices;
                  ms += TimeMs(o, [&] { return seer::cuda::BlockSparseAttentionVariant(p, variant, nullptr); });
                }
              }
              const std::string kernel = std::string("seer ") + seer::cuda::FwdVariantName(variant) +
                                         (per_pass == 0 ? "" : " (" + std::to_string(per_pass) + " KV heads a pass)") +
                                         (dm.label.empty() ? "" : " on " + dm.label);
              rows.push_back({tname, D, seq, dm.sparsity, kernel, ms, causal_flops / (ms * 1e9),
                              computed_flops / (ms * 1e9), power});
              std::printf("  %s d=%d seq=%d sparsity=%.3f %-18s %9.3f ms  %6.1f eff TFLOP/s  %6.1f computed TFLOP/s",
                          tname, D, seq, dm.sparsity, kernel.c_str(), ms, rows.back().eff_tflops,
                          rows.back().computed_tflops);
              if (sampler != nullptr) {
                std::printf("  %6.0f MHz  %5s W  %s J/TFLOP  cap %3.0f%%  slowdown %3.0f%%  (%d samples, %.1f s)",
                            power.sm_mhz, WattsText(power).c_str(),
                            WattsText(power, rows.back().computed_tflops).c_str(), 100.0 * power.power_cap_share,
                            100.0 * power.slowdown_share, power.samples, power.seconds);
              }
              std::printf("\n");
              std::fflush(stdout);
              if (t == o.dtypes.front() && dm.label.empty() && Near(dm.sparsity, 0.9) &&
                  per_pass == o.kv_heads_per_pass.front() &&
                  variant == seer::cuda::ResolveFwdVariant(FwdVariant::kAuto)) {
                sparse_ms = ms;
              }
            }
          }
        }
        SEER_CUDA_CHECK(cudaFree(q));
        SEER_CUDA_CHECK(cudaFree(k));
        SEER_CUDA_CHECK(cudaFree(v));
        SEER_CUDA_CHECK(cudaFree(out));
        SEER_CUDA_CHECK(cudaFree(p.workspace));
      }
      if (o.gate && D == o.dims.back()) BenchGate(o, seq, D, sparse_ms, &gate_rows, sampler.get());
    }
    for (DevMask& dm : masks) {
      SEER_CUDA_CHECK(cudaFree(dm.offsets));
      SEER_CUDA_CHECK(cudaFree(dm.indices));
      for (auto& [offsets, indices] : dm.parts) {
        SEER_CUDA_CHECK(cudaFree(offsets));
        SEER_CUDA_CHECK(cudaFree(indices));
      }
    }
  }

  std::printf("\n| dtype | d | seq | sparsity | kernel | ms | effective TFLOP/s | computed TFLOP/s |%s\n",
              o.power ? " SM MHz | board W | J / computed TFLOP | power cap | slowdown |" : "");
  std::printf("|---|---|---|---|---|---|---|---|%s\n", o.power ? "---|---|---|---|---|" : "");
  for (const Row& r : rows) {
    std::printf("| %s | %d | %d | %.2f | %s | %.3f | %.1f | %.1f |", r.dtype.c_str(), r.dim, r.seq, r.sparsity,
                r.kernel.c_str(), r.ms, r.eff_tflops, r.computed_tflops);
    if (o.power) {
      std::printf(" %.0f | %s | %s | %.0f%% | %.0f%% |", r.power.sm_mhz, WattsText(r.power).c_str(),
                  WattsText(r.power, r.computed_tflops).c_str(), 100.0 * r.power.power_cap_share,
                  100.0 * r.power.slowdown_share);
    }
    std::printf("\n");
  }
  if (!gate_rows.empty()) {
    std::printf(
        "\n| d | seq | gate (nz_ratio=0.1, %d q heads, 8 kv; bf16 weights unless named) | ms | %% of attention at "
        "0.9 sparsity (%s) |%s\n",
        H, seer::cuda::FwdVariantName(seer::cuda::ResolveFwdVariant(FwdVariant::kAuto)),
        o.power ? " SM MHz | board W | power cap |" : "");
    std::printf("|---|---|---|---|---|%s\n", o.power ? "---|---|---|" : "");
    for (const GateRow& g : gate_rows) {
      std::printf("| %d | %d | %s | %.3f | ", g.dim, g.seq, g.kernels.c_str(), g.ms);
      if (g.attn_sparse_ms > 0) {
        std::printf("%.1f%% |", 100.0 * g.ms / g.attn_sparse_ms);
      } else {
        std::printf("- |");
      }
      if (o.power) {
        std::printf(" %.0f | %s | %.0f%% |", g.power.sm_mhz, WattsText(g.power).c_str(),
                    100.0 * g.power.power_cap_share);
      }
      std::printf("\n");
    }
  }
  return 0;
}
