// Bounded loading (issue 15, finding 8): the gate and checkpoint loaders take
// their limits from the model's shapes and never read a file whole. Each test
// builds a file far beyond what the model needs and checks that it is refused
// with a message naming the limit, and that the process's peak resident
// memory hardly moved while it was (the old gate loader read a 3 GiB sparse
// file into 3.3 GB of RSS, and unpickled a 60 MB pickle of MARKs into 750 MB).

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/model/checkpoint.h"
#include "engine/model/gates.h"
#include "engine/model/model_config.h"
#include "formats/pth_test_writer.h"
#include "formats/safetensors.h"
#include "tests/fixture_reader.h"

namespace seer {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMiB = int64_t{1} << 20;

// The peak resident memory of this process from here on: the kernel's
// high-water mark (VmHWM), reset where /proc/self/clear_refs allows it, else
// the growth of the mark since the start.
class PeakRss {
 public:
  PeakRss() {
    std::ofstream("/proc/self/clear_refs") << "5";
    start_ = Read();
  }
  // Bytes the peak rose above the resident memory at the start.
  int64_t Growth() const { return Read() - start_; }

 private:
  static int64_t Read() {
    std::ifstream in("/proc/self/status");
    std::string key;
    while (in >> key) {
      if (key == "VmHWM:") {
        int64_t kb = 0;
        in >> kb;
        return kb * 1024;
      }
      in.ignore(1 << 20, '\n');
    }
    return 0;
  }
  int64_t start_ = 0;
};

// The llama fixture's shape: 2 layers, 4 Q heads, 1 KV head, head_dim 64,
// gates of hidden size 64 (mask_linear_k only): 2 x 4 x 192 x 64 values.
ModelConfig TinyModel() {
  ModelConfig m;
  m.num_layers = 2;
  m.num_heads = 4;
  m.num_kv_heads = 1;
  m.head_dim = 64;
  m.hidden_size = 64;
  return m;
}

std::string GateConfigJson() {
  return R"({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64,
  "seerattn_gate_type": "Qavg_Kmaxminavg", "seerattn_gate_block_size": 64, "seerattn_gate_hidden_size": 64})";
}

std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/loading_limits_" + std::to_string(getpid()) + "_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void ExpectRefused(const Status& s, const std::vector<std::string>& needles) {
  ASSERT_FALSE(s.ok()) << "a file far beyond the model's needs was accepted";
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  for (const std::string& n : needles)
    EXPECT_NE(s.message().find(n), std::string::npos) << "'" << s.message() << "' lacks '" << n << "'";
}

// A 3 GiB sparse attn_gate_weights.pth for a model whose gates take 393 KB:
// refused by its size, before a byte of it is read.
TEST(LoadingLimits, ASparseMultiGigabyteGateFileIsRefusedUnread) {
  const std::string dir = FreshDir("sparse_pth");
  std::ofstream(dir + "/config.json") << GateConfigJson();
  const std::string pth = dir + "/attn_gate_weights.pth";
  std::ofstream(pth).close();
  ASSERT_EQ(::truncate(pth.c_str(), int64_t{3} << 30), 0);

  const PeakRss peak;
  StatusOr<GateWeights> g = LoadGates(dir, TinyModel());
  const int64_t growth = peak.Growth();
  ExpectRefused(g.status(), {"attn_gate_weights.pth", "3221225472 bytes", "limit", "2-layer model"});
  std::printf("[ info     ] peak RSS grew %.1f MiB while refusing a 3 GiB gate file\n", double(growth) / kMiB);
  EXPECT_LT(growth, 64 * kMiB);
  fs::remove_all(dir);
}

