#include "rpc/kv_chunk_codec.h"

#include <grpcpp/impl/codegen/proto_utils.h>

#include <algorithm>
#include <cstring>

namespace seer {
namespace {

// Protobuf wire format (https://protobuf.dev/programming-guides/encoding/).
constexpr int kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5;

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void PutTag(std::string* out, int field, int wire) { PutVarint(out, static_cast<uint64_t>(field) << 3 | wire); }

// proto3 int32: omitted when 0; negative values are 10-byte varints.
void PutInt32(std::string* out, int field, int32_t v) {
  if (v == 0) return;
  PutTag(out, field, kVarint);
  PutVarint(out, static_cast<uint64_t>(static_cast<int64_t>(v)));
}

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

size_t LenFieldSize(int field, size_t len) {
  return len == 0 ? 0 : VarintSize(static_cast<uint64_t>(field) << 3) + VarintSize(len) + len;
}

struct SliceOwner {
  std::shared_ptr<const void> keepalive;
};

void ReleaseSlice(void* user_data) { delete static_cast<SliceOwner*>(user_data); }

// A slice over memory kept alive by `keepalive`; no copy.
grpc::Slice Borrowed(const uint8_t* p, size_t n, const std::shared_ptr<const void>& keepalive) {
  return grpc::Slice(const_cast<uint8_t*>(p), n, &ReleaseSlice, new SliceOwner{keepalive});
}

// Reads protobuf wire format across the slices of a buffer.
class PieceReader {
 public:
  explicit PieceReader(const std::vector<grpc::Slice>& slices) {
    for (const grpc::Slice& s : slices)
      if (s.size() > 0) pieces_.emplace_back(s.begin(), s.size());
    for (const auto& p : pieces_) size_ += p.second;
  }
  size_t pos() const { return pos_; }
  size_t size() const { return size_; }

  bool Byte(uint8_t* b) {
    if (pos_ >= size_) return false;
    while (off_ == pieces_[idx_].second) {
      ++idx_;
      off_ = 0;
    }
    *b = pieces_[idx_].first[off_++];
    ++pos_;
    return true;
  }
  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!Byte(&b)) return false;
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;  // more than 10 bytes
  }
  // The next `n` bytes as pieces (into `out` when given), advancing past them.
  bool Take(size_t n, BytePieces* out) {
    if (n > size_ - pos_) return false;
    pos_ += n;
    while (n > 0) {
      if (off_ == pieces_[idx_].second) {
        ++idx_;
        off_ = 0;
        continue;
      }
      const size_t take = std::min(n, pieces_[idx_].second - off_);
      if (out != nullptr) out->Add(pieces_[idx_].first + off_, take);
      off_ += take;
      n -= take;
    }
    return true;
  }

 private:
  std::vector<std::pair<const uint8_t*, size_t>> pieces_;
  size_t size_ = 0, pos_ = 0, idx_ = 0, off_ = 0;
};

enum class Fast { kDone, kFallback, kBroken };

// The canonical chunk-only form: one top-level field 2 (length-delimited)
// and nothing else; inside it the KvChunk fields, unknown ones skipped.
Fast DecodeChunkFast(PieceReader& r, KvChunkPieces* c) {
  uint64_t tag;
  if (!r.Varint(&tag)) return Fast::kFallback;
  if (tag != (2u << 3 | kLen)) return Fast::kFallback;
  uint64_t len;
  if (!r.Varint(&len) || len != r.size() - r.pos()) return Fast::kFallback;  // trailing fields: protobuf decides
  while (r.pos() < r.size()) {
    if (!r.Varint(&tag)) return Fast::kBroken;
    const int field = static_cast<int>(tag >> 3), wire = static_cast<int>(tag & 7);
    if (field == 0) return Fast::kFallback;
    uint64_t v;
    if (wire == kVarint) {
      if (!r.Varint(&v)) return Fast::kBroken;
      const int32_t i = static_cast<int32_t>(static_cast<uint32_t>(v));  // int32: the low 32 bits
      if (field == 1)
        c->layer = i;
      else if (field == 2)
        c->token_start = i;
      else if (field == 3)
        c->token_count = i;
    } else if (wire == kLen) {
      if (!r.Varint(&v)) return Fast::kBroken;
      BytePieces piece;
      if (!r.Take(v, (field >= 4 && field <= 7) ? &piece : nullptr)) return Fast::kBroken;
      if (field == 4)
        c->k = piece;  // bytes: the last occurrence wins
      else if (field == 5)
        c->v = piece;
      else if (field == 6 || field == 7) {
        if (v % 4 != 0) return Fast::kFallback;  // protobuf rejects a partial float
        BytePieces& dst = field == 6 ? c->k_scales : c->v_scales;  // packed runs concatenate
        for (const auto& [p, n] : piece.pieces()) dst.Add(p, n);
      }
    } else if (wire == kFixed64 || wire == kFixed32) {
      if (field == 6 || field == 7) return Fast::kFallback;  // unpacked floats
      if (!r.Take(wire == kFixed64 ? 8 : 4, nullptr)) return Fast::kBroken;
    } else {
      return Fast::kFallback;  // groups and invalid wire types
    }
  }
  return Fast::kDone;
}

}  // namespace

