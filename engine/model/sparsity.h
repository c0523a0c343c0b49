// Turning what a user asks for into a SparsityConfig (kernels/gate/selection.h).
// This is the only place that checks a mode's range (threshold 0 <= T < 1,
// nz_ratio 0 < R <= 1) and the only place that combines the gates' default
// with a request's override; the engine and the kernels take the result as
// given.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"
#include "kernels/gate/selection.h"

namespace seer {

// True when `value` is a valid parameter of `mode` (always true for dense).
bool SparsityValueInRange(SparsityMode mode, double value);
// The rule SparsityValueInRange checks, for messages: "0 <= T < 1",
// "0 < R <= 1" ("" for dense).
std::string_view SparsityRangeRule(SparsityMode mode);

// What one request asks for, already checked: a mode (none: the gates'
// default) and an optional last_block_dense override.
struct SparsityRequest {
  std::optional<SparsityConfig> mode;
  std::optional<bool> last_block_dense;
};

// Parses "dense", "threshold=T" (0 <= T < 1) or "nz_ratio=R" (0 < R <= 1),
// optionally followed by ";last_block_dense=true|false". Errors name the text
// and the limit.
StatusOr<SparsityRequest> ParseSparsityRequest(std::string_view text);
// The same text resolved against `base` (whose last_block_dense holds unless
// the text overrides it).
StatusOr<SparsityConfig> ParseSparsity(std::string_view text, const SparsityConfig& base = {});

// "dense", "threshold=0.002", "nz_ratio=0.1".
std::string SparsityToString(const SparsityConfig& s);

// The sparsity a request runs with: `gate_default` (the gate config's
// seerattn_* fields; null without gates, then dense) unless the request
// names a mode, then the request's last_block_dense if it has one.
// FAILED_PRECONDITION for a gated mode without gates.
StatusOr<SparsityConfig> ResolveSparsity(const SparsityRequest& request, const SparsityConfig* gate_default);

}  // namespace seer
