// GateLossCuda: GateLoss (train/gate_grad.cc) on the GPU in float64, stage
// for stage; the CPU twin's names are given beside each.
//
//   upload    pooled Q [nb, Hq, D], pooled K [nb, Hkv, 3D], the block RoPE
//             table, the weights; per chunk of heads, the target's loss rows
//   project   k'[h] = pooledK[g] @ Wk[t] (g = h / (Hq / Hkv), t = h / (Hq /
//             k_weight_heads)): one batched DGEMM over the Q heads, with
//             pointer arrays since g and t are not strides of h;
//             q'[h] = pooledQ[h] @ Wq[h] (a strided batched DGEMM) or the
//             first `hidden` channels of pooledQ[h]          (HeadForward)
//   rotate    half-split block RoPE, one thread per pair   (Rotate)
//   scores    S[h] = q'[h][first_row:] @ k'[h]^T, [R, nb] for the R =
//             nb - nb/4 loss rows, the full width (the causal zeros cost a
//             DGEMM's waste, not a branch)
//   rows      one CTA per (head, loss row): scale, row max, log-sum-exp, the
//             row's KL and, for the backward, dS in place of S (0 past the
//             diagonal); the row's loss goes to a [Hq, R] table
//   back      dq'[h] = dS @ k'[h] (R rows), dk'[h] = dS^T @ q'[h][first_row:]
//             (nb rows), rotated back                      (RotateBack)
//   weights   dWk per head = pooledK[g]^T @ dk'[h] (batched, pointer arrays),
//             summed over a task's heads in head order; dWq[h] = pooledQ[h]
//             [first_row:]^T @ dq'[h]                      (AccumulateOuter)
//   download  the loss table and the gradient; the host sums the loss in the
//             CPU's order (rows, then heads) and adds the gradient into the
//             caller's.
//
// S and dS are materialised: [chunk, R, nb] doubles with the target's
// [chunk, R, nb] floats beside them, chunks of heads sized to stay under
// score_scratch_bytes (at nb 512 all 32 heads of the 8B shape fit in 75 MB).
// Every reduction has a fixed order (cuBLAS with one stream and no atomics;
// the row CTAs reduce in a fixed tree; the host sums the tables in order), so
// repeated calls are bit-identical. cuBLAS runs in its default math mode:
// float64 on the FP64 pipes or tensor cores (DMMA), no emulation.

#include "train/gate_grad_cuda.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_buffer.h"

