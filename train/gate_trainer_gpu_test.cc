// The CUDA teacher (CudaEngine's ForwardWithAttentionTap: bf16 activations,
// the target from kernels/gate/distill_target) against the CPU teacher
// (float32 activations, kernels/gate/distill_target_cpu) on the fixture
// model, and the trainer on each: the twins agree to what bf16 activations
// allow, and training on the GPU lowers the loss as on the CPU. Skips
// without a GPU.
#include "train/gate_trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "kernels/common/gpu_test_util.h"
#include "kernels/gate/distill_target_cpu.h"
#include "tests/fixture_reader.h"
#include "tests/topic_ids.h"

namespace seer::train {
namespace {

std::string Model() { return fixtures::Path("llama"); }

using test_data::TopicIds;

struct Pass {
  std::vector<std::vector<float>> q, k, target;
};

// Every layer's pre-RoPE Q/K and target from `device`'s teacher.
Pass Teach(const std::string& device, const std::vector<int32_t>& ids) {
  EngineOptions options;
  options.model_dir = Model();
  options.device = device;
  options.threads = 2;
  auto engine = CreateEngine(options);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  Pass out;
  if (!engine.ok()) return out;
  const ModelConfig& c = (*engine)->config();
  Status s = (*engine)->ForwardWithAttentionTap(ids, [&](const AttentionTap& tap) -> Status {
    const size_t L = static_cast<size_t>(tap.seq_len);
    out.q.emplace_back(tap.q, tap.q + L * c.num_heads * c.head_dim);
    out.k.emplace_back(tap.k, tap.k + L * c.num_kv_heads * c.head_dim);
    if (tap.target != nullptr) {
      const size_t nb = (L + 63) / 64;
      out.target.emplace_back(tap.target, tap.target + c.num_heads * nb * nb);
    } else {
      cpu::DistillTargetProblem p;
      p.q = tap.q_rope;
      p.k = tap.k_rope;
      p.seq_len = tap.seq_len;
      p.num_heads = c.num_heads;
      p.num_kv_heads = c.num_kv_heads;
      p.head_dim = c.head_dim;
      p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
      out.target.push_back(cpu::DistillTarget(p, 2));
    }
    return OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

double RelError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

class GateTrainerGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!gpu_test::HaveGpu(&why)) GTEST_SKIP() << "GPU trainer tests skipped: " << why;
  }
};

TEST_F(GateTrainerGpuTest, CudaTeacherMatchesTheCpuTeacher) {
  for (const int L : {64, 333, 1000}) {
    const std::vector<int32_t> ids = TopicIds(static_cast<size_t>(L), static_cast<uint32_t>(L));
    const Pass gpu = Teach("cuda", ids), cpu = Teach("cpu", ids);
    ASSERT_EQ(gpu.target.size(), cpu.target.size());
    ASSERT_FALSE(gpu.target.empty());
    const int nb = (L + 63) / 64;
    for (size_t layer = 0; layer < cpu.target.size(); ++layer) {
      const double eq = RelError(gpu.q[layer], cpu.q[layer]), ek = RelError(gpu.k[layer], cpu.k[layer]);
      const double et = RelError(gpu.target[layer], cpu.target[layer]);
      std::printf("[ compare  ] L=%d layer %zu: pre-RoPE q rel %.2e, k rel %.2e; target rel %.2e\n", L, layer, eq, ek,
                  et);
      // The CUDA teacher's activations are bf16 (8-bit mantissas) and its
      // residual stream float32: the inputs agree to bf16 rounding, the
      // target (a softmax of their products) a little less.
      EXPECT_LE(eq, 2e-2);
      EXPECT_LE(ek, 2e-2);
      EXPECT_LE(et, 5e-2);
      const std::vector<float>& t = gpu.target[layer];
      for (size_t row = 0; row < t.size() / nb; ++row) {
        const int qb = static_cast<int>(row % nb);
        double sum = 0;
        for (int kb = 0; kb < nb; ++kb) {
          const float v = t[row * nb + kb];
          ASSERT_FALSE(std::isnan(v));
          if (kb > qb) {
            ASSERT_EQ(v, 0.0f);
          }
          sum += v;
        }
        ASSERT_NEAR(sum, 1.0, 1e-5);
      }
    }
  }
}

TEST_F(GateTrainerGpuTest, TrainingOnTheGpuLowersTheLossLikeTheCpu) {
  TrainConfig c;
  c.seq_len = 512;
  c.steps = 40;
  c.warmup = 4;
  c.lr = 2e-3;
  c.seed = 1;
  const std::vector<int32_t> data = TopicIds(64 * 512, 1), held_out = TopicIds(1024, 99);
  auto gpu = GateTrainer::Create(Model(), 2, c, data, "cuda");
  auto cpu = GateTrainer::Create(Model(), 2, c, data, "cpu");
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  EXPECT_NE((*gpu)->device_name().find("cuda"), std::string::npos);
  auto before_gpu = (*gpu)->Evaluate(held_out), before_cpu = (*cpu)->Evaluate(held_out);
  ASSERT_TRUE(before_gpu.ok() && before_cpu.ok());
  double first_gpu = 0, first_cpu = 0;
  for (int i = 0; i < c.steps; ++i) {
    auto rg = (*gpu)->Step();
    auto rc = (*cpu)->Step();
    ASSERT_TRUE(rg.ok()) << rg.status().ToString();
    ASSERT_TRUE(rc.ok()) << rc.status().ToString();
    if (i == 0) {
      first_gpu = rg->loss;
      first_cpu = rc->loss;
    }
  }
  auto after_gpu = (*gpu)->Evaluate(held_out), after_cpu = (*cpu)->Evaluate(held_out);
  ASSERT_TRUE(after_gpu.ok() && after_cpu.ok());
  double b_g = 0, b_c = 0, a_g = 0, a_c = 0;
  for (double x : *before_gpu) b_g += x;
  for (double x : *before_cpu) b_c += x;
  for (double x : *after_gpu) a_g += x;
  for (double x : *after_cpu) a_c += x;
  std::printf(
      "[ train    ] first step loss: cuda %.6f, cpu %.6f; held-out loss %.6f -> %.6f (cuda), %.6f -> %.6f (cpu)\n",
      first_gpu, first_cpu, b_g, a_g, b_c, a_c);
  // The same initial gates, data order and optimizer: the first losses
  // differ only by the teachers' precision, and both runs learn.
  EXPECT_NEAR(first_gpu, first_cpu, 0.05 * first_cpu);
  EXPECT_NEAR(b_g, b_c, 0.05 * b_c);
  EXPECT_LT(a_g, 0.75 * b_g);
  EXPECT_NEAR(a_g, a_c, 0.1 * a_c);
}

}  // namespace
}  // namespace seer::train