grpc::ByteBuffer EncodeKvChunk(const KvChunkRef& c, std::shared_ptr<const void> keepalive) {
  const size_t k = c.k.size(), v = c.v.size();
  const size_t ks = c.k_scales.size() * sizeof(float), vs = c.v_scales.size() * sizeof(float);
  std::string scalars;
  PutInt32(&scalars, 1, c.layer);
  PutInt32(&scalars, 2, c.token_start);
  PutInt32(&scalars, 3, c.token_count);
  const size_t body =
      scalars.size() + LenFieldSize(4, k) + LenFieldSize(5, v) + LenFieldSize(6, ks) + LenFieldSize(7, vs);

  std::vector<grpc::Slice> slices;
  std::string head;
  PutTag(&head, 2, kLen);
  PutVarint(&head, body);
  head += scalars;
  if (k > 0) {
    PutTag(&head, 4, kLen);
    PutVarint(&head, k);
  }
  slices.emplace_back(head);
  for (const auto& [p, n] : c.k.pieces()) slices.push_back(Borrowed(p, n, keepalive));
  std::string mid;
  if (v > 0) {
    PutTag(&mid, 5, kLen);
    PutVarint(&mid, v);
    slices.emplace_back(mid);
  }
  for (const auto& [p, n] : c.v.pieces()) slices.push_back(Borrowed(p, n, keepalive));
  std::string tail;
  for (int field : {6, 7}) {
    const std::vector<float>& s = field == 6 ? c.k_scales : c.v_scales;
    if (s.empty()) continue;
    PutTag(&tail, field, kLen);
    PutVarint(&tail, s.size() * sizeof(float));
    tail.append(reinterpret_cast<const char*>(s.data()), s.size() * sizeof(float));  // little-endian hosts
  }
  if (!tail.empty()) slices.emplace_back(tail);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

StatusOr<grpc::ByteBuffer> EncodeMessage(const google::protobuf::MessageLite& message) {
  grpc::ByteBuffer out;
  bool own = false;
  const grpc::Status s = grpc::SerializationTraits<google::protobuf::MessageLite>::Serialize(message, &out, &own);
  if (!s.ok()) return Internal("serializing a message: " + s.error_message());
  return out;
}

Status DecodeMessage(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return DataLoss("an unreadable message buffer");
  std::string flat;
  flat.reserve(buffer.Length());
  for (const grpc::Slice& s : slices) flat.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (!message->ParseFromString(flat)) return DataLoss("a message that does not parse as " + message->GetTypeName());
  return OkStatus();
}

Status DecodePrefillResponse(const grpc::ByteBuffer& buffer, DecodedResponse* out) {
  *out = DecodedResponse();
  if (!buffer.Dump(&out->slices).ok()) return DataLoss("prefill stream: an unreadable message buffer");
  {
    PieceReader r(out->slices);
    KvChunkPieces c;
    const Fast f = DecodeChunkFast(r, &c);
    if (f == Fast::kBroken) return DataLoss("prefill stream: a KvChunk that does not parse");
    if (f == Fast::kDone) {
      out->is_chunk = true;
      out->chunk = std::move(c);
      return OkStatus();
    }
  }
  // Protobuf decides; a chunk still comes back as pieces (of its strings).
  out->flat.reserve(buffer.Length());
  for (const grpc::Slice& s : out->slices) out->flat.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (!out->message.ParseFromString(out->flat))
    return DataLoss("prefill stream: a message that does not parse as seer.v1.PrefillResponse");
  if (out->message.has_chunk()) {
    const v1::KvChunk& m = out->message.chunk();
    out->is_chunk = true;
    out->chunk.layer = m.layer();
    out->chunk.token_start = m.token_start();
    out->chunk.token_count = m.token_count();
    out->chunk.k.Add(m.k().data(), m.k().size());
    out->chunk.v.Add(m.v().data(), m.v().size());
    out->chunk.k_scales.Add(m.k_scales().data(), m.k_scales_size() * sizeof(float));
    out->chunk.v_scales.Add(m.v_scales().data(), m.v_scales_size() * sizeof(float));
  }
  return OkStatus();
}

int FirstFieldNumber(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return 0;
  PieceReader r(slices);
  uint64_t tag = 0;
  if (!r.Varint(&tag)) return 0;
  return static_cast<int>(std::min<uint64_t>(tag >> 3, 1u << 29));
}

RawStreamCall::RawStreamCall(grpc::GenericStub* stub, const std::string& method, grpc::ByteBuffer request)
    : stub_(stub), method_(method), request_(std::move(request)) {}

RawStreamCall::~RawStreamCall() {
  context_.TryCancel();
  (void)Finish();
}

void RawStreamCall::Start() {
  stub_->PrepareBidiStreamingCall(&context_, method_, {}, this);
  // The hold keeps OnDone away while a StartRead of ours may still come (a
  // read started after OnDone would touch a finished call).
  AddHold();
  started_ = true;
  read_in_flight_ = true;
  StartRead(&incoming_);
  StartWriteLast(&request_, grpc::WriteOptions());
  StartCall();
}

bool RawStreamCall::Next(grpc::ByteBuffer* out) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return have_message_ || read_ended_; });
  if (!have_message_) return false;
  out->Swap(&incoming_);
  have_message_ = false;
  read_in_flight_ = true;
  lock.unlock();
  StartRead(&incoming_);  // the next message is received while the caller works on this one
  return true;
}