namespace seer::train {
namespace {

constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
constexpr int kRowThreads = 128;
constexpr int kElementThreads = 256;

// ---- kernels ---------------------------------------------------------------

// Half-split block RoPE (or its transpose, for gradients) over rows of
// `heads` heads: row r of head h is read at src + h * src_head + r * src_row
// and written at dst + h * dst_head + r * dst_row, rotated by the table's row
// row0 + r. In place when src == dst with the same strides: one thread reads
// and writes each pair.
struct RotateArgs {
  const double* src;
  size_t src_head, src_row;
  double* dst;
  size_t dst_head, dst_row;
  int heads, rows, row0, half;
  const double* cos;  // [nb, half]
  const double* sin;
  bool inverse;
};

__global__ void __launch_bounds__(kElementThreads) RotateKernel(RotateArgs a) {
  const size_t n = size_t(a.heads) * a.rows * a.half;
  for (size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += size_t(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % a.half);
    const size_t hr = idx / a.half;
    const int r = static_cast<int>(hr % a.rows);
    const int h = static_cast<int>(hr / a.rows);
    const size_t table = size_t(a.row0 + r) * a.half + i;
    const double c = a.cos[table], s = a.sin[table];
    const double* x = a.src + h * a.src_head + r * a.src_row;
    double* y = a.dst + h * a.dst_head + r * a.dst_row;
    const double x1 = x[i], x2 = x[i + a.half];
    if (a.inverse) {
      y[i] = x1 * c + x2 * s;
      y[i + a.half] = x2 * c - x1 * s;
    } else {
      y[i] = x1 * c - x2 * s;
      y[i + a.half] = x2 * c + x1 * s;
    }
  }
}

struct MaxOp {
  __device__ double operator()(double a, double b) const { return fmax(a, b); }
};
struct SumOp {
  __device__ double operator()(double a, double b) const { return a + b; }
};

// The CTA's reduction of one value per thread, in a fixed order (a butterfly
// per warp, then the warps in order); every thread gets the result.
template <typename Op>
__device__ double BlockReduce(double v, double* scratch, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // a previous call may still be reading scratch
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  double r = scratch[0];
  for (int w = 1; w < kRowThreads / 32; ++w) r = op(r, scratch[w]);
  return r;
}

struct RowArgs {
  double* s;  // [heads, R, nb]: the scores in, dS out (with want_grad)
  const float* target;  // [heads, R, nb]: the target's loss rows
  double* row_loss;  // [heads, R]
  int nb, first_row, rows;
  double scale;  // hidden^-0.5
  double ds_scale;  // grad_scale * inv_n * scale
  bool want_grad;
};

// One CTA per (loss row r, head of the chunk): query block i = first_row + r
// over its causal key blocks j <= i, as GateLoss's row loop.
__global__ void __launch_bounds__(kRowThreads) RowKernel(RowArgs a) {
  __shared__ double scratch[kRowThreads / 32];
  const int r = blockIdx.x, i = a.first_row + r;
  const size_t row = size_t(blockIdx.y) * a.rows + r;
  double* srow = a.s + row * a.nb;
  const float* trow = a.target + row * a.nb;

  double mx = -INFINITY;
  for (int j = threadIdx.x; j <= i; j += kRowThreads) mx = fmax(mx, a.scale * srow[j]);
  mx = BlockReduce(mx, scratch, MaxOp{});
  double sum = 0.0, target_sum = 0.0;
  for (int j = threadIdx.x; j <= i; j += kRowThreads) {
    sum += exp(a.scale * srow[j] - mx);
    target_sum += double(trow[j]);
  }
  sum = BlockReduce(sum, scratch, SumOp{});
  target_sum = BlockReduce(target_sum, scratch, SumOp{});
  const double lse = mx + log(sum);

  double loss = 0.0;
  for (int j = threadIdx.x; j < a.nb; j += kRowThreads) {
    if (j <= i) {
      const double lp = a.scale * srow[j] - lse;  // log p
      const double t = trow[j];
      if (t > 0.0) loss += t * (log(t) - lp);
      if (a.want_grad) srow[j] = a.ds_scale * (exp(lp) * target_sum - t);
    } else if (a.want_grad) {
      srow[j] = 0.0;  // the causal mask: no gradient, and dS's DGEMMs read the whole row
    }
  }
  loss = BlockReduce(loss, scratch, SumOp{});
  if (threadIdx.x == 0) a.row_loss[row] = loss;
}

// out[t] = sum of per_head[h] over the task's heads h = t * heads_per_task
// ..., in head order.
__global__ void __launch_bounds__(kElementThreads)
    SumTasksKernel(const double* per_head, int heads_per_task, size_t task_size, size_t n, double* out) {
  for (size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += size_t(gridDim.x) * blockDim.x) {
    const size_t t = idx / task_size, e = idx % task_size;
    const double* p = per_head + t * heads_per_task * task_size + e;
    double v = 0.0;
    for (int k = 0; k < heads_per_task; ++k) v += p[k * task_size];
    out[idx] = v;
  }
}

int ElementBlocks(size_t n) {
  return static_cast<int>(std::clamp<size_t>((n + kElementThreads - 1) / kElementThreads, 1, size_t{1} << 16));
}

// ---- cuBLAS in row-major terms ---------------------------------------------

cublasOperation_t Op(bool transpose) { return transpose ? CUBLAS_OP_T : CUBLAS_OP_N; }

// Row-major C[M, N] = op(A)[M, K] op(B)[K, N], `batch` times at the given
// element strides; A is stored [M, K] (or [K, M] when ta) with row stride
// lda, B likewise. cuBLAS is column-major, where a row-major matrix reads as
// its transpose: it computes C^T = op(B)^T op(A)^T.
Status Gemm(cublasHandle_t h, bool ta, bool tb, int M, int N, int K, const double* A, int lda, long long sa,
            const double* B, int ldb, long long sb, double* C, int ldc, long long sc, int batch) {
  const double one = 1.0, zero = 0.0;
  SEER_RETURN_IF_CUBLAS_ERROR(
      cublasDgemmStridedBatched(h, Op(tb), Op(ta), N, M, K, &one, B, ldb, sb, A, lda, sa, &zero, C, ldc, sc, batch));
  return OkStatus();
}

// The same with a device array of pointers per operand.
Status GemmPointers(cublasHandle_t h, bool ta, bool tb, int M, int N, int K, double* const* A, int lda,
                    double* const* B, int ldb, double* const* C, int ldc, int batch) {
  const double one = 1.0, zero = 0.0;
  SEER_RETURN_IF_CUBLAS_ERROR(
      cublasDgemmBatched(h, Op(tb), Op(ta), N, M, K, &one, B, ldb, A, lda, &zero, C, ldc, batch));
  return OkStatus();
}

// ---- the plan of one call --------------------------------------------------

// Sizes, the chunking and the arena's layout (byte offsets) for a shape.
struct Plan {
  int hq = 0, hkv = 0, d = 0, d3 = 0, hid = 0, half = 0, nb = 0, first_row = 0, rows = 0;
  int k_heads = 0, heads_per_task = 0, group = 0, chunk = 0;
  bool q_weight = false;
  size_t qpool = 0, kpool = 0, cos = 0, sin = 0, wk = 0, wq = 0, qr = 0, kr = 0, s = 0, t = 0, row_loss = 0, dq = 0,
         dk = 0, pk = 0, gk = 0, gq = 0, ptrs = 0, total = 0;
  // Host staging (doubles): the loss table, then dWk, then dWq.
  size_t stage_loss = 0, stage_k = 0, stage_q = 0, stage_total = 0;
};

size_t Take(size_t* at, size_t bytes) {
  const size_t offset = *at;
  *at += (bytes + 255) / 256 * 256;
  return offset;
}

Plan MakePlan(const GateShape& s, int nb, size_t score_scratch_bytes) {
  Plan p;
  p.hq = s.num_heads;
  p.hkv = s.num_kv_heads;
  p.d = s.head_dim;
  p.d3 = 3 * s.head_dim;
  p.hid = s.hidden;
  p.half = s.hidden / 2;
  p.nb = nb;
  p.first_row = FirstLossRow(nb);
  p.rows = nb - p.first_row;
  p.k_heads = s.k_weight_heads;
  p.heads_per_task = s.num_heads / s.k_weight_heads;
  p.group = s.num_heads / s.num_kv_heads;
  p.q_weight = s.has_q_weight;
  const size_t per_head = size_t(p.rows) * nb * (sizeof(double) + sizeof(float));
  const int max_chunk = static_cast<int>(std::clamp<size_t>(score_scratch_bytes / per_head, 1, size_t(p.hq)));
  const int chunks = (p.hq + max_chunk - 1) / max_chunk;
  p.chunk = (p.hq + chunks - 1) / chunks;  // even chunks

  const size_t dbl = sizeof(double), unb = size_t(nb);
  size_t at = 0;
  p.qpool = Take(&at, unb * p.hq * p.d * dbl);
  p.kpool = Take(&at, unb * p.hkv * p.d3 * dbl);
  p.cos = Take(&at, unb * p.half * dbl);
  p.sin = Take(&at, unb * p.half * dbl);
  p.wk = Take(&at, s.k_weight_size() * dbl);
  p.wq = Take(&at, s.q_weight_size() * dbl);
  p.qr = Take(&at, size_t(p.hq) * nb * p.hid * dbl);
  p.kr = Take(&at, size_t(p.hq) * nb * p.hid * dbl);
  p.s = Take(&at, size_t(p.chunk) * p.rows * nb * dbl);
  p.t = Take(&at, size_t(p.chunk) * p.rows * nb * sizeof(float));
  p.row_loss = Take(&at, size_t(p.hq) * p.rows * dbl);
  p.dq = Take(&at, p.q_weight ? size_t(p.hq) * p.rows * p.hid * dbl : 0);
  p.dk = Take(&at, size_t(p.hq) * nb * p.hid * dbl);
  p.pk = Take(&at, size_t(p.hq) * p.d3 * p.hid * dbl);
  p.gk = Take(&at, p.heads_per_task > 1 ? s.k_weight_size() * dbl : 0);
  p.gq = Take(&at, s.q_weight_size() * dbl);
  p.ptrs = Take(&at, 6 * size_t(p.hq) * sizeof(double*));
  p.total = at;

  p.stage_loss = 0;
  p.stage_k = size_t(p.hq) * p.rows;
  p.stage_q = p.stage_k + s.k_weight_size();
  p.stage_total = p.stage_q + s.q_weight_size();
  return p;
}

Status SizeIs(const char* what, size_t got, size_t want) {
  if (got == want) return OkStatus();
  return InvalidArgument(std::string("GateLossCuda: ") + what + " holds " + std::to_string(got) +
                         " values; the gate's shape needs " + std::to_string(want));
}

Status CheckInputs(const GateShape& s, const GateFeatures& f, const float* target, const GateParams& w,
                   const GateParams* grad) {
  const std::string shape = "GateLossCuda: shape Hq " + std::to_string(s.num_heads) + ", Hkv " +
                            std::to_string(s.num_kv_heads) + ", k_weight_heads " + std::to_string(s.k_weight_heads) +
                            ", head_dim " + std::to_string(s.head_dim) + ", hidden " + std::to_string(s.hidden);
  if (s.num_heads <= 0 || s.num_kv_heads <= 0 || s.num_heads % s.num_kv_heads != 0 || s.k_weight_heads <= 0 ||
      s.num_heads % s.k_weight_heads != 0) {
    return InvalidArgument(shape + ": Hq must be a positive multiple of Hkv and of k_weight_heads");
  }
  if (s.head_dim <= 0 || s.hidden <= 0 || s.hidden % 2 != 0) {
    return InvalidArgument(shape + ": head_dim must be positive and hidden positive and even");
  }
  if (!s.has_q_weight && s.hidden > s.head_dim) {
    return InvalidArgument(shape + ": without mask_linear_q, hidden must be at most head_dim");
  }
  if (f.num_blocks < 0) return InvalidArgument("GateLossCuda: num_blocks " + std::to_string(f.num_blocks) + " < 0");
  const size_t nb = size_t(f.num_blocks);
  SEER_RETURN_IF_ERROR(SizeIs("features.q", f.q.size(), nb * s.num_heads * s.head_dim));
  SEER_RETURN_IF_ERROR(SizeIs("features.k", f.k.size(), nb * s.num_kv_heads * 3 * s.head_dim));
  SEER_RETURN_IF_ERROR(SizeIs("features.cos", f.cos.size(), nb * (s.hidden / 2)));
  SEER_RETURN_IF_ERROR(SizeIs("features.sin", f.sin.size(), nb * (s.hidden / 2)));
  SEER_RETURN_IF_ERROR(SizeIs("weights.k", w.k.size(), s.k_weight_size()));
  SEER_RETURN_IF_ERROR(SizeIs("weights.q", w.q.size(), s.q_weight_size()));
  if (grad != nullptr) {
    SEER_RETURN_IF_ERROR(SizeIs("grad.k", grad->k.size(), s.k_weight_size()));
    SEER_RETURN_IF_ERROR(SizeIs("grad.q", grad->q.size(), s.q_weight_size()));
  }
  if (nb > 0 && target == nullptr) return InvalidArgument("GateLossCuda: the target is null");
  return OkStatus();
}

// Makes `device` current for a scope and restores the caller's device.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    error_ = previous_ == device ? cudaSuccess : cudaSetDevice(device);
  }
  ~DeviceScope() {
    if (previous_ >= 0 && error_ == cudaSuccess) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  cudaError_t error() const { return error_; }

 private:
  int previous_ = -1;
  cudaError_t error_ = cudaSuccess;
};

}  // namespace

