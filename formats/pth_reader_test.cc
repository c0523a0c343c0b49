// The restricted .pth reader: checkpoints built here by a small writer of our
// own (formats/pth_test_writer.h, protocol 2 as torch writes it) load
// with exact values, and hostile files are rejected with clear messages.

#include "formats/pth_reader.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "formats/zip_reader.h"
#include "formats/pth_test_writer.h"

namespace seer {
namespace {

using testing::Bf16Bits;
using testing::Bytes16;
using testing::BytesF32;
using testing::PickleWriter;
using testing::PthArchive;
using testing::StateDictPickle;
using testing::TestTensor;
using testing::ZipArchive;
using testing::ZipFileEntry;

StatusOr<PthStateDict> Parse(const std::string& bytes) {
  return ParsePth("gates/attn_gate_weights.pth", reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

// Expects a rejection whose message names the file and contains `needle`.
void ExpectRejected(const std::string& bytes, const std::string& needle) {
  auto r = Parse(bytes);
  ASSERT_FALSE(r.ok()) << "accepted a file that should fail with '" << needle << "'";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(r.status().message().find("gates/attn_gate_weights.pth"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find(needle), std::string::npos)
      << "message '" << r.status().message() << "' lacks '" << needle << "'";
}

// A pickle that is just a payload, wrapped in a valid archive.
std::string ArchiveWithPickle(const std::string& pickle) { return PthArchive(pickle, {}); }

// A bf16 [2, 3] tensor and an fp32 [3] tensor with values chosen by hand.
struct ValidFile {
  std::string bytes;
  std::vector<float> bf16_values = {1.5f, -0.25f, 3.0f, 0.0f, -1024.0f, 0.0078125f};
  std::vector<float> f32_values = {0.1f, -7.75f, 1e-30f};
};

ValidFile MakeValid(bool zip64 = false, bool ordered = true) {
  ValidFile v;
  std::vector<uint16_t> bf16;
  for (float f : v.bf16_values) bf16.push_back(Bf16Bits(f));
  const std::vector<TestTensor> tensors = {
      {"model.layers.0.self_attn.attn_gate.mask_linear_k.weight", "BFloat16Storage", "0", 6, 0, {2, 3}, {3, 1}},
      {"bias", "FloatStorage", "1", 3, 0, {3}, {1}},
  };
  v.bytes = PthArchive(StateDictPickle(tensors, ordered), {{"0", Bytes16(bf16)}, {"1", BytesF32(v.f32_values)}}, zip64);
  return v;
}

void ExpectValid(const ValidFile& v) {
  auto r = Parse(v.bytes);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->tensors.size(), 2u);
  const PthTensor* w = r->Find("model.layers.0.self_attn.attn_gate.mask_linear_k.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kBF16);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w->values, v.bf16_values);
  const PthTensor* b = r->Find("bias");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kF32);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(b->values, v.f32_values);
  EXPECT_EQ(r->tensors[0].name, "model.layers.0.self_attn.attn_gate.mask_linear_k.weight");  // file order
}

TEST(PthReader, LoadsAStateDictWithExactValues) { ExpectValid(MakeValid()); }
TEST(PthReader, LoadsAPlainDictRoot) { ExpectValid(MakeValid(false, /*ordered=*/false)); }
TEST(PthReader, LoadsZip64Archives) { ExpectValid(MakeValid(/*zip64=*/true)); }

TEST(PthReader, GathersNonContiguousViewsAndFp16) {
  // Storage holds a row-major [3, 4] fp32 matrix 0..11 (plus 2 leading
  // values); the tensor is its transpose, shape [4, 3], stride (1, 4),
  // offset 2. A second tensor is an fp16 scalar-free [2, 2] view with a
  // stride of 2 on the last dim, and a third shares storage "0".
  std::vector<float> storage = {-1, -2};
  for (int i = 0; i < 12; ++i) storage.push_back(float(i));
  // fp16 encodings worked out by hand: 1.0 = 0x3c00, -2.5 = 0xc100,
  // 65504 = 0x7bff (max), 2^-24 = 0x0001 (smallest subnormal).
  const std::vector<uint16_t> half = {0x3c00, 0xffff, 0xc100, 0xffff, 0x7bff, 0xffff, 0x0001, 0xffff};
  const std::vector<TestTensor> tensors = {
      {"t", "FloatStorage", "0", 14, 2, {4, 3}, {1, 4}},
      {"h", "HalfStorage", "1", 8, 0, {2, 2}, {4, 2}},
      {"row", "FloatStorage", "0", 14, 6, {4}, {1}, /*parameter=*/true},
  };
  auto r = Parse(PthArchive(StateDictPickle(tensors), {{"0", BytesF32(storage)}, {"1", Bytes16(half)}}));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const PthTensor* t = r->Find("t");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(t->values, (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  const PthTensor* h = r->Find("h");
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->dtype, DType::kF16);
  EXPECT_EQ(h->values, (std::vector<float>{1.0f, -2.5f, 65504.0f, std::ldexp(1.0f, -24)}));
  const PthTensor* row = r->Find("row");
  ASSERT_NE(row, nullptr);
  EXPECT_EQ(row->values, (std::vector<float>{4, 5, 6, 7}));
}

TEST(PthReader, ReadsFromDisk) {
  const ValidFile v = MakeValid();
  const std::string path = ::testing::TempDir() + "/pth_reader_test.pth";
  std::ofstream(path, std::ios::binary) << v.bytes;
  auto r = ReadPthFile(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->tensors.size(), 2u);
  auto missing = ReadPthFile(path + ".nope");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

// --- hostile pickles ---------------------------------------------------------

TEST(PthReader, RejectsOsSystem) {
  // The classic payload: GLOBAL 'os system', an argument tuple, REDUCE.
  PickleWriter w;
  w.Global("os", "system");
  w.Str("touch /tmp/pwned");
  w.raw() += '\x85';
  w.raw() += 'R';
  w.Stop();
  ExpectRejected(ArchiveWithPickle(w.raw()), "global 'os.system' is not allowed");
}

TEST(PthReader, RejectsBuiltinsEval) {
  PickleWriter w;
  w.Global("builtins", "eval");
  w.Str("__import__('os').system('id')");
  w.raw() += '\x85';
  w.raw() += 'R';
  w.Stop();
  ExpectRejected(ArchiveWithPickle(w.raw()), "'builtins.eval'");
}

TEST(PthReader, RejectsPosixSystemThroughStackGlobal) {
  PickleWriter w;
  w.Str("posix");
  w.Str("system");
  w.raw() += '\x93';  // STACK_GLOBAL
  w.Str("id");
  w.raw() += '\x85';
  w.raw() += 'R';
  w.Stop();
  ExpectRejected(ArchiveWithPickle(w.raw()), "'posix.system'");
}

TEST(PthReader, RejectsGlobalsHiddenInsideAStateDict) {
  // A valid-looking state dict whose tensor rebuild function is swapped for
  // another callable.
  std::string pickle = StateDictPickle({{"w", "FloatStorage", "0", 2, 0, {2}, {1}}});
  const std::string from = "torch._utils\n_rebuild_tensor_v2\n";
  const size_t at = pickle.find(from);
  ASSERT_NE(at, std::string::npos);
  pickle.replace(at, from.size(), "subprocess\ncheck_output\n");
  ExpectRejected(PthArchive(pickle, {{"0", BytesF32({1, 2})}}), "'subprocess.check_output'");
}

TEST(PthReader, RejectsUnknownAndDisallowedOpcodes) {
  for (auto [op, name] : std::vector<std::pair<char, std::string>>{{'\xff', "opcode 0xff"},
                                                                   {'i', "(INST)"},
                                                                   {'o', "(OBJ)"},
                                                                   {'\x81', "(NEWOBJ)"},
                                                                   {'2', "(DUP)"},
                                                                   {'\x82', "(EXT1)"},
                                                                   {'P', "(PERSID)"}}) {
    PickleWriter w;
    w.raw() += '}';
    w.raw() += op;
    w.raw() += '.';
    ExpectRejected(ArchiveWithPickle(w.raw()), name);
  }
}

TEST(PthReader, RejectsWrongDtype) {
  const std::vector<TestTensor> tensors = {{"w", "LongStorage", "0", 2, 0, {2}, {1}}};
  ExpectRejected(PthArchive(StateDictPickle(tensors), {{"0", std::string(16, '\0')}}), "torch.LongStorage");
  const std::vector<TestTensor> dbl = {{"w", "DoubleStorage", "0", 2, 0, {2}, {1}}};
  ExpectRejected(PthArchive(StateDictPickle(dbl), {{"0", std::string(16, '\0')}}), "bf16, fp16 or fp32");
}

TEST(PthReader, RejectsStorageOutOfBounds) {
  // [4, 4] needs 16 elements; the storage has 10.
  const std::vector<TestTensor> big = {{"w", "FloatStorage", "0", 10, 0, {4, 4}, {4, 1}}};
  ExpectRejected(PthArchive(StateDictPickle(big), {{"0", BytesF32(std::vector<float>(10))}}),
                 "reaches past the end of its storage");
  // An offset pushes a fitting shape out.
  const std::vector<TestTensor> shifted = {{"w", "FloatStorage", "0", 10, 5, {2, 3}, {3, 1}}};
  ExpectRejected(PthArchive(StateDictPickle(shifted), {{"0", BytesF32(std::vector<float>(10))}}), "offset 5");
  // A stride that walks off the end.
  const std::vector<TestTensor> strided = {{"w", "FloatStorage", "0", 10, 0, {2, 2}, {9, 1}}};
  ExpectRejected(PthArchive(StateDictPickle(strided), {{"0", BytesF32(std::vector<float>(10))}}), "past the end");
  // Sizes whose product overflows 64 bits.
  const std::vector<TestTensor> huge = {
      {"w", "FloatStorage", "0", 10, 0, {int64_t{1} << 40, int64_t{1} << 40}, {0, 0}}};
  ExpectRejected(PthArchive(StateDictPickle(huge), {{"0", BytesF32(std::vector<float>(10))}}), "past the end");
  // The persistent id claims more elements than the entry holds.
  const std::vector<TestTensor> lying = {{"w", "FloatStorage", "0", 100, 0, {4}, {1}}};
  ExpectRejected(PthArchive(StateDictPickle(lying), {{"0", BytesF32(std::vector<float>(10))}}), "claims 100 elements");
  // The storage entry is missing.
  ExpectRejected(PthArchive(StateDictPickle(lying), {}), "no entry 'archive/data/0'");
}

TEST(PthReader, RejectsStackAndMemoAbuse) {
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02R.", 4)), "stack underflow");
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02h\x07.", 5)), "memo index 7");
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02}s.", 5)), "stack underflow");
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02]K\x01K\x02s.", 9)), "not a dict");
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02}", 3)), "no STOP");
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02X\xff\xff\x00\x00"
                                               "ab.",
                                               10)),
                 "runs past the end");
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02}(K\x01u.", 8)), "odd number");
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x09}.", 4)), "protocol 9");
}

