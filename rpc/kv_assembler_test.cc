// The decode side's checks on a Prefill stream, against hand-built streams:
// a good stream lands byte-exact in the cache (compared with the values the
// test wrote), every malformed one is refused with the field named.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "base/dtype.h"
#include "engine/kv/kv_cache.h"
#include "rpc/kv_assembler.h"
#include "rpc/kv_wire.h"

namespace seer {
namespace {

constexpr int kLayers = 3, kHeads = 2, kDim = 4, kSeq = 10, kVocab = 16;

ExpectedLayout Expected() { return {0xabcdef, kLayers, kHeads, kDim, kVocab}; }

v1::LayoutHeader Header(v1::KvDtype dtype = v1::KV_DTYPE_F32) {
  v1::LayoutHeader h;
  h.set_model_fingerprint(0xabcdef);
  h.set_num_layers(kLayers);
  h.set_num_kv_heads(kHeads);
  h.set_head_dim(kDim);
  h.set_kv_dtype(dtype);
  h.set_block_size(64);
  h.set_seq_len(kSeq);
  h.set_vocab_size(kVocab);
  return h;
}

float Value(int layer, int head, int t, int d, bool is_v) {
  return float(layer * 1000 + head * 100 + t) + d * 0.125f + (is_v ? 0.5f : 0.0f);
}

// Tokens [t0, t0 + n) of one layer, [heads, n, dim], as F32 or BF16 bytes.
v1::KvChunk Chunk(int layer, int t0, int n, DType dtype = DType::kF32) {
  v1::KvChunk c;
  c.set_layer(layer);
  c.set_token_start(t0);
  c.set_token_count(n);
  for (bool is_v : {false, true}) {
    std::string bytes;
    for (int h = 0; h < kHeads; ++h)
      for (int t = t0; t < t0 + n; ++t)
        for (int d = 0; d < kDim; ++d) {
          const float x = Value(layer, h, t, d, is_v);
          if (dtype == DType::kF32) {
            bytes.append(reinterpret_cast<const char*>(&x), 4);
          } else {
            const uint16_t b = FloatToBf16(x);
            bytes.append(reinterpret_cast<const char*>(&b), 2);
          }
        }
    (is_v ? c.mutable_v() : c.mutable_k())->assign(bytes);
  }
  return c;
}

v1::PrefillSummary Summary() {
  v1::PrefillSummary s;
  for (int i = 0; i < kVocab; ++i) s.add_last_logits(float(i));
  return s;
}

TEST(KvAssembler, AssemblesChunksInAnyLayerOrder) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    HostKvCache cache(kLayers, kHeads, kDim, kSeq + 5);
    KvAssembler a(Expected(), 0, kSeq, &cache);
    ASSERT_TRUE(a.OnHeader(Header(dtype == DType::kF32 ? v1::KV_DTYPE_F32 : v1::KV_DTYPE_BF16)).ok());
    // Layers interleaved; each layer's chunks in order.
    for (int t0 = 0; t0 < kSeq; t0 += 4)
      for (int layer = kLayers - 1; layer >= 0; --layer) {
        Status s = a.OnChunk(Chunk(layer, t0, std::min(4, kSeq - t0), dtype));
        ASSERT_TRUE(s.ok()) << s.ToString();
      }
    ASSERT_TRUE(a.OnSummary(Summary()).ok());
    EXPECT_EQ(cache.length(), kSeq);
    EXPECT_EQ(a.bytes(), int64_t{2} * kLayers * kHeads * kSeq * kDim * int64_t(DTypeSize(dtype)));
    for (int layer = 0; layer < kLayers; ++layer)
      for (int h = 0; h < kHeads; ++h)
        for (int t = 0; t < kSeq; ++t)
          for (int d = 0; d < kDim; ++d) {
            const size_t i = (size_t(h) * cache.capacity() + t) * kDim + d;
            float want_k = Value(layer, h, t, d, false), want_v = Value(layer, h, t, d, true);
            if (dtype == DType::kBF16) {
              want_k = Bf16ToFloat(FloatToBf16(want_k));
              want_v = Bf16ToFloat(FloatToBf16(want_v));
            }
            ASSERT_EQ(cache.k(layer)[i], want_k);
            ASSERT_EQ(cache.v(layer)[i], want_v);
          }
  }
}

