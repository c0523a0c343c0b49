// Received KV chunks into the CUDA engine's cache (DeviceKvCache, bf16):
// each chunk's pieces are gathered once into a pinned staging slot (f32/f16
// converted to bf16 there), then copied to the device on a stream of the
// landing's own with cudaMemcpy2DAsync into the cache's pitch (fp8: codes and
// scales copied, then dequantised by kernels/kv_quant into the cache). Land
// returns as soon as the copy is queued, so the copy of chunk n overlaps the
// receive of chunk n+1; it waits only when every slot is still in flight.
//
// A paged cache (the batched decode's PagedKvCache over a DevicePagePool)
// lands the same way into a device scratch slot, [heads, tokens, head_dim],
// from which the page kernel scatters the chunk into the request's pages, on
// the same stream.
#pragma once

#include <cstddef>
#include <memory>

#include "base/status.h"
#include "engine/cuda/device_kv_cache.h"
#include "engine/kv/page_pool.h"
#include "rpc/landing/kv_landing.h"

namespace seer {

// `max_chunk_tokens`: the most tokens a chunk may carry (the prefill's
// tokens per chunk). `slots`: staging buffers in flight (>= 2).
StatusOr<std::unique_ptr<KvLanding>> MakeDeviceKvLanding(DeviceKvCache* cache, const KvWireFormat& wire,
                                                         int max_chunk_tokens, int slots = 4);
// Into `cache`'s pages; its pool must be a DevicePagePool.
StatusOr<std::unique_ptr<KvLanding>> MakePagedDeviceKvLanding(PagedKvCache* cache, const KvWireFormat& wire,
                                                              int max_chunk_tokens, int slots = 4);

}  // namespace seer