// A 60 MB data.pkl of MARK opcodes inside a valid zip: refused before it is
// unpickled, by the file's size; one of 1 MiB, within the file's bound, by
// the pickle's, which the model bounds too (64 KiB + 2 KiB per tensor).
TEST(LoadingLimits, AHugePickleOfMarksIsRefusedBeforeUnpickling) {
  const std::string dir = FreshDir("marks");
  std::ofstream(dir + "/config.json") << GateConfigJson();
  auto write_marks = [&](size_t n) {
    const std::string pickle = "\x80\x02" + std::string(n, '(') + ".";
    std::ofstream(dir + "/attn_gate_weights.pth", std::ios::binary) << testing::PthArchive(pickle, {});
  };
  write_marks(60 << 20);
  PeakRss peak;
  StatusOr<GateWeights> g = LoadGates(dir, TinyModel());
  int64_t growth = peak.Growth();
  ExpectRefused(g.status(), {"attn_gate_weights.pth", "bytes, more than the limit of", "2-layer model"});
  std::printf("[ info     ] peak RSS grew %.1f MiB while refusing a 60 MB pickle\n", double(growth) / kMiB);
  EXPECT_LT(growth, 64 * kMiB);

  write_marks(1 << 20);
  peak = PeakRss();
  g = LoadGates(dir, TinyModel());
  growth = peak.Growth();
  ExpectRefused(g.status(), {"data.pkl is 1048579 bytes, more than the limit of 69632", "2-layer model"});
  EXPECT_LT(growth, 64 * kMiB);
  fs::remove_all(dir);
}

// A safetensors gate file holding a 1 GiB tensor (sparse on disk) where the
// model needs 393 KB: its header is read, its data never converted.
TEST(LoadingLimits, AGateTensorFarLargerThanTheModelIsNeverConverted) {
  const std::string dir = FreshDir("huge_tensor");
  std::ofstream(dir + "/config.json") << GateConfigJson();
  const std::string path = dir + "/gates.safetensors";
  {
    // One [2^28] F32 tensor (1 GiB), the file extended sparsely to hold it.
    const std::string header =
        R"({"model.layers.0.self_attn.attn_gate.mask_linear_k.weight":{"dtype":"F32","shape":[268435456],)"
        R"("data_offsets":[0,1073741824]}})";
    std::string out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
    out += header;
    std::ofstream(path, std::ios::binary) << out;
    ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(out.size()) + (int64_t{1} << 30)), 0);
  }
  const PeakRss peak;
  StatusOr<GateWeights> g = LoadGates(dir, TinyModel());
  const int64_t growth = peak.Growth();
  ExpectRefused(g.status(), {"mask_linear_k.weight", "bytes of float32 values", "2-layer model"});
  std::printf("[ info     ] peak RSS grew %.1f MiB while refusing a 1 GiB gate tensor\n", double(growth) / kMiB);
  EXPECT_LT(growth, 64 * kMiB);
  fs::remove_all(dir);
}

// The fixture checkpoint with a 16 MB safetensors header (metadata padding):
// the JSON a 2-layer model's checkpoint may carry is about 1 MiB.
TEST(LoadingLimits, ACheckpointHeaderBeyondTheModelsTensorsIsRefused) {
  const std::string dir = FreshDir("checkpoint_header");
  fs::copy_file(fixtures::Path("llama") + "/config.json", dir + "/config.json");
  {
    SafetensorsWriter w;
    w.SetMetadata("padding", std::string(16 << 20, 'x'));
    w.AddF32("model.norm.weight", {64}, std::vector<float>(64, 1.0f));
    ASSERT_TRUE(w.WriteFile(dir + "/model.safetensors").ok());
  }
  const PeakRss peak;
  StatusOr<std::unique_ptr<Checkpoint>> c = Checkpoint::Open(dir);
  const int64_t growth = peak.Growth();
  ExpectRefused(c.status(), {"model.safetensors", "header length", "limit", "2-layer model"});
  EXPECT_LT(growth, 64 * kMiB);
  // The real fixture still opens.
  StatusOr<std::unique_ptr<Checkpoint>> real = Checkpoint::Open(fixtures::Path("llama"));
  EXPECT_TRUE(real.ok()) << real.status().ToString();
  fs::remove_all(dir);
}

// A shard index far larger than the model's tensors can need is refused
// before it is parsed.
TEST(LoadingLimits, AHugeShardIndexIsRefusedUnparsed) {
  const std::string dir = FreshDir("index");
  fs::copy_file(fixtures::Path("llama") + "/config.json", dir + "/config.json");
  {
    std::ofstream out(dir + "/model.safetensors.index.json");
    out << R"({"metadata": {"pad": ")" << std::string(16 << 20, 'x') << R"("}, "weight_map": {}})";
  }
  StatusOr<std::unique_ptr<Checkpoint>> c = Checkpoint::Open(dir);
  ExpectRefused(c.status(), {"model.safetensors.index.json", "limit", "2-layer model"});
  fs::remove_all(dir);
}

}  // namespace
}  // namespace seer
