#include "client/sparsity_flags.h"

namespace seer {

void SparsityFlags::Register(FlagSet& flags, const std::string& whose_default) {
  flags.String("sparsity", &sparsity,
               "Block selection: dense, threshold=T (keep blocks whose gate probability > T, 0 <= T < 1) or "
               "nz_ratio=R (keep the top fraction R of the causal blocks, 0 < R <= 1). Default: " +
                   whose_default + ".");
  flags.Bool("last-block-dense", &last_block_dense,
             "Compute the last two query-block rows densely (true or false). Default: " + whose_default + ".");
}

StatusOr<SparsityRequest> SparsityFlags::ToRequest(const FlagSet& flags) const {
  SparsityRequest request;
  if (flags.WasSet("sparsity")) {
    StatusOr<SparsityRequest> parsed = ParseSparsityRequest(sparsity);
    if (!parsed.ok()) return parsed.status().WithContext("--sparsity");
    request = *parsed;
  }
  if (flags.WasSet("last-block-dense")) request.last_block_dense = last_block_dense;
  return request;
}

bool SparsityFlags::AnySet(const FlagSet& flags) const {
  return flags.WasSet("sparsity") || flags.WasSet("last-block-dense");
}

}  // namespace seer
