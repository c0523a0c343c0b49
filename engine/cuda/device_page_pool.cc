#include "engine/cuda/device_page_pool.h"

#include <string>
#include <vector>

#include "engine/cuda/cuda_status.h"
#include "kernels/paged_kv/paged_kv.h"

namespace seer {

StatusOr<std::unique_ptr<DevicePagePool>> DevicePagePool::Create(const PageLayout& layout, int num_pages, int device) {
  if (layout.page_tokens <= 0 || num_pages <= 0 || layout.kv.num_layers <= 0 || layout.kv.dtype != DType::kBF16) {
    return InvalidArgument("KV page pool: needs positive page_tokens and pages, bf16 pages");
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device));
  std::unique_ptr<DevicePagePool> pool(new DevicePagePool(layout, num_pages, device));
  SEER_ASSIGN_OR_RETURN(pool->storage_,
                        DeviceBuffer::Allocate(layout.PageBytes() * static_cast<size_t>(num_pages),
                                               "the KV page pool (" + std::to_string(num_pages) + " pages of " +
                                                   std::to_string(layout.page_tokens) + " tokens)"));
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&pool->stream_, cudaStreamNonBlocking));
  return pool;
}

DevicePagePool::~DevicePagePool() {
  if (stream_ != nullptr) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
}

__nv_bfloat16* DevicePagePool::base(int layer, int which) const {
  const size_t per =
      static_cast<size_t>(num_pages()) * layout().kv.num_kv_heads * layout().page_tokens * layout().kv.head_dim;
  return storage_.as<__nv_bfloat16>() + (static_cast<size_t>(layer) * 2 + which) * per;
}

Status DevicePagePool::EnsureStaging(int n, int pages) const {
  if (n > staging_tokens_) {
    staging_.Reset();
    SEER_ASSIGN_OR_RETURN(staging_, DeviceBuffer::Allocate(2 * layout().kv.LayerBytes(n), "KV page staging"));
    staging_tokens_ = n;
  }
  if (pages > table_pages_) {
    table_.Reset();
    SEER_ASSIGN_OR_RETURN(table_, DeviceBuffer::Allocate(sizeof(int32_t) * pages, "a KV block table"));
    table_pages_ = pages;
  }
  return OkStatus();
}

