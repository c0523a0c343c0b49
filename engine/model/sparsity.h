// Turning what a user asks for into a SparsityConfig (kernels/gate/selection.h).
// This is the only place that checks a mode's range (threshold 0 <= T < 1,
// nz_ratio 0 < R <= 1, streaming 0 <= SINK and 1 <= WINDOW up to 2^20 blocks,
// oracle 0 < R <= 1) and the only place that combines the gates' default with
// a request's override; the engine and the kernels take the result as given.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"
#include "kernels/gate/selection.h"

namespace seer {

// True when `value` is a valid parameter of `mode` (always true for dense and
// streaming, whose two parameters StreamingInRange checks).
bool SparsityValueInRange(SparsityMode mode, double value);
// The most blocks a streaming sink or window may name (2^20 blocks of 64 are
// 64M tokens, past any context).
inline constexpr int64_t kMaxStreamingBlocks = int64_t{1} << 20;
bool StreamingInRange(int64_t sink, int64_t window);
// The rule the two functions check, for messages: "0 <= T < 1", "0 < R <= 1",
// "0 <= SINK <= 1048576 and 1 <= WINDOW <= 1048576" ("" for dense).
std::string_view SparsityRangeRule(SparsityMode mode);

// streaming and oracle are the quality evaluation's baselines
// (docs/QUALITY.md): computed by the CPU gate only, not carried by the
// wire's Sparsity message, refused by the CUDA engine.
inline bool IsBaselineSparsity(SparsityMode mode) {
  return mode == SparsityMode::kStreaming || mode == SparsityMode::kOracle;
}

// What one request asks for, already checked: a mode (none: the gates'
// default) and an optional last_block_dense override.
struct SparsityRequest {
  std::optional<SparsityConfig> mode;
  std::optional<bool> last_block_dense;
};

// Parses "dense", "threshold=T" (0 <= T < 1), "nz_ratio=R" (0 < R <= 1),
// "streaming=SINK,WINDOW" (whole numbers of blocks, 0 <= SINK, 1 <= WINDOW,
// both <= 2^20) or "oracle=R" (0 < R <= 1), optionally followed by
// ";last_block_dense=true|false". Errors name the text, the field and the
// limit.
StatusOr<SparsityRequest> ParseSparsityRequest(std::string_view text);
// The same text resolved against `base` (whose last_block_dense holds unless
// the text overrides it).
StatusOr<SparsityConfig> ParseSparsity(std::string_view text, const SparsityConfig& base = {});

// "dense", "threshold=0.002", "nz_ratio=0.1", "streaming=1,8", "oracle=0.2".
std::string SparsityToString(const SparsityConfig& s);

// The sparsity a request runs with: `gate_default` (the gate config's
// seerattn_* fields; null without gates, then dense) unless the request
// names a mode, then the request's last_block_dense if it has one.
// FAILED_PRECONDITION for a gated mode without gates (the baselines included:
// the engine runs its gate stage, where they are computed, only with gates).
StatusOr<SparsityConfig> ResolveSparsity(const SparsityRequest& request, const SparsityConfig* gate_default);

}  // namespace seer