// MARKs nest a handful deep in a state dict; a pickle of nothing but MARKs
// is refused at a fixed depth instead of growing the mark stack with the file.
TEST(PthReader, RejectsMarksNestedDeeperThanAStateDictNeeds) {
  ExpectRejected(ArchiveWithPickle("\x80\x02" + std::string(PthLimits::kMaxMarkDepth + 1, '(') + "."),
                 "MARKs nested deeper than 1024");
  // At the limit, the pickle runs to its end (and fails for its content only).
  ExpectRejected(ArchiveWithPickle("\x80\x02" + std::string(PthLimits::kMaxMarkDepth, '(') + "N."), "not a state dict");
}

// Limits a loader passes (LoadGates, from the model's shapes) are named.
TEST(PthReader, EnforcesTheCallersLimits) {
  const ValidFile v = MakeValid();
  auto parse = [&](const PthLimits& limits) {
    return ParsePth("g.pth", reinterpret_cast<const uint8_t*>(v.bytes.data()), v.bytes.size(), limits);
  };
  PthLimits file;
  file.max_file_bytes = v.bytes.size() - 1;
  file.source = "the test's limits";
  auto r = parse(file);
  EXPECT_NE(r.status().message().find("more than the limit of " + std::to_string(v.bytes.size() - 1) +
                                      " (the test's limits)"),
            std::string::npos)
      << r.status().ToString();
  PthLimits pickle;
  pickle.max_pickle_bytes = 16;
  r = parse(pickle);
  EXPECT_NE(r.status().message().find("data.pkl is"), std::string::npos) << r.status().ToString();
  PthLimits values;
  values.max_value_bytes = 4 * 8;  // the two tensors hold 6 + 3 values
  r = parse(values);
  EXPECT_NE(r.status().message().find("more than 32 bytes of float32 values"), std::string::npos)
      << r.status().ToString();
  values.max_value_bytes = 4 * 9;
  EXPECT_TRUE(parse(values).ok());
}

