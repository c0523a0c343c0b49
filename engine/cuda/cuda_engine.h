// The CUDA backend of the Engine interface (bf16 storage, fp32 accumulation).
// Compiled only when SEER_HAVE_CUDA is defined.
#pragma once

#include <cstdint>
#include <memory>

#include "base/status.h"
#include "engine/engine.h"
#include "engine/model/gates.h"
#include "engine/model/model_config.h"

namespace seer {

// True when the CUDA runtime sees at least one usable device.
bool CudaDeviceAvailable();

StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(const EngineOptions& options);

// An engine with random weights drawn on the GPU, for benchmarks and tests
// that need a model's shape but not its values (no checkpoint file).
struct RandomEngineOptions {
  uint64_t seed = 1;
  // Random gates of gate_config's block size and hidden size. gates() then
  // returns the config with empty per-layer host weights (they live on the
  // GPU only).
  bool with_gates = false;
  GateConfig gate_config;
  ChunkLimits chunk_limits;
};
StatusOr<std::unique_ptr<Engine>> CreateRandomCudaEngine(const ModelConfig& config, const RandomEngineOptions& options);

}  // namespace seer