struct GateLossCuda::Impl {
  int device = 0;
  size_t score_scratch_bytes = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  DeviceBuffer cublas_workspace;
  DeviceBuffer arena;
  double* stage = nullptr;  // pinned host memory for the downloads
  size_t stage_count = 0;

  ~Impl() {
    DeviceScope scope(device);
    if (cublas != nullptr) cublasDestroy(cublas);
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (stage != nullptr) cudaFreeHost(stage);
    cublas_workspace.Reset();
    arena.Reset();
  }

  // Grows the arena and the host staging to the plan's (never shrinks).
  Status Reserve(const Plan& p) {
    if (arena.bytes() < p.total) {
      arena.Reset();  // free first: the old and the new never coexist
      SEER_ASSIGN_OR_RETURN(arena, DeviceBuffer::Allocate(p.total, "the gate loss's buffers"));
    }
    if (stage_count < p.stage_total) {
      if (stage != nullptr) cudaFreeHost(stage);
      stage = nullptr;
      stage_count = 0;
      SEER_RETURN_IF_CUDA_ERROR(cudaMallocHost(reinterpret_cast<void**>(&stage), p.stage_total * sizeof(double)));
      stage_count = p.stage_total;
    }
    return OkStatus();
  }

  Status Run(const Plan& p, const GateFeatures& f, const float* target, const GateParams& w, bool want_grad,
             double grad_scale);
};

