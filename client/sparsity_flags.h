// --sparsity and --last-block-dense, as every seer command that prefills
// takes them, turned into a SparsityRequest (engine/model/sparsity.h).
#pragma once

#include <string>

#include "base/flags.h"
#include "base/status.h"
#include "engine/model/sparsity.h"

namespace seer {

struct SparsityFlags {
  std::string sparsity;
  bool last_block_dense = true;
  // Whether the command takes the quality evaluation's baselines,
  // streaming=SINK,WINDOW and oracle=R (IsBaselineSparsity). Only `seer run`
  // does: they are computed by the CPU gate and the wire's Sparsity message
  // has no field for them, so the remote commands refuse them.
  bool baselines = false;

  // `whose_default` says where the defaults come from ("the gate config's").
  void Register(FlagSet& flags, const std::string& whose_default);
  // What the flags ask for (no mode: the gates' default). Errors name the flag.
  StatusOr<SparsityRequest> ToRequest(const FlagSet& flags) const;
  bool AnySet(const FlagSet& flags) const;
};

}  // namespace seer
