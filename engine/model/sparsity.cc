#include "engine/model/sparsity.h"

#include <charconv>
#include <cmath>
#include <string>

#include "base/strings.h"

namespace seer {
namespace {

// A strict decimal number: the whole of `text`, finite. strtod would also
// take "inf", "nan", hex floats and leading spaces; from_chars takes none.
bool ParseNumber(std::string_view text, double* out) {
  if (text.empty()) return false;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  if (*begin == '+') ++begin;  // from_chars refuses a leading '+'; people write it
  auto [ptr, ec] = std::from_chars(begin, end, *out, std::chars_format::general);
  return ec == std::errc() && ptr == end && std::isfinite(*out);
}

// A strict whole number: optional '-', then digits only, the whole of `text`.
bool ParseWhole(std::string_view text, int64_t* out) {
  if (text.empty()) return false;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && ptr == text.data() + text.size();
}

constexpr std::string_view kModesHelp =
    "expected 'dense', 'threshold=T' (0 <= T < 1), 'nz_ratio=R' (0 < R <= 1), 'streaming=SINK,WINDOW' "
    "(blocks) or 'oracle=R' (0 < R <= 1)";

}  // namespace

bool SparsityValueInRange(SparsityMode mode, double value) {
  switch (mode) {
    case SparsityMode::kThreshold: return value >= 0.0 && value < 1.0;
    case SparsityMode::kNzRatio:
    case SparsityMode::kOracle: return value > 0.0 && value <= 1.0;
    case SparsityMode::kDense:
    case SparsityMode::kStreaming: break;
  }
  return true;
}

bool StreamingInRange(int64_t sink, int64_t window) {
  return sink >= 0 && sink <= kMaxStreamingBlocks && window >= 1 && window <= kMaxStreamingBlocks;
}

std::string_view SparsityRangeRule(SparsityMode mode) {
  switch (mode) {
    case SparsityMode::kThreshold: return "0 <= T < 1";
    case SparsityMode::kNzRatio:
    case SparsityMode::kOracle: return "0 < R <= 1";
    case SparsityMode::kStreaming: return "0 <= SINK <= 1048576 and 1 <= WINDOW <= 1048576";
    case SparsityMode::kDense: break;
  }
  return "";
}

StatusOr<SparsityRequest> ParseSparsityRequest(std::string_view text) {
  SparsityRequest request;
  SparsityConfig out;
  std::string_view mode = text;

  // The fixture and reference tooling write a mode with an optional override,
  // "nz_ratio=0.5;last_block_dense=false"; accept that form as well.
  if (size_t semi = text.find(';'); semi != std::string_view::npos) {
    mode = text.substr(0, semi);
    std::string_view opt = text.substr(semi + 1);
    constexpr std::string_view kLbd = "last_block_dense=";
    if (opt.substr(0, kLbd.size()) != kLbd) {
      return InvalidArgument("sparsity " + Quoted(text) + ": unknown option " + Quoted(opt) +
                             " (only last_block_dense=true|false may follow ';')");
    }
    std::string_view v = opt.substr(kLbd.size());
    if (v == "true") {
      request.last_block_dense = true;
    } else if (v == "false") {
      request.last_block_dense = false;
    } else {
      return InvalidArgument("sparsity " + Quoted(text) + ": last_block_dense must be true or false, got " + Quoted(v));
    }
  }

  if (mode == "dense") {
    request.mode = out;
    return request;
  }
  size_t eq = mode.find('=');
  if (eq == std::string_view::npos) {
    return InvalidArgument("sparsity " + Quoted(text) + ": " + std::string(kModesHelp));
  }
  std::string_view key = mode.substr(0, eq);
  std::string_view value = mode.substr(eq + 1);
  double v = 0.0;
  if (key == "threshold") {
    if (!ParseNumber(value, &v)) {
      return InvalidArgument("sparsity " + Quoted(text) + ": threshold " + Quoted(value) + " is not a finite number");
    }
    if (!SparsityValueInRange(SparsityMode::kThreshold, v)) {
      return InvalidArgument("sparsity " + Quoted(text) + ": threshold " + ShortestDouble(v) +
                             " is out of range, need " + std::string(SparsityRangeRule(SparsityMode::kThreshold)));
    }
    out.mode = SparsityMode::kThreshold;
    out.threshold = v;
    request.mode = out;
    return request;
  }
  if (key == "nz_ratio") {
    if (!ParseNumber(value, &v)) {
      return InvalidArgument("sparsity " + Quoted(text) + ": nz_ratio " + Quoted(value) + " is not a finite number");
    }
    if (!SparsityValueInRange(SparsityMode::kNzRatio, v)) {
      return InvalidArgument("sparsity " + Quoted(text) + ": nz_ratio " + ShortestDouble(v) +
                             " is out of range, need " + std::string(SparsityRangeRule(SparsityMode::kNzRatio)));
    }
    out.mode = SparsityMode::kNzRatio;
    out.nz_ratio = v;
    request.mode = out;
    return request;
  }
  if (key == "oracle") {
    if (!ParseNumber(value, &v)) {
      return InvalidArgument("sparsity " + Quoted(text) + ": oracle ratio " + Quoted(value) +
                             " is not a finite number");
    }
    if (!SparsityValueInRange(SparsityMode::kOracle, v)) {
      return InvalidArgument("sparsity " + Quoted(text) + ": oracle ratio " + ShortestDouble(v) +
                             " is out of range, need " + std::string(SparsityRangeRule(SparsityMode::kOracle)));
    }
    out.mode = SparsityMode::kOracle;
    out.oracle_ratio = v;
    request.mode = out;
    return request;
  }
  if (key == "streaming") {
    const size_t comma = value.find(',');
    if (comma == std::string_view::npos) {
      return InvalidArgument("sparsity " + Quoted(text) +
                             ": expected streaming=SINK,WINDOW (two whole numbers of 64-token blocks)");
    }
    const std::string_view sink_text = value.substr(0, comma), window_text = value.substr(comma + 1);
    int64_t sink = 0, window = 0;
    if (!ParseWhole(sink_text, &sink)) {
      return InvalidArgument("sparsity " + Quoted(text) + ": streaming SINK " + Quoted(sink_text) +
                             " is not a whole number of blocks");
    }
    if (!ParseWhole(window_text, &window)) {
      return InvalidArgument("sparsity " + Quoted(text) + ": streaming WINDOW " + Quoted(window_text) +
                             " is not a whole number of blocks");
    }
    if (sink < 0 || sink > kMaxStreamingBlocks) {
      return InvalidArgument("sparsity " + Quoted(text) + ": streaming SINK " + std::to_string(sink) +
                             " is out of range, need 0 <= SINK <= " + std::to_string(kMaxStreamingBlocks));
    }
    if (window < 1 || window > kMaxStreamingBlocks) {
      return InvalidArgument("sparsity " + Quoted(text) + ": streaming WINDOW " + std::to_string(window) +
                             " is out of range, need 1 <= WINDOW <= " + std::to_string(kMaxStreamingBlocks) +
                             " (the window holds the diagonal block)");
    }
    out.mode = SparsityMode::kStreaming;
    out.streaming_sink = static_cast<int>(sink);
    out.streaming_window = static_cast<int>(window);
    request.mode = out;
    return request;
  }
  return InvalidArgument("sparsity " + Quoted(text) + ": unknown mode " + Quoted(key) + ", " + std::string(kModesHelp));
}

StatusOr<SparsityConfig> ParseSparsity(std::string_view text, const SparsityConfig& base) {
  SEER_ASSIGN_OR_RETURN(SparsityRequest request, ParseSparsityRequest(text));
  return ResolveSparsity(request, &base);
}

std::string SparsityToString(const SparsityConfig& s) {
  switch (s.mode) {
    case SparsityMode::kDense: return "dense";
    case SparsityMode::kThreshold: return "threshold=" + ShortestDouble(s.threshold);
    case SparsityMode::kNzRatio: return "nz_ratio=" + ShortestDouble(s.nz_ratio);
    case SparsityMode::kStreaming:
      return "streaming=" + std::to_string(s.streaming_sink) + "," + std::to_string(s.streaming_window);
    case SparsityMode::kOracle: return "oracle=" + ShortestDouble(s.oracle_ratio);
  }
  return "dense";
}

StatusOr<SparsityConfig> ResolveSparsity(const SparsityRequest& request, const SparsityConfig* gate_default) {
  SparsityConfig out = gate_default != nullptr ? *gate_default : SparsityConfig{};
  if (request.mode) {
    if (request.mode->mode != SparsityMode::kDense && gate_default == nullptr) {
      return FailedPrecondition("sparsity " + SparsityToString(*request.mode) +
                                " needs attention gates (--gates DIR), and this engine runs without them");
    }
    const bool last_block_dense = out.last_block_dense;
    out = *request.mode;
    out.last_block_dense = last_block_dense;
  }
  if (request.last_block_dense) out.last_block_dense = *request.last_block_dense;
  return out;
}

}  // namespace seer