TEST(PthReader, RejectsCallsAndBuildsOutsideTheStateDictShape) {
  // Calling a storage class.
  PickleWriter a;
  a.Global("torch", "FloatStorage");
  a.raw() += ")R.";
  ExpectRejected(ArchiveWithPickle(a.raw()), "calling torch.FloatStorage is not allowed");
  // OrderedDict with arguments.
  PickleWriter b;
  b.Global("collections", "OrderedDict");
  b.raw() += "]\x85R.";
  ExpectRejected(ArchiveWithPickle(b.raw()), "no arguments");
  // BUILD on something other than a dict.
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02]}b.", 6)), "BUILD is only allowed on an OrderedDict");
  // A state dict whose value is not a tensor, or whose key is not a string.
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02}X\x01\x00\x00\x00wK\x05s.", 13)),
                 "'w' is a int, not a tensor");
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02}K\x01K\x05s.", 9)), "not a str");
  ExpectRejected(ArchiveWithPickle(std::string("\x80\x02].", 4)), "holds a list, not a state dict");
}

// A state dict of many distinct keys that all name one small tensor (BINGET
// makes each extra key cost a few bytes of pickle). It is valid and must load
// in time linear in the keys: the duplicate-key check once compared every
// key with all before it, which for a few hundred thousand keys ran for
// minutes (and far longer with the fuzzer's sanitizers).
TEST(PthReader, LoadsManyKeysSharingOneTensorInLinearTime) {
  constexpr int kKeys = 300000;
  PickleWriter w;
  w.raw() += '}';
  w.Put();
  w.Mark();
  w.Str("k0");
  w.Global("torch._utils", "_rebuild_tensor_v2");
  w.Mark();
  w.Mark();
  w.Str("storage");
  w.Global("torch", "FloatStorage");
  w.Str("0");
  w.Str("cpu");
  w.Int(1);
  w.Tuple();
  w.raw() += 'Q';
  w.Int(0);
  w.IntTuple({1});
  w.IntTuple({1});
  w.raw() += '\x89';
  w.Global("collections", "OrderedDict");
  w.raw() += ")R";
  w.Put();
  w.Tuple();
  w.raw() += 'R';
  const int tensor = w.Put();
  for (int i = 1; i < kKeys; ++i) {
    w.Str("k" + std::to_string(i));
    w.Get(tensor);
  }
  w.raw() += 'u';
  w.Stop();
  auto r = Parse(PthArchive(w.raw(), {{"0", BytesF32({2.5f})}}));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->tensors.size(), size_t{kKeys});
  EXPECT_EQ(r->tensors.back().name, "k" + std::to_string(kKeys - 1));
  EXPECT_EQ(r->tensors.back().values, std::vector<float>{2.5f});
}

