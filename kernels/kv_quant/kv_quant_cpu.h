// fp8 (E4M3) KV on the wire, the CPU twin of kernels/kv_quant/kv_quant.h.
//
// K or V of one layer, [heads, tokens, head_dim], is cut along the tokens
// into blocks of `block_tokens` (the last one may be partial). Each
// (head, block) gets its own float32 scale
//
//     s = amax / 448   (float32, IEEE division; amax = the largest |x| over
//                       the block's finite elements)
//
// and each element becomes the E4M3 code of x / s (float32 IEEE division,
// then round to nearest even with saturation to +-448). Dequantising gives
// E4M3ToFloat(code) * s in float32, rounded to nearest even once more for a
// bf16 destination.
//
// Why a block of tokens per head: a scale per head for the whole prompt lets
// one outlier token (the attention sink's K, a massive-activation row) set
// the step for every other token of that head; a block of 64 tokens confines
// it to 64 rows, costs 4 bytes per 64 x head_dim codes (0.05% at head_dim
// 128), and lines up with the gates' 64-token attention blocks and with KV
// chunk boundaries (chunks start at multiples of the block).
//
// Special values (stated, tested, and the same on the GPU):
//   NaN in        -> code 0x7F (sign dropped) -> NaN out (bf16 0x7FC0)
//   +-Inf in      -> +-448 (saturated)        -> +-amax out
//   |x/s| > 448   -> +-448 (rounding can push the block's own amax just over)
//   +-0 in        -> +-0 codes (0x00 / 0x80)  -> +-0 out
//   a block with no finite non-zero element: s = 0, every finite x -> +-0.
// NaN and Inf do not take part in amax.
#pragma once

#include <cstddef>
#include <cstdint>

namespace seer::kvq {

// Tokens per scale block on the wire (LayoutHeader.kv_scale_block_tokens).
inline constexpr int kBlockTokens = 64;

enum class KvElem { kF32, kBF16 };

// Scale blocks per head for `tokens` tokens.
inline int ScaleBlocks(int tokens, int block_tokens) { return (tokens + block_tokens - 1) / block_tokens; }

// Round to nearest even, saturating to +-448, NaN -> 0x7F.
uint8_t FloatToE4m3(float x);
// The scale of a block whose largest finite magnitude is `amax` (0 when amax is 0).
float BlockScale(float amax);
// FloatToE4m3(x / s), with s == 0 mapping every finite x to a signed zero.
uint8_t QuantizeScaled(float x, float s);

// src: head h's [tokens, head_dim] rows start at src + h * src_head_stride
// elements (a cache layer [heads, capacity, head_dim] offset to its first
// token has stride capacity * head_dim). codes: [heads, tokens, head_dim];
// scales: [heads, ScaleBlocks(tokens, block_tokens)].
void QuantizeE4m3(KvElem src_type, const void* src, int64_t src_head_stride, int heads, int tokens, int head_dim,
                  int block_tokens, uint8_t* codes, float* scales);

// The inverse, into dst (head h's rows at dst + h * dst_head_stride elements).
void DequantizeE4m3(const uint8_t* codes, const float* scales, int heads, int tokens, int head_dim, int block_tokens,
                    KvElem dst_type, void* dst, int64_t dst_head_stride);

}  // namespace seer::kvq