void ExpectRefused(const Status& s, StatusCode code, const std::string& field) {
  EXPECT_EQ(s.code(), code) << s.ToString();
  EXPECT_NE(s.message().find(field), std::string::npos) << "'" << field << "' not in: " << s.message();
}

TEST(KvAssembler, RefusesAnotherModelsLayout) {
  HostKvCache cache(kLayers, kHeads, kDim, kSeq);
  struct Case {
    void (*mutate)(v1::LayoutHeader*);
    const char* field;
  };
  const Case cases[] = {
      {[](v1::LayoutHeader* h) { h->set_model_fingerprint(1); }, "model_fingerprint"},
      {[](v1::LayoutHeader* h) { h->set_num_layers(kLayers + 1); }, "num_layers"},
      {[](v1::LayoutHeader* h) { h->set_num_kv_heads(kHeads * 2); }, "num_kv_heads"},
      {[](v1::LayoutHeader* h) { h->set_head_dim(kDim * 2); }, "head_dim"},
      {[](v1::LayoutHeader* h) { h->set_vocab_size(kVocab + 1); }, "vocab_size"},
      {[](v1::LayoutHeader* h) { h->set_kv_dtype(v1::KV_DTYPE_UNSPECIFIED); }, "kv_dtype"},
  };
  for (const Case& c : cases) {
    KvAssembler a(Expected(), 0, kSeq, &cache);
    v1::LayoutHeader h = Header();
    c.mutate(&h);
    ExpectRefused(a.OnHeader(h), StatusCode::kFailedPrecondition, c.field);
  }
  KvAssembler a(Expected(), 0, kSeq, &cache);
  v1::LayoutHeader h = Header();
  h.set_seq_len(kSeq - 1);
  ExpectRefused(a.OnHeader(h), StatusCode::kDataLoss, "seq_len");
}

TEST(KvAssembler, RefusesMalformedChunks) {
  HostKvCache cache(kLayers, kHeads, kDim, kSeq);
  {
    KvAssembler a(Expected(), 0, kSeq, &cache);
    ExpectRefused(a.OnChunk(Chunk(0, 0, 2)), StatusCode::kDataLoss, "before the layout header");
  }
  auto fresh = [&] {
    auto a = std::make_unique<KvAssembler>(Expected(), 0, kSeq, &cache);
    EXPECT_TRUE(a->OnHeader(Header()).ok());
    return a;
  };
  ExpectRefused(fresh()->OnChunk(Chunk(kLayers, 0, 2)), StatusCode::kDataLoss, "layer");
  ExpectRefused(fresh()->OnChunk(Chunk(0, 2, 2)), StatusCode::kDataLoss, "token_start");
  {
    v1::KvChunk c = Chunk(0, 0, 2);
    c.set_token_count(3);  // sizes say 2
    ExpectRefused(fresh()->OnChunk(c), StatusCode::kDataLoss, "k/v");
  }
  {
    v1::KvChunk c = Chunk(0, 0, 2);
    c.mutable_v()->pop_back();
    ExpectRefused(fresh()->OnChunk(c), StatusCode::kDataLoss, "k/v");
  }
  {
    v1::KvChunk c = Chunk(0, 0, 2);
    c.set_token_count(kSeq + 1);
    ExpectRefused(fresh()->OnChunk(c), StatusCode::kDataLoss, "token_count");
  }
  {
    auto a = fresh();
    ASSERT_TRUE(a->OnChunk(Chunk(0, 0, kSeq)).ok());
    ExpectRefused(a->OnSummary(Summary()), StatusCode::kDataLoss, "layer 1");
  }
  {
    auto a = fresh();
    for (int l = 0; l < kLayers; ++l) ASSERT_TRUE(a->OnChunk(Chunk(l, 0, kSeq)).ok());
    v1::PrefillSummary s = Summary();
    s.mutable_last_logits()->RemoveLast();
    ExpectRefused(a->OnSummary(s), StatusCode::kDataLoss, "last_logits");
  }
}

