// PrefillResponse messages as grpc::ByteBuffers, without copying K and V
// through protobuf strings (docs/KV_TRANSPORT.md, "Zero-copy gRPC").
//
// Sending: EncodeKvChunk writes PrefillResponse{chunk} as slices: small ones
// holding the protobuf wire encoding of the scalar fields and of the k / v
// field tags and lengths, and slices that reference the K and V bytes where
// they are (the host cache's rows, or a pinned buffer the device cache was
// copied into), released through `keepalive` once gRPC has sent them. The
// bytes are exactly PrefillResponse::SerializeAsString()'s, so any protobuf
// client reads them.
//
// Receiving: DecodePrefillResponse walks a received ByteBuffer's slices. A
// chunk comes back as KvChunkPieces: K, V and the fp8 scales as pieces of the
// received slices (kept alive by DecodedResponse), which a KvLanding
// (rpc/landing) copies once, straight into a pinned staging buffer or the
// cache. Anything else (header, summary, layer markers), and any chunk
// encoding outside the canonical form (unpacked scales, unknown top-level
// fields), goes through protobuf, so the result is always what protobuf's
// parser would give.
//
// The Prefill service's generated WithRawCallbackMethod_Prefill /
// WithRawCallbackMethod_KvStream (server) and grpc::GenericStub (client)
// carry these buffers.
#pragma once

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "rpc/landing/kv_landing.h"
#include "seer/v1/seer.pb.h"

namespace seer {

// One chunk to send: K and V as byte pieces (each a run of memory that stays
// valid while `keepalive` is held), and the fp8 scales (copied: a few bytes).
struct KvChunkRef {
  int32_t layer = 0;
  int32_t token_start = 0;
  int32_t token_count = 0;
  BytePieces k, v;
  std::vector<float> k_scales, v_scales;
};

// PrefillResponse{chunk} with K and V referenced, not copied.
grpc::ByteBuffer EncodeKvChunk(const KvChunkRef& chunk, std::shared_ptr<const void> keepalive);

// Any message, through protobuf (header, summary, markers, requests).
StatusOr<grpc::ByteBuffer> EncodeMessage(const google::protobuf::MessageLite& message);
// Parses a whole buffer through protobuf.
Status DecodeMessage(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message);

struct DecodedResponse {
  // True when the message is a chunk: `chunk` holds it. Otherwise `message`.
  bool is_chunk = false;
  KvChunkPieces chunk;
  v1::PrefillResponse message;
  // What the chunk's pieces point into.
  std::vector<grpc::Slice> slices;
  std::string flat;
};

// DATA_LOSS (naming the field) for bytes protobuf would not parse.
Status DecodePrefillResponse(const grpc::ByteBuffer& buffer, DecodedResponse* out);

// The field number of a message's first tag (a PrefillResponse: 1 header,
// 2 chunk, 3 summary, 4 layer_sent), read without parsing the rest; 0 for an
// empty or malformed start. Serialized messages lead with their oneof's tag.
int FirstFieldNumber(const grpc::ByteBuffer& buffer);

// The client side of a server-streaming call with ByteBuffers, through
// grpc::GenericStub: one request out, then Next() hands over each response
// buffer as it arrives, with the next read already under way (the receive of
// message n+1 overlaps the caller's work on message n).
class RawStreamCall final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // `method`: "/seer.v1.PrefillService/Prefill" or "/seer.v1.PrefillService/KvStream".
  RawStreamCall(grpc::GenericStub* stub, const std::string& method, grpc::ByteBuffer request);
  ~RawStreamCall() override;

  grpc::ClientContext* context() { return &context_; }
  // Called once, on a gRPC thread, when the server's initial metadata
  // arrive (before the first message; a server that admits a call may send
  // them early). Set before Start.
  void OnInitialMetadata(std::function<void()> fn) { on_initial_metadata_ = std::move(fn); }
  // The server's initial metadata, once received (empty before, or when
  // the call failed first).
  std::multimap<std::string, std::string> initial_metadata();
  // Starts the call (set deadlines on context() first).
  void Start();
  // Waits for the first byte from the server (its initial metadata, a
  // message, or the end of the call) until `deadline`; false when none came.
  bool WaitFirstByte(std::chrono::steady_clock::time_point deadline);
  // The next message; false at the end of the stream (then Finish).
  bool Next(grpc::ByteBuffer* out);
  // Cancels the call (e.g. on a protocol error).
  void Cancel() { context_.TryCancel(); }
  // Waits for the call's end (cancelling it when messages were left unread).
  grpc::Status Finish();

 private:
  void OnReadInitialMetadataDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;
  void OnWriteDone(bool) override {}

  grpc::GenericStub* stub_;
  std::string method_;
  grpc::ClientContext context_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer incoming_;
  std::function<void()> on_initial_metadata_;
  std::mutex mu_;
  std::multimap<std::string, std::string> initial_metadata_;
  std::condition_variable cv_;
  bool started_ = false;
  bool got_initial_metadata_ = false;
  bool have_message_ = false;
  bool read_in_flight_ = false;
  bool read_ended_ = false;
  bool hold_released_ = false;
  bool finishing_ = false;  // Finish was called
  bool done_ = false;
  grpc::Status status_;
};

}  // namespace seer
