// Test and benchmark helpers for the NCCL KV link: a device KV cache filled
// with a pattern that names every element's (transfer, layer, K/V, head,
// token, dim), and a check that counts elements that differ from it, and
// elements past seq_len that are not the 0xFFFF poison a fresh receiving
// cache is given.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "engine/cuda/device_kv_cache.h"

namespace seer::nccl_test {

// Tokens [0, seq_len) of every layer get the pattern of `salt`; the rest of
// the capacity gets 0xFFFF.
cudaError_t FillPattern(DeviceKvCache* cache, int seq_len, uint32_t salt);
// Every element 0xFFFF (a receiving cache before the transfer).
cudaError_t Poison(DeviceKvCache* cache);
// Elements of tokens [first_token, seq_len) that are not the pattern of
// `salt`, plus elements outside them that are not 0xFFFF. Synchronises.
cudaError_t CountMismatches(const DeviceKvCache* cache, int seq_len, uint32_t salt, unsigned long long* mismatches,
                            int first_token = 0);

}  // namespace seer::nccl_test