// --- hostile zips ------------------------------------------------------------

TEST(PthReader, RejectsTruncatedZip) {
  const ValidFile v = MakeValid();
  for (size_t keep : {v.bytes.size() / 2, v.bytes.size() - 30, size_t{10}, size_t{0}}) {
    ExpectRejected(v.bytes.substr(0, keep), "not a valid zip archive");
  }
}

TEST(PthReader, RejectsCrcMismatch) {
  ValidFile v = MakeValid();
  // Flip one bit of the bf16 tensor data (the value -1024 = 0xc480).
  const std::string needle = testing::Bytes16({Bf16Bits(-1024.0f)});
  const size_t at = v.bytes.find(needle);
  ASSERT_NE(at, std::string::npos);
  v.bytes[at] ^= 0x01;
  ExpectRejected(v.bytes, "'archive/data/0' is corrupt: CRC-32");
}

TEST(PthReader, RejectsCompressedAndEncryptedEntries) {
  const std::string pickle = StateDictPickle({});
  ExpectRejected(ZipArchive({{"archive/data.pkl", pickle, /*method=*/8, 0}}), "compressed (method 8)");
  ExpectRejected(ZipArchive({{"archive/data.pkl", pickle, 0, /*flags=*/1}}), "encrypted");
}

TEST(PthReader, RejectsArchivesWithoutAStateDictPickle) {
  ExpectRejected(ZipArchive({{"archive/other.txt", "hello"}}), "no '<name>/data.pkl' entry");
  ExpectRejected(ZipArchive({{"a/data.pkl", StateDictPickle({})}, {"b/data.pkl", StateDictPickle({})}}),
                 "more than one");
  ExpectRejected(ZipArchive({{"a/data.pkl", StateDictPickle({})}, {"a/data.pkl", StateDictPickle({})}}),
                 "appears twice");
  ExpectRejected(ZipArchive({{"a/data.pkl", StateDictPickle({})}, {"a/byteorder", "big"}}), "little-endian");
  ExpectRejected(std::string("\x80\x02\x8a\x0a", 4) + std::string(40, 'x'), "legacy");
}