// Positions the decode worker holds already (kv_from_token): the chunks
// start there, the cache's earlier positions are left as they were, and a
// header that sends from elsewhere is refused: from an earlier position as
// a declined ask (ABORTED, IsKvFromDeclined), from a later one as a broken
// stream.
TEST(KvAssembler, AssemblesTheRestAfterTheHeldPositions) {
  constexpr int kFirst = 4;
  HostKvCache cache(kLayers, kHeads, kDim, kSeq);
  for (int layer = 0; layer < kLayers; ++layer) {
    std::fill_n(cache.k(layer), size_t{kHeads} * kSeq * kDim, -7.0f);
    std::fill_n(cache.v(layer), size_t{kHeads} * kSeq * kDim, -7.0f);
  }
  KvAssembler a(Expected(), kFirst, kSeq, &cache);
  v1::LayoutHeader h = Header();
  h.set_kv_first_token(kFirst);
  ASSERT_TRUE(a.OnHeader(h).ok());
  ExpectRefused(a.OnChunk(Chunk(0, 0, 2)), StatusCode::kDataLoss, "token_start");
  for (int layer = 0; layer < kLayers; ++layer) ASSERT_TRUE(a.OnChunk(Chunk(layer, kFirst, kSeq - kFirst)).ok());
  ASSERT_TRUE(a.OnSummary(Summary()).ok());
  EXPECT_EQ(cache.length(), kSeq);
  EXPECT_EQ(a.bytes(), int64_t{2} * kLayers * kHeads * (kSeq - kFirst) * kDim * 4);
  for (int layer = 0; layer < kLayers; ++layer)
    for (int hd = 0; hd < kHeads; ++hd)
      for (int t = 0; t < kSeq; ++t)
        for (int d = 0; d < kDim; ++d) {
          const size_t i = (size_t(hd) * kSeq + t) * kDim + d;
          ASSERT_EQ(cache.k(layer)[i], t < kFirst ? -7.0f : Value(layer, hd, t, d, false));
          ASSERT_EQ(cache.v(layer)[i], t < kFirst ? -7.0f : Value(layer, hd, t, d, true));
        }
  {
    KvAssembler declined(Expected(), kFirst, kSeq, &cache);
    const Status s = declined.OnHeader(Header());  // kv_first_token 0
    ExpectRefused(s, StatusCode::kAborted, "kv_first_token");
    EXPECT_TRUE(IsKvFromDeclined(s));
    EXPECT_TRUE(IsKvFromDeclined(s.WithContext("prefill endpoint x")));
    EXPECT_FALSE(IsKvFromDeclined(Status(StatusCode::kAborted, "something else")));
  }
  {
    KvAssembler past(Expected(), 0, kSeq, &cache);
    v1::LayoutHeader later = Header();
    later.set_kv_first_token(kFirst);
    const Status s = past.OnHeader(later);
    ExpectRefused(s, StatusCode::kDataLoss, "kv_first_token");
    EXPECT_FALSE(IsKvFromDeclined(s));
  }
  {
    KvAssembler short_layer(Expected(), kFirst, kSeq, &cache);
    ASSERT_TRUE(short_layer.OnHeader(h).ok());
    for (int layer = 0; layer < kLayers; ++layer)
      ASSERT_TRUE(short_layer.OnChunk(Chunk(layer, kFirst, layer == 1 ? 2 : kSeq - kFirst)).ok());
    ExpectRefused(short_layer.OnSummary(Summary()), StatusCode::kDataLoss, "layer 1");
  }
}

TEST(KvWire, ChunksFitTheMessageBound) {
  const KvLayout layout{32, 8, 128, DType::kBF16};
  StatusOr<int> n = TokensPerChunk(layout, int64_t{4} << 20);
  ASSERT_TRUE(n.ok());
  // A full chunk, serialized, stays within 4 MiB: gRPC's default limit.
  v1::PrefillResponse msg;
  v1::KvChunk* c = msg.mutable_chunk();
  c->set_layer(31);
  c->set_token_start(1 << 20);
  c->set_token_count(*n);
  c->mutable_k()->resize(layout.LayerBytes(*n));
  c->mutable_v()->resize(layout.LayerBytes(*n));
  EXPECT_LE(msg.ByteSizeLong(), size_t{4} << 20);
  // One more token would not fit.
  EXPECT_GT(2 * layout.LayerBytes(*n + 1), (size_t{4} << 20) - kKvChunkOverheadBytes);
  EXPECT_EQ(TokensPerChunk(layout, 1000).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace seer
