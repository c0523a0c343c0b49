#include "engine/engine.h"

#include "engine/cpu/cpu_engine.h"
#ifdef SEER_HAVE_CUDA
#include "engine/cuda/cuda_engine.h"
#endif

namespace seer {

StatusOr<int32_t> Engine::DecodeAndSample(int32_t token, KvCache* cache, Sampler* sampler) {
  if (sampler == nullptr) return InvalidArgument("decode: null sampler");
  std::vector<float> logits;
  SEER_RETURN_IF_ERROR(DecodeStep(token, cache, &logits));
  return sampler->Sample(logits);
}

StatusOr<std::unique_ptr<Engine>> CreateEngine(const EngineOptions& options) {
  std::string device = options.device;
  if (device == "auto") {
#ifdef SEER_HAVE_CUDA
    device = CudaDeviceAvailable() ? "cuda" : "cpu";
#else
    device = "cpu";
#endif
  }
  if (device == "cpu") {
    SEER_ASSIGN_OR_RETURN(std::unique_ptr<CpuEngine> engine, CpuEngine::Load(options));
    return std::unique_ptr<Engine>(std::move(engine));
  }
  if (device == "cuda") {
#ifdef SEER_HAVE_CUDA
    return CreateCudaEngine(options);
#else
    return Unimplemented("device 'cuda': this build has no CUDA backend (configure on a host with nvcc); "
                         "use --device cpu");
#endif
  }
  return InvalidArgument("device: expected cpu, cuda or auto, got '" + options.device + "'");
}

}  // namespace seer
