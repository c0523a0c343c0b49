// The CUDA backend of the Engine interface (bf16 storage, fp32 accumulation).
// Compiled only when SEER_HAVE_CUDA is defined.
#pragma once

#include <memory>

#include "engine/base/status.h"
#include "engine/engine.h"

namespace seer {

// True when the CUDA runtime sees at least one usable device.
bool CudaDeviceAvailable();

StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(const EngineOptions& options);

}  // namespace seer
