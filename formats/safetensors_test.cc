// Safetensors reading and writing. The reference is the file format itself:
// files are assembled byte by byte in the test (little-endian length, JSON
// header, data), independently of SafetensorsWriter, and the writer's output
// is compared with such hand-assembled bytes.
#include "formats/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace seer {
namespace {

namespace fs = std::filesystem;

std::string LittleEndian64(uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return s;
}

// A safetensors file as the spec lays it out.
std::string RawFile(const std::string& header, const std::string& data) {
  return LittleEndian64(header.size()) + header + data;
}

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("seer_safetensors_" + std::to_string(::getpid()) + "_" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  // Opens `bytes` as a file; expects `code`, and that the message names the
  // file and every string in `mentions`.
  void ExpectError(const std::string& bytes, StatusCode code, const std::vector<std::string>& mentions) {
    const std::string path = Write("bad.safetensors", bytes);
    auto r = SafetensorsFile::Open(path);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    const std::string& msg = r.status().message();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const std::string& m : mentions) EXPECT_NE(msg.find(m), std::string::npos) << "'" << m << "' not in: " << msg;
    // The in-memory parser gives the same verdict.
    auto p = SafetensorsFile::Parse("mem", reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    EXPECT_FALSE(p.ok());
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, ReadsAHandAssembledFile) {
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -8.5f};
  const uint16_t b[3] = {0x3F80, 0xC000, 0x4049};  // bf16 1.0, -2.0, 3.140625
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[3],"data_offsets":[24,30]},)"
      R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"e":{"dtype":"F16","shape":[0,4],"data_offsets":[30,30]}})";
  const std::string data = Bytes(a) + std::string(reinterpret_cast<const char*>(b), 6);
  const std::string path = Write("hand.safetensors", RawFile(header, data));

  auto r = SafetensorsFile::Open(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const SafetensorsFile& f = **r;
  EXPECT_EQ(f.path(), path);
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.metadata().at("format"), "pt");

  const TensorView* ta = f.Find("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->dtype, DType::kF32);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta->numel(), 6);
  ASSERT_EQ(ta->nbytes, 24u);
  EXPECT_EQ(ta->file, path);
  std::vector<float> got(6);
  std::memcpy(got.data(), ta->data, 24);
  EXPECT_EQ(got, a);

  const TensorView* tb = f.Find("b");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(tb->dtype, DType::kBF16);
  ASSERT_EQ(tb->nbytes, 6u);
  EXPECT_EQ(std::memcmp(tb->data, b, 6), 0);
  // Offsets are relative to the data section, which begins after the header.
  EXPECT_EQ(tb->data, ta->data + 24);

  const TensorView* te = f.Find("e");
  ASSERT_NE(te, nullptr);
  EXPECT_EQ(te->nbytes, 0u);
  EXPECT_EQ(te->numel(), 0);
  EXPECT_EQ(f.Find("nope"), nullptr);
  EXPECT_EQ(f.Find("__metadata__"), nullptr);
}

TEST_F(SafetensorsTest, WriterMatchesTheFormat) {
  SafetensorsWriter w;
  w.AddF32("x", {2}, {1.0f, 2.0f});
  const std::string got = w.Serialize();
  // The header is padded with spaces to a multiple of 8 bytes.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_EQ(header.size(), 54u);
  header += "  ";
  EXPECT_EQ(got, RawFile(header, Bytes({1.0f, 2.0f})));
}

TEST_F(SafetensorsTest, RoundTripsEveryFloatDtype) {
  const std::vector<float> f32 = {0.5f, -1.25f, 3.0f, 1e-3f, 96.0f, -0.0f};
  std::vector<uint16_t> bf16, f16;
  for (float v : f32) {
    bf16.push_back(FloatToBf16(v));
    f16.push_back(FloatToFp16(v));
  }
  SafetensorsWriter w;
  w.AddF32("w.f32", {3, 2}, f32);
  w.Add("w.bf16", DType::kBF16, {6}, bf16.data(), bf16.size() * 2);
  w.Add("w.f16", DType::kF16, {2, 3}, f16.data(), f16.size() * 2);
  w.SetMetadata("format", "pt");
  const std::string path = (dir_ / "rt.safetensors").string();
  ASSERT_TRUE(w.WriteFile(path).ok());

  // The data section begins 8-byte aligned.
  std::ifstream in(path, std::ios::binary);
  char len[8];
  in.read(len, 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(len[i]);
  EXPECT_EQ(n % 8, 0u);

  auto r = SafetensorsFile::Open(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->metadata().at("format"), "pt");
  const TensorView* a = (*r)->Find("w.f32");
  const TensorView* b = (*r)->Find("w.bf16");
  const TensorView* c = (*r)->Find("w.f16");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(c->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(a->data, f32.data(), 24), 0);
  EXPECT_EQ(std::memcmp(b->data, bf16.data(), 12), 0);
  EXPECT_EQ(std::memcmp(c->data, f16.data(), 12), 0);
  // These values are exact in all three types, so all three read back as f32.
  for (const TensorView* t : {a, b, c}) {
    std::vector<float> v(6);
    ASSERT_TRUE(ConvertToFloat(t->dtype, t->data, 6, v.data()));
    for (int i = 0; i < 6; ++i) {
      if (t->dtype != DType::kF32 && i == 3) continue;  // 1e-3 is exact in neither bf16 nor fp16
      EXPECT_EQ(v[i], f32[i]) << t->name << "[" << i << "]";
    }
  }
}

TEST_F(SafetensorsTest, WriterRejectsInconsistentTensors) {
  SafetensorsWriter w;
  w.AddF32("a", {3}, {1.0f, 2.0f});
  auto s = w.WriteFile((dir_ / "x.safetensors").string());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'a'"), std::string::npos) << s.message();
  SafetensorsWriter d;
  d.AddF32("a", {1}, {1.0f});
  d.AddF32("a", {1}, {1.0f});
  EXPECT_FALSE(d.WriteFile((dir_ / "y.safetensors").string()).ok());
}

TEST_F(SafetensorsTest, MissingFile) {
  const std::string path = (dir_ / "absent.safetensors").string();
  auto r = SafetensorsFile::Open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find(path), std::string::npos);
}