TEST(PthReader, RejectsOutOfBoundsOffsetsInTheDirectory) {
  std::string zip = ZipArchive({{"archive/data.pkl", StateDictPickle({})}});
  // The central directory's local-header offset sits 4 bytes before the
  // name, i.e. 42 bytes into the central header; point it past the end.
  const size_t cd = zip.rfind(std::string("PK\x01\x02", 4));
  ASSERT_NE(cd, std::string::npos);
  std::string bad_local = zip;
  bad_local[cd + 42] = '\x7f';
  bad_local[cd + 45] = '\x7f';
  ExpectRejected(bad_local, "local header");
  // A data size that runs past the directory.
  std::string bad_size = zip;
  bad_size[cd + 23] = '\x70';
  bad_size[cd + 27] = '\x70';
  ExpectRejected(bad_size, "runs past");
  // The end record points the directory outside the file.
  std::string bad_cd = zip;
  bad_cd[bad_cd.size() - 22 + 19] = '\x7f';
  ExpectRejected(bad_cd, "central directory");
}

TEST(Crc32, KnownVectors) {
  // The standard check value of CRC-32/ISO-HDLC.
  const std::string s = "123456789";
  EXPECT_EQ(Crc32(reinterpret_cast<const uint8_t*>(s.data()), s.size()), 0xCBF43926u);
  EXPECT_EQ(Crc32(nullptr, 0), 0u);
  // Continuing a CRC equals computing it in one go.
  const uint32_t part = Crc32(reinterpret_cast<const uint8_t*>(s.data()), 4);
  EXPECT_EQ(Crc32(reinterpret_cast<const uint8_t*>(s.data()) + 4, 5, part), 0xCBF43926u);
}

// Writes the fuzzer's seed corpus: SEER_WRITE_PTH_SEEDS=DIR seer_engine_tests
// --gtest_also_run_disabled_tests --gtest_filter=*WriteFuzzSeeds
TEST(PthReader, DISABLED_WriteFuzzSeeds) {
  const char* dir = std::getenv("SEER_WRITE_PTH_SEEDS");
  ASSERT_NE(dir, nullptr);
  auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(std::string(dir) + "/" + name, std::ios::binary) << bytes;
  };
  write("valid.pth", MakeValid().bytes);
  write("valid_zip64.pth", MakeValid(true).bytes);
  write("valid_plain_dict.pth", MakeValid(false, false).bytes);
  const std::vector<TestTensor> views = {{"t", "FloatStorage", "0", 14, 2, {4, 3}, {1, 4}},
                                         {"row", "HalfStorage", "1", 8, 0, {2, 2}, {4, 2}, true}};
  write("views.pth", PthArchive(StateDictPickle(views), {{"0", BytesF32(std::vector<float>(14, 1.0f))},
                                                         {"1", Bytes16(std::vector<uint16_t>(8, 0x3c00))}}));
  PickleWriter w;
  w.Global("os", "system");
  w.Str("id");
  w.raw() += "\x85R.";
  write("os_system.pth", ArchiveWithPickle(w.raw()));
  // Bare pickles: the fuzzer wraps them in an archive with a 256-byte storage "0".
  write("state_dict_f32.pkl", StateDictPickle({{"w", "FloatStorage", "0", 64, 0, {8, 8}, {8, 1}},
                                               {"t", "FloatStorage", "0", 64, 3, {4, 5}, {1, 4}, true}}));
  write("state_dict_bf16_plain.pkl", StateDictPickle({{"model.layers.0.self_attn.attn_gate.mask_linear_k.weight",
                                                       "BFloat16Storage",
                                                       "0",
                                                       128,
                                                       0,
                                                       {2, 3, 4, 5},
                                                       {60, 20, 5, 1}}},
                                                     /*ordered=*/false));
  write("os_system.pkl", w.raw());
}

}  // namespace
}  // namespace seer
