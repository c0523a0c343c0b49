// The error fp8 (E4M3) KV on the wire adds at the decode worker, on the
// committed fixtures (tests/fixtures/llama, qwen2) with the CPU engine: the
// prompt's KV reaches a second cache through bf16 (the reference: what a CUDA
// prefill sends) or through fp8 with a scale per (head, 64-token block), and
// 32 teacher-forced decode steps read it. Reported per model and prompt:
// next-token logits relative error against the bf16 transfer and greedy-token
// agreement, with the same for one scale per head (block = the whole prompt)
// to show what the blocks buy. The bounds are loose enough for any correct
// quantiser and tight enough that a wrong scale, a dropped block or an
// unquantised copy fails: fp8 must differ from bf16, and by less than
// a few percent.
#include "engine/kv/kv_wire_error.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/kv/kv_cache.h"
#include "kernels/kv_quant/kv_quant_cpu.h"
#include "tests/fixture_reader.h"

namespace seer {
namespace {

class KvWireError : public ::testing::TestWithParam<std::string> {};

TEST_P(KvWireError, Fp8OnTheWireStaysCloseToBf16) {
  const std::string name = GetParam();
  EngineOptions options;
  options.model_dir = fixtures::Path(name);
  options.device = "cpu";
  options.threads = 2;
  auto engine = CreateEngine(options);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  auto expected = fixtures::Open(name + "/expected.safetensors");
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  auto fixture_ids = fixtures::I32(**expected, "input_ids");
  ASSERT_TRUE(fixture_ids.ok()) << fixture_ids.status().ToString();
  std::vector<int32_t> long_ids(1200);
  std::mt19937 rng(5);
  for (int32_t& id : long_ids) id = static_cast<int32_t>(rng() % (*engine)->config().vocab_size);

  const int steps = 32;
  const KvWireEncoding encodings[] = {KvWireEncoding::kExact, KvWireEncoding::kFp8E4m3};
  for (const std::vector<int32_t>& ids : {*fixture_ids, long_ids}) {
    const int L = static_cast<int>(ids.size());
    auto blocks = MeasureKvWireError(**engine, ids, {}, steps, encodings, kvq::kBlockTokens);
    ASSERT_TRUE(blocks.ok()) << blocks.status().ToString();
    const KvWireEncoding fp8_only[] = {KvWireEncoding::kFp8E4m3};
    auto per_head = MeasureKvWireError(**engine, ids, {}, steps, fp8_only, L);
    ASSERT_TRUE(per_head.ok()) << per_head.status().ToString();

    const KvWireErrorReport& exact = (*blocks)[0];
    const KvWireErrorReport& fp8 = (*blocks)[1];
    const KvWireErrorReport& fp8_head = (*per_head)[0];
    for (const KvWireErrorReport* r : {&exact, &fp8, &fp8_head}) {
      std::printf(
          "[ kv wire  ] %s, %d tokens, %-9s block %4d: %5.1f MB, next-token logits rel err vs bf16 "
          "mean %.2e max %.2e, greedy %d/%d\n",
          name.c_str(), L, KvWireEncodingName(r->encoding).c_str(), r == &fp8_head ? L : kvq::kBlockTokens,
          r->wire_bytes / 1e6, r->mean_rel_error, r->max_rel_error, r->greedy_agree, r->steps);
    }
    // fp8 halves bf16's bytes (plus 4 bytes of scale per 64 x head_dim codes).
    EXPECT_LT(fp8.wire_bytes, exact.wire_bytes / 2);  // the CPU cache is f32: a quarter, plus scales
    EXPECT_GT(fp8.mean_rel_error, 0.0) << "the fp8 copy did not quantise";
    EXPECT_LT(fp8.max_rel_error, 0.05);
    EXPECT_GE(fp8.greedy_agree, steps * 9 / 10);
    // The exact (f32) transfer differs from bf16 by bf16's rounding only.
    EXPECT_LT(exact.max_rel_error, 0.02);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, KvWireError, ::testing::Values("llama", "qwen2"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace seer