TEST_F(SafetensorsTest, TruncatedBeforeTheLength) {
  ExpectError("", StatusCode::kInvalidArgument, {"truncated", "0 bytes"});
  ExpectError(std::string("\x10\x00\x00", 3), StatusCode::kInvalidArgument, {"truncated", "3 bytes"});
}

TEST_F(SafetensorsTest, TruncatedDataSection) {
  // A good file cut short: the header survives, the last tensor's bytes do not.
  const std::string header = R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  const std::string full = RawFile(header, Bytes({1, 2, 3, 4}));
  ExpectError(full.substr(0, full.size() - 5), StatusCode::kInvalidArgument,
              {"tensor 'w'", "'data_offsets'", "out of range", "11 bytes"});
}

TEST_F(SafetensorsTest, HeaderLengthBeyondTheEnd) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  std::string bytes = RawFile(header, Bytes({1}));
  bytes.replace(0, 8, LittleEndian64(1000));
  ExpectError(bytes, StatusCode::kInvalidArgument, {"header length 1000", "past the end"});
  bytes.replace(0, 8, LittleEndian64(~0ull));
  ExpectError(bytes, StatusCode::kInvalidArgument, {"header length 18446744073709551615"});
}

TEST_F(SafetensorsTest, MalformedHeaderJson) {
  ExpectError(RawFile(R"({"w":{"dtype":"F32",})", ""), StatusCode::kInvalidArgument,
              {"header JSON", "line 1, column 21"});
  ExpectError(RawFile("[1, 2]", ""), StatusCode::kInvalidArgument, {"must be an object"});
  ExpectError(RawFile(R"({"w": 3})", ""), StatusCode::kInvalidArgument, {"tensor 'w'", "must be an object"});
}

TEST_F(SafetensorsTest, MissingOrMistypedFields) {
  ExpectError(RawFile(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "abcd"), StatusCode::kInvalidArgument,
              {"tensor 'w'", "'dtype'", "missing"});
  ExpectError(RawFile(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", "abcd"), StatusCode::kInvalidArgument,
              {"tensor 'w'", "'shape'", "missing"});
  ExpectError(RawFile(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "abcd"),
              StatusCode::kInvalidArgument, {"tensor 'w'", "'shape'", "non-negative integers"});
  ExpectError(RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "abcd"), StatusCode::kInvalidArgument,
              {"tensor 'w'", "'data_offsets'", "[begin, end]"});
  ExpectError(RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "abcd"),
              StatusCode::kInvalidArgument, {"tensor 'w'", "'data_offsets'", "ends before it begins"});
  ExpectError(RawFile(R"({"__metadata__":{"k":1}})", ""), StatusCode::kInvalidArgument, {"'__metadata__.k'", "string"});
}

TEST_F(SafetensorsTest, UnsupportedDtype) {
  ExpectError(RawFile(R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", "abcd"),
              StatusCode::kInvalidArgument, {"tensor 'w'", "'dtype'", "unsupported dtype 'F8_E4M3'"});
}

TEST_F(SafetensorsTest, OffsetsOutOfRange) {
  ExpectError(RawFile(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", Bytes({1, 2})),
              StatusCode::kInvalidArgument, {"tensor 'w'", "'data_offsets' [4, 12]", "out of range", "8 bytes"});
}

TEST_F(SafetensorsTest, ShapeDisagreesWithOffsets) {
  ExpectError(RawFile(R"({"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}})", Bytes({1, 2})),
              StatusCode::kInvalidArgument, {"tensor 'w'", "'shape' [3]", "needs 6 bytes", "span 8"});
  // A shape whose byte count wraps 64 bits must not pass as small.
  ExpectError(RawFile(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})", ""),
              StatusCode::kInvalidArgument, {"tensor 'w'", "overflows"});
}

TEST_F(SafetensorsTest, OverlappingOffsets) {
  ExpectError(RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      Bytes({1, 2, 3})),
              StatusCode::kInvalidArgument, {"'a'", "'b'", "overlap", "[0, 8]", "[4, 12]"});
  // Header order is irrelevant: the later tensor in the header may come first in the data.
  ExpectError(RawFile(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
                      R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})",
                      Bytes({1, 2, 3})),
              StatusCode::kInvalidArgument, {"'a'", "'b'", "overlap"});
}

TEST_F(SafetensorsTest, DuplicateTensorName) {
  // Escapes are undone before names are compared: "\u0061" is "a".
  ExpectError(RawFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                      R"("\u0061":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                      Bytes({1, 2})),
              StatusCode::kInvalidArgument, {"tensor 'a'", "twice"});
}

TEST_F(SafetensorsTest, ShapeToString) {
  EXPECT_EQ(ShapeToString({}), "[]");
  EXPECT_EQ(ShapeToString({4, 64}), "[4, 64]");
}

}  // namespace
}  // namespace seer
