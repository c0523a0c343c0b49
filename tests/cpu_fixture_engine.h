// The CPU engine on a fixture model with its fixture gates, and random
// prompts for it: what the cached-prefix and prefix-store tests run on.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "tests/fixture_reader.h"

namespace seer::fixtures {

// tests/fixtures/<model> with <model>_gates, on the CPU with two threads.
inline StatusOr<std::unique_ptr<Engine>> GatedCpuEngine(const std::string& model) {
  EngineOptions options;
  options.model_dir = Path(model);
  options.gates_dir = Path(model + "_gates");
  options.device = "cpu";
  options.threads = 2;
  return CreateEngine(options);
}

// `n` ids drawn uniformly from the vocabulary.
inline std::vector<int32_t> RandomIds(int n, int vocab_size, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> id(0, vocab_size - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& t : ids) t = id(rng);
  return ids;
}

}  // namespace seer::fixtures