Status DevicePagePool::WriteTokens(int layer, std::span<const int32_t> table, int t0, int n, DType src, const void* k,
                                   const void* v) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const KvLayout& kv = layout().kv;
  const size_t count = static_cast<size_t>(kv.num_kv_heads) * n * kv.head_dim;
  // Other types are converted on the host (chunks are a few MiB at most).
  std::vector<uint16_t> k_bf16, v_bf16;
  const void* k_src = k;
  const void* v_src = v;
  if (src != DType::kBF16) {
    std::vector<float> tmp(count);
    k_bf16.resize(count);
    v_bf16.resize(count);
    for (int which = 0; which < 2; ++which) {
      if (!ConvertToFloat(src, which == 0 ? k : v, count, tmp.data())) {
        return InvalidArgument("WriteLayer: KV data of type " + std::string(DTypeName(src)) + " is not supported");
      }
      std::vector<uint16_t>& dst = which == 0 ? k_bf16 : v_bf16;
      for (size_t i = 0; i < count; ++i) dst[i] = FloatToBf16(tmp[i]);
    }
    k_src = k_bf16.data();
    v_src = v_bf16.data();
  }
  std::lock_guard<std::mutex> lock(mu_);
  SEER_RETURN_IF_ERROR(EnsureStaging(n, static_cast<int>(table.size())));
  const size_t bytes = count * sizeof(__nv_bfloat16);
  char* stage = staging_.as<char>();
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(stage, k_src, bytes, cudaMemcpyHostToDevice, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(stage + bytes, v_src, bytes, cudaMemcpyHostToDevice, stream_));
  SEER_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(table_.get(), table.data(), sizeof(int32_t) * table.size(), cudaMemcpyHostToDevice, stream_));
  const int32_t* dtable = table_.as<int32_t>();
  SEER_RETURN_IF_CUDA_ERROR(cuda::ScatterToPages(stage, t0, n, dtable, kv.num_kv_heads, kv.head_dim,
                                                 layout().page_tokens, this->k(layer), stream_));
  SEER_RETURN_IF_CUDA_ERROR(cuda::ScatterToPages(stage + bytes, t0, n, dtable, kv.num_kv_heads, kv.head_dim,
                                                 layout().page_tokens, this->v(layer), stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
}

Status DevicePagePool::ReadTokens(int layer, std::span<const int32_t> table, int t0, int n, void* k_out,
                                  void* v_out) const {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const KvLayout& kv = layout().kv;
  const size_t bytes = static_cast<size_t>(kv.num_kv_heads) * n * kv.head_dim * sizeof(__nv_bfloat16);
  std::lock_guard<std::mutex> lock(mu_);
  SEER_RETURN_IF_ERROR(EnsureStaging(n, static_cast<int>(table.size())));
  char* stage = staging_.as<char>();
  SEER_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(table_.get(), table.data(), sizeof(int32_t) * table.size(), cudaMemcpyHostToDevice, stream_));
  const int32_t* dtable = table_.as<int32_t>();
  SEER_RETURN_IF_CUDA_ERROR(cuda::GatherFromPages(k(layer), dtable, t0, n, kv.num_kv_heads, kv.head_dim,
                                                  layout().page_tokens, stage, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cuda::GatherFromPages(v(layer), dtable, t0, n, kv.num_kv_heads, kv.head_dim,
                                                  layout().page_tokens, stage + bytes, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(k_out, stage, bytes, cudaMemcpyDeviceToHost, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(v_out, stage + bytes, bytes, cudaMemcpyDeviceToHost, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
}

Status DevicePagePool::WriteTokensFromDevice(int layer, std::span<const int32_t> table, int n, int stride,
                                             const __nv_bfloat16* k, const __nv_bfloat16* v) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const KvLayout& kv = layout().kv;
  if (n < 1 || stride < n || static_cast<int64_t>(table.size()) * layout().page_tokens < n) {
    return InvalidArgument("KV page pool: " + std::to_string(n) + " positions (stride " + std::to_string(stride) +
                           ") do not fit " + std::to_string(table.size()) + " pages");
  }
  std::lock_guard<std::mutex> lock(mu_);
  SEER_RETURN_IF_ERROR(EnsureStaging(1, static_cast<int>(table.size())));
  SEER_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(table_.get(), table.data(), sizeof(int32_t) * table.size(), cudaMemcpyHostToDevice, stream_));
  const int32_t* dtable = table_.as<int32_t>();
  SEER_RETURN_IF_CUDA_ERROR(cuda::ScatterToPagesStrided(k, stride, 0, n, dtable, kv.num_kv_heads, kv.head_dim,
                                                        layout().page_tokens, this->k(layer), stream_));
  SEER_RETURN_IF_CUDA_ERROR(cuda::ScatterToPagesStrided(v, stride, 0, n, dtable, kv.num_kv_heads, kv.head_dim,
                                                        layout().page_tokens, this->v(layer), stream_));
  // The table staging is reused by the next call: wait before releasing it.
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
}

Status DevicePagePool::CopyPage(int32_t from, int32_t to) {
  if (from == to) return OkStatus();
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const KvLayout& kv = layout().kv;
  const size_t page = static_cast<size_t>(kv.num_kv_heads) * layout().page_tokens * kv.head_dim;
  std::lock_guard<std::mutex> lock(mu_);
  cudaError_t issued = cudaSuccess;
  for (int layer = 0; layer < kv.num_layers && issued == cudaSuccess; ++layer) {
    for (__nv_bfloat16* base : {k(layer), v(layer)}) {
      issued = cudaMemcpyAsync(base + static_cast<size_t>(to) * page, base + static_cast<size_t>(from) * page,
                               page * sizeof(__nv_bfloat16), cudaMemcpyDeviceToDevice, stream_);
      if (issued != cudaSuccess) break;
    }
  }
  // Whatever was issued finishes before the page can go back to the pool.
  const cudaError_t done = cudaStreamSynchronize(stream_);
  SEER_RETURN_IF_CUDA_ERROR(issued);
  SEER_RETURN_IF_CUDA_ERROR(done);
  return OkStatus();
}

Status DevicePagePool::Synchronize() const {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
}

}  // namespace seer