bool RawStreamCall::WaitFirstByte(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_until(lock, deadline, [&] { return got_initial_metadata_ || have_message_ || read_ended_; });
}

void RawStreamCall::OnReadInitialMetadataDone(bool ok) {
  std::multimap<std::string, std::string> md;
  if (ok) {
    for (const auto& [key, value] : context_.GetServerInitialMetadata())
      md.emplace(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ok) initial_metadata_ = std::move(md);
    got_initial_metadata_ = true;
    cv_.notify_all();
  }
  if (on_initial_metadata_) on_initial_metadata_();
}

std::multimap<std::string, std::string> RawStreamCall::initial_metadata() {
  std::lock_guard<std::mutex> lock(mu_);
  return initial_metadata_;
}

void RawStreamCall::OnReadDone(bool ok) {
  bool release = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    read_in_flight_ = false;
    if (ok) {
      have_message_ = true;
      // Finish came while this read was in flight and left the hold to it:
      // no read follows, so the call may end now.
      if (finishing_ && !hold_released_) {
        hold_released_ = true;
        release = true;
      }
    } else {
      read_ended_ = true;
      release = !hold_released_;
      hold_released_ = true;
    }
    cv_.notify_all();
  }
  if (release) RemoveHold();
}

void RawStreamCall::OnDone(const grpc::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  status_ = status;
  done_ = true;
  read_ended_ = true;
  cv_.notify_all();
}

grpc::Status RawStreamCall::Finish() {
  std::unique_lock<std::mutex> lock(mu_);
  if (!started_) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "the call was never started");
  finishing_ = true;  // a read in flight that still succeeds releases the hold (OnReadDone)
  if (!read_ended_) {
    // The caller stops early: no more reads; end the call.
    lock.unlock();
    context_.TryCancel();
    lock.lock();
  }
  if (!hold_released_ && !read_in_flight_) {
    hold_released_ = true;
    lock.unlock();
    RemoveHold();
    lock.lock();
  }
  cv_.wait(lock, [&] { return done_; });
  return status_;
}

}  // namespace seer
