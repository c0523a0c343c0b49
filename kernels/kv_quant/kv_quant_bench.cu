// seer-kv-quant-bench: the fp8 KV kernels' throughput on one layer of an
// 8B-shaped KV cache (8 KV heads x head_dim 128, bf16), for a few prompt
// lengths. A program that prints a table: GB/s counts the bytes each kernel
// moves (bf16 in + codes and scales out for Quantize, the reverse for
// Dequantize).
//
//   seer-kv-quant-bench [tokens ...]      (default 8192 32768 131072)
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "base/version.h"
#include "kernels/common/check.h"
#include "kernels/kv_quant/kv_quant.h"
#include "kernels/kv_quant/kv_quant_cpu.h"

constexpr char kUsage[] = "usage: seer-kv-quant-bench [tokens ...]      (default 8192 32768 131072)\n";

constexpr char kHelp[] =
    "Throughput of the fp8 KV-cache kernels (Quantize, Dequantize) on one layer of an\n"
    "8B-shaped KV cache (8 KV heads x head_dim 128, bf16) at each prompt length. GB/s counts\n"
    "the bytes each kernel moves.\n";

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-kv-quant-bench")) return 0;
  if (seer::PrintHelpIfAsked(argc, argv, kUsage, kHelp)) return 0;
  std::vector<int> lengths;
  for (int i = 1; i < argc; ++i) {
    const int tokens = std::atoi(argv[i]);
    if (tokens <= 0) {
      std::fprintf(stderr, "%sseer-kv-quant-bench: '%s' is not a positive token count (--help explains)\n", kUsage,
                   argv[i]);
      return 2;
    }
    lengths.push_back(tokens);
  }
  if (lengths.empty()) lengths = {8192, 32768, 131072};
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("seer-kv-quant-bench: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  SEER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const int heads = 8, dim = 128, bt = seer::kvq::kBlockTokens, reps = 20;
  std::printf("fp8 KV kernels, %s, %d KV heads x head_dim %d, block %d tokens, best of %d\n", prop.name, heads, dim, bt,
              reps);
  std::printf("%10s %14s %12s %14s %12s\n", "tokens", "quantize ms", "GB/s", "dequantize ms", "GB/s");
  cudaEvent_t a, b;
  SEER_CUDA_CHECK(cudaEventCreate(&a));
  SEER_CUDA_CHECK(cudaEventCreate(&b));
  for (int tokens : lengths) {
    const size_t elems = static_cast<size_t>(heads) * tokens * dim;
    const size_t scales = static_cast<size_t>(heads) * seer::kvq::ScaleBlocks(tokens, bt);
    __nv_bfloat16 *src = nullptr, *dst = nullptr;
    uint8_t* codes = nullptr;
    float* sc = nullptr;
    SEER_CUDA_CHECK(cudaMalloc(&src, elems * 2));
    SEER_CUDA_CHECK(cudaMalloc(&dst, elems * 2));
    SEER_CUDA_CHECK(cudaMalloc(&codes, elems));
    SEER_CUDA_CHECK(cudaMalloc(&sc, scales * 4));
    SEER_CUDA_CHECK(cudaMemset(src, 0x3f, elems * 2));
    float best_q = 1e30f, best_d = 1e30f;
    for (int r = 0; r < reps; ++r) {
      float ms = 0;
      SEER_CUDA_CHECK(cudaEventRecord(a));
      SEER_CUDA_CHECK(seer::cuda::QuantizeKvE4m3(src, static_cast<int64_t>(tokens) * dim, heads, tokens, dim, bt, codes,
                                                 sc, nullptr));
      SEER_CUDA_CHECK(cudaEventRecord(b));
      SEER_CUDA_CHECK(cudaEventSynchronize(b));
      SEER_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      best_q = ms < best_q ? ms : best_q;
      SEER_CUDA_CHECK(cudaEventRecord(a));
      SEER_CUDA_CHECK(seer::cuda::DequantizeKvE4m3(codes, sc, heads, tokens, dim, bt, dst,
                                                   static_cast<int64_t>(tokens) * dim, nullptr));
      SEER_CUDA_CHECK(cudaEventRecord(b));
      SEER_CUDA_CHECK(cudaEventSynchronize(b));
      SEER_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      best_d = ms < best_d ? ms : best_d;
    }
    const double bytes = static_cast<double>(elems) * 3 + static_cast<double>(scales) * 4;
    std::printf("%10d %14.4f %12.1f %14.4f %12.1f\n", tokens, best_q, bytes / best_q / 1e6, best_d,
                bytes / best_d / 1e6);
    cudaFree(src);
    cudaFree(dst);
    cudaFree(codes);
    cudaFree(sc);
  }
  return 0;
}