Status GateLossCuda::Impl::Run(const Plan& p, const GateFeatures& f, const float* target, const GateParams& w,
                               bool want_grad, double grad_scale) {
  char* base = arena.as<char>();
  auto dev = [base](size_t offset) { return reinterpret_cast<double*>(base + offset); };
  double *qpool = dev(p.qpool), *kpool = dev(p.kpool), *cosv = dev(p.cos), *sinv = dev(p.sin);
  double *wk = dev(p.wk), *wq = dev(p.wq), *qr = dev(p.qr), *kr = dev(p.kr), *s = dev(p.s);
  double *row_loss = dev(p.row_loss), *dq = dev(p.dq), *dk = dev(p.dk), *pk = dev(p.pk), *gk = dev(p.gk);
  double* gq = dev(p.gq);
  float* t = reinterpret_cast<float*>(base + p.t);
  double** ptrs = reinterpret_cast<double**>(base + p.ptrs);
  const int hq = p.hq, nb = p.nb, hid = p.hid, d = p.d, d3 = p.d3, rows = p.rows, fr = p.first_row;
  const size_t head_vec = size_t(nb) * hid;  // one head's q' or k'

  // Upload. The pointer arrays: k' = pooledK[g] @ Wk[t], then dWk per head =
  // pooledK[g]^T @ dk'[h].
  std::vector<double*> host_ptrs(6 * size_t(hq));
  for (int h = 0; h < hq; ++h) {
    const int g = h / p.group, task = h / p.heads_per_task;
    host_ptrs[h] = kpool + size_t(g) * d3;
    host_ptrs[hq + h] = wk + size_t(task) * d3 * hid;
    host_ptrs[2 * hq + h] = kr + h * head_vec;
    host_ptrs[3 * hq + h] = kpool + size_t(g) * d3;
    host_ptrs[4 * hq + h] = dk + h * head_vec;
    host_ptrs[5 * hq + h] = pk + size_t(h) * d3 * hid;
  }
  auto upload = [this](void* dst, const void* src, size_t bytes) {
    return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream);
  };
  SEER_RETURN_IF_CUDA_ERROR(upload(ptrs, host_ptrs.data(), host_ptrs.size() * sizeof(double*)));
  SEER_RETURN_IF_CUDA_ERROR(upload(qpool, f.q.data(), f.q.size() * sizeof(double)));
  SEER_RETURN_IF_CUDA_ERROR(upload(kpool, f.k.data(), f.k.size() * sizeof(double)));
  SEER_RETURN_IF_CUDA_ERROR(upload(cosv, f.cos.data(), f.cos.size() * sizeof(double)));
  SEER_RETURN_IF_CUDA_ERROR(upload(sinv, f.sin.data(), f.sin.size() * sizeof(double)));
  SEER_RETURN_IF_CUDA_ERROR(upload(wk, w.k.data(), w.k.size() * sizeof(double)));
  if (p.q_weight) SEER_RETURN_IF_CUDA_ERROR(upload(wq, w.q.data(), w.q.size() * sizeof(double)));

  // Project and rotate (HeadForward).
  const int kv_row = p.hkv * d3, q_row = hq * d;
  SEER_RETURN_IF_ERROR(
      GemmPointers(cublas, false, false, nb, hid, d3, ptrs, kv_row, ptrs + hq, hid, ptrs + 2 * hq, hid, hq));
  RotateArgs rot{kr, head_vec, size_t(hid), kr, head_vec, size_t(hid), hq, nb, 0, p.half, cosv, sinv, false};
  RotateKernel<<<ElementBlocks(size_t(hq) * nb * p.half), kElementThreads, 0, stream>>>(rot);
  SEER_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  if (p.q_weight) {
    SEER_RETURN_IF_ERROR(Gemm(cublas, false, false, nb, hid, d, qpool, q_row, d, wq, hid, (long long)d * hid, qr, hid,
                              (long long)head_vec, hq));
    rot.src = qr;
  } else {
    rot.src = qpool;  // q' = the first `hidden` channels of pooled Q
    rot.src_head = size_t(d);
    rot.src_row = size_t(q_row);
  }
  rot.dst = qr;
  RotateKernel<<<ElementBlocks(size_t(hq) * nb * p.half), kElementThreads, 0, stream>>>(rot);
  SEER_RETURN_IF_CUDA_ERROR(cudaGetLastError());

  // Scores, rows, and dq', dk' per chunk of heads.
  const double scale = 1.0 / std::sqrt(static_cast<double>(hid));
  const double inv_n = 1.0 / (double(hq) * double(rows) * double(nb));
  RowArgs ra{s, t, nullptr, nb, fr, rows, scale, grad_scale * inv_n * scale, want_grad};
  const long long score_stride = (long long)rows * nb;
  for (int h0 = 0; h0 < hq; h0 += p.chunk) {
    const int c = std::min(p.chunk, hq - h0);
    const size_t row_bytes = size_t(rows) * nb * sizeof(float);
    SEER_RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(t, row_bytes, target + (size_t(h0) * nb + fr) * nb,
                                                size_t(nb) * nb * sizeof(float), row_bytes, c, cudaMemcpyHostToDevice,
                                                stream));
    const double* q0 = qr + h0 * head_vec;
    const double* k0 = kr + h0 * head_vec;
    SEER_RETURN_IF_ERROR(Gemm(cublas, false, true, rows, nb, hid, q0 + size_t(fr) * hid, hid, (long long)head_vec, k0,
                              hid, (long long)head_vec, s, nb, score_stride, c));
    ra.row_loss = row_loss + size_t(h0) * rows;
    RowKernel<<<dim3(rows, c), kRowThreads, 0, stream>>>(ra);
    SEER_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    if (!want_grad) continue;
    if (p.q_weight) {
      SEER_RETURN_IF_ERROR(Gemm(cublas, false, false, rows, hid, nb, s, nb, score_stride, k0, hid, (long long)head_vec,
                                dq + size_t(h0) * rows * hid, hid, (long long)rows * hid, c));
    }
    SEER_RETURN_IF_ERROR(Gemm(cublas, true, false, nb, hid, rows, s, nb, score_stride, q0 + size_t(fr) * hid, hid,
                              (long long)head_vec, dk + h0 * head_vec, hid, (long long)head_vec, c));
  }

  double* stage_loss = stage + p.stage_loss;
  SEER_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(stage_loss, row_loss, size_t(hq) * rows * sizeof(double), cudaMemcpyDeviceToHost, stream));
  if (want_grad) {
    // Rotate back (RotateBack) and the weights' gradients (AccumulateOuter).
    rot = RotateArgs{dk, head_vec, size_t(hid), dk, head_vec, size_t(hid), hq, nb, 0, p.half, cosv, sinv, true};
    RotateKernel<<<ElementBlocks(size_t(hq) * nb * p.half), kElementThreads, 0, stream>>>(rot);
    SEER_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    SEER_RETURN_IF_ERROR(GemmPointers(cublas, true, false, d3, hid, nb, ptrs + 3 * hq, kv_row, ptrs + 4 * hq, hid,
                                      ptrs + 5 * hq, hid, hq));
    const size_t task_size = size_t(d3) * hid, k_size = size_t(p.k_heads) * task_size;
    if (p.heads_per_task > 1) {
      SumTasksKernel<<<ElementBlocks(k_size), kElementThreads, 0, stream>>>(pk, p.heads_per_task, task_size, k_size,
                                                                            gk);
      SEER_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    }
    SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(stage + p.stage_k, p.heads_per_task > 1 ? gk : pk,
                                              k_size * sizeof(double), cudaMemcpyDeviceToHost, stream));
    if (p.q_weight) {
      const size_t dq_head = size_t(rows) * hid;
      rot = RotateArgs{dq, dq_head, size_t(hid), dq, dq_head, size_t(hid), hq, rows, fr, p.half, cosv, sinv, true};
      RotateKernel<<<ElementBlocks(size_t(hq) * rows * p.half), kElementThreads, 0, stream>>>(rot);
      SEER_RETURN_IF_CUDA_ERROR(cudaGetLastError());
      SEER_RETURN_IF_ERROR(Gemm(cublas, true, false, d, hid, rows, qpool + size_t(fr) * q_row, q_row, d, dq, hid,
                                (long long)dq_head, gq, hid, (long long)d * hid, hq));
      SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(stage + p.stage_q, gq, size_t(hq) * d * hid * sizeof(double),
                                                cudaMemcpyDeviceToHost, stream));
    }
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  return OkStatus();
}

