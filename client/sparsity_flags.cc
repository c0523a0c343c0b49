#include "client/sparsity_flags.h"

namespace seer {

void SparsityFlags::Register(FlagSet& flags, const std::string& whose_default) {
  const std::string modes =
      baselines ? "Block selection: dense, threshold=T (keep blocks whose gate probability > T, 0 <= T < 1), "
                  "nz_ratio=R (keep the top fraction R of the causal blocks, 0 < R <= 1), or a baseline "
                  "(CPU only): streaming=SINK,WINDOW (StreamingLLM: the first SINK and the last WINDOW key "
                  "blocks of each row) or oracle=R (each row's top fraction R of blocks by the true attention)"
                : "Block selection: dense, threshold=T (keep blocks whose gate probability > T, 0 <= T < 1) or "
                  "nz_ratio=R (keep the top fraction R of the causal blocks, 0 < R <= 1)";
  flags.String("sparsity", &sparsity, modes + ". Default: " + whose_default + ".");
  flags.Bool("last-block-dense", &last_block_dense,
             "Compute the last two query-block rows densely (true or false). Default: " + whose_default + ".");
  flags.SetDefaultText("last-block-dense", "");  // the help says whose default it is
}

StatusOr<SparsityRequest> SparsityFlags::ToRequest(const FlagSet& flags) const {
  SparsityRequest request;
  if (flags.WasSet("sparsity")) {
    StatusOr<SparsityRequest> parsed = ParseSparsityRequest(sparsity);
    if (!parsed.ok()) return parsed.status().WithContext("--sparsity");
    if (!baselines && parsed->mode && IsBaselineSparsity(parsed->mode->mode)) {
      return InvalidArgument("--sparsity: " + SparsityToString(*parsed->mode) +
                             " is a baseline of the quality evaluation, computed by the CPU gate of `seer run`; "
                             "a server takes dense, threshold=T or nz_ratio=R");
    }
    request = *parsed;
  }
  if (flags.WasSet("last-block-dense")) request.last_block_dense = last_block_dense;
  return request;
}

bool SparsityFlags::AnySet(const FlagSet& flags) const {
  return flags.WasSet("sparsity") || flags.WasSet("last-block-dense");
}

}  // namespace seer