GateLossCuda::GateLossCuda(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GateLossCuda::~GateLossCuda() = default;

int GateLossCuda::device() const { return impl_->device; }

StatusOr<std::unique_ptr<GateLossCuda>> GateLossCuda::Create(int device, size_t score_scratch_bytes) {
  int count = 0;
  SEER_RETURN_IF_CUDA_ERROR(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count) {
    return InvalidArgument("GateLossCuda: device " + std::to_string(device) + " is not one of the " +
                           std::to_string(count) + " CUDA devices");
  }
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  impl->score_scratch_bytes = score_scratch_bytes;
  DeviceScope scope(device);
  SEER_RETURN_IF_CUDA_ERROR(scope.error());
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  SEER_RETURN_IF_CUBLAS_ERROR(cublasCreate(&impl->cublas));
  SEER_RETURN_IF_CUBLAS_ERROR(cublasSetStream(impl->cublas, impl->stream));
  SEER_RETURN_IF_CUBLAS_ERROR(cublasSetMathMode(impl->cublas, CUBLAS_DEFAULT_MATH));
  // cuBLAS's workspace is ours: counted with the engine's device memory, and
  // one stream's, which keeps its results reproducible.
  SEER_ASSIGN_OR_RETURN(impl->cublas_workspace,
                        DeviceBuffer::Allocate(kCublasWorkspaceBytes, "the gate loss's cuBLAS workspace"));
  SEER_RETURN_IF_CUBLAS_ERROR(
      cublasSetWorkspace(impl->cublas, impl->cublas_workspace.get(), impl->cublas_workspace.bytes()));
  return std::unique_ptr<GateLossCuda>(new GateLossCuda(std::move(impl)));
}

StatusOr<double> GateLossCuda::Loss(const GateShape& s, const GateFeatures& f, const float* target, const GateParams& w,
                                    GateParams* grad, double grad_scale) {
  SEER_RETURN_IF_ERROR(CheckInputs(s, f, target, w, grad));
  if (f.num_blocks == 0) return 0.0;
  Impl& m = *impl_;
  DeviceScope scope(m.device);
  SEER_RETURN_IF_CUDA_ERROR(scope.error());
  const Plan p = MakePlan(s, f.num_blocks, m.score_scratch_bytes);
  SEER_RETURN_IF_ERROR(m.Reserve(p));
  SEER_RETURN_IF_ERROR(m.Run(p, f, target, w, grad != nullptr, grad_scale));

  // GateLoss's order: each head's rows in order, times inv_n, then the heads
  // in order.
  const double inv_n = 1.0 / (double(p.hq) * double(p.rows) * double(p.nb));
  const double* row_loss = m.stage + p.stage_loss;
  double total = 0.0;
  for (int h = 0; h < p.hq; ++h) {
    double loss = 0.0;
    for (int r = 0; r < p.rows; ++r) loss += row_loss[size_t(h) * p.rows + r];
    total += loss * inv_n;
  }
  if (grad != nullptr) {
    const double* gk = m.stage + p.stage_k;
    for (size_t i = 0; i < grad->k.size(); ++i) grad->k[i] += gk[i];
    const double* gq = m.stage + p.stage_q;
    for (size_t i = 0; i < grad->q.size(); ++i) grad->q[i] += gq[i];
  }
  return total;
}

}  // namespace seer::train
