// A GPU-direct KV data plane between one prefill process and one decode
// process: an NCCL communicator of two ranks (0: the prefill, the sender;
// 1: the decode worker, the receiver), made once per pair and reused by every
// request between them. gRPC stays the control plane: it carries the unique
// id, the layout and, per layer, that a layer is on its way
// (docs/KV_TRANSPORT.md). Which path the bytes take (NVLink/P2P, shared
// memory, sockets, InfiniBand) is NCCL's choice, not ours.
//
// Every request is one Transfer of its prompt's K and V, layer by layer, each
// layer one ncclGroupStart/End of per-head sends (or receives): K then V,
// head 0 first, [seq_len, head_dim] each, from the prefill's cache
// [heads, capacity, head_dim] straight into the decode's cache, whose
// capacity differs, so nothing is staged. Transfers run in the order of their
// sequence numbers on both sides (NCCL matches point-to-point calls by their
// order), one after the other.
//
// Nothing blocks forever. The communicator is non-blocking
// (ncclConfig_t.blocking = 0): one worker thread per link issues every NCCL
// call, polls ncclCommGetAsyncError and each layer's completion event, and
// aborts the communicator (ncclCommAbort) when
//   - setup takes longer than setup_timeout_seconds,
//   - NCCL reports an error,
//   - a layer that is ready on the sending side (its compute event done) or
//     announced on the receiving side (NoteLayerSent) makes no progress for
//     stall_timeout_seconds (a peer that died, or stopped),
//   - Abort() is called (the gRPC stream that controls a transfer broke), or
//   - a sending transfer ends before all its layers were handed over.
// Then every transfer on the link fails with UNAVAILABLE naming the peer, the
// link stays failed, and the next request builds a fresh one. Aborting stops
// the NCCL kernels in flight, and a transfer reports its failure only once
// the link's stream has drained (bounded; the message says if it did not), so
// a failed transfer's cache can be freed when Finish returns. ncclCommAbort
// itself can block for good when the peer died (it waits for the peer's own
// abort within a node), so it runs on a detached thread.
//
// NCCL_NVLS_ENABLE is forced to 0 (NVLink multicast: point-to-point needs
// none, and it can take a shared host's GPUs out of service).
#pragma once

#include <chrono>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>
#include <nccl.h>

#include "base/status.h"
#include "engine/cuda/device_kv_cache.h"

namespace seer {

// Bytes of an ncclUniqueId: what NcclLinkSetup.unique_id carries.
inline constexpr size_t kNcclUniqueIdBytes = sizeof(ncclUniqueId);

// A fresh unique id (its bootstrap root listens in this process).
StatusOr<std::string> NewNcclUniqueId();
// ncclGetVersion of the loaded library, e.g. 22809.
int NcclVersion();
// "GPU-8-4-4-4-12 hex" of CUDA device `device`: the identity both sides compare
// (NCCL does not run two ranks of one communicator on one GPU).
StatusOr<std::string> CudaDeviceUuid(int device);

enum class NcclRole { kSender = 0, kReceiver = 1 };

struct NcclLinkOptions {
  int device = 0;  // this side's CUDA device
  std::string peer;  // for messages: "decode worker 10.0.0.8 (GPU-...)"
  std::string peer_gpu_uuid;  // refused when it is this side's own GPU
  double setup_timeout_seconds = 30.0;
  double stall_timeout_seconds = 10.0;
};

// How a layer's K and V are cut into point-to-point calls. Both sides must
// use the same split (NCCL matches calls one to one).
enum class NcclKvSplit {
  kPerHead,  // 2 x heads calls of seq_len x head_dim: any capacity on either side (the protocol's)
  kWhole  // 2 calls of heads x seq_len x head_dim: only when capacity == seq_len on this side (benchmarks)
};

struct NcclTransferStats {
  int64_t bytes = 0;
  double seconds = 0.0;  // first call issued to last layer complete
  double waited_seconds = 0.0;  // spent inside Finish / Wait
};

class NcclKvLink : public std::enable_shared_from_this<NcclKvLink> {
 public:
  class Transfer;

  // Starts joining the communicator (returns at once; ready() tells when it
  // is done). FAILED_PRECONDITION when the peer is on this GPU;
  // INVALID_ARGUMENT for an id of the wrong size.
  static StatusOr<std::shared_ptr<NcclKvLink>> Open(NcclRole role, const std::string& unique_id,
                                                    const NcclLinkOptions& options);
  ~NcclKvLink();
  NcclKvLink(const NcclKvLink&) = delete;
  NcclKvLink& operator=(const NcclKvLink&) = delete;

  bool ready() const;
  // OK once ready; UNAVAILABLE when setup failed or `timeout_seconds` passed.
  Status WaitReady(double timeout_seconds);
  // OK while usable; otherwise the UNAVAILABLE that ended it.
  Status health() const;
  // Fails every transfer and aborts the communicator. Idempotent.
  void Abort(const std::string& reason);

  // Sender: the next transfer (sequence numbers 0, 1, ... in call order) of
  // tokens [first_token, seq_len) of `cache`, which must stay alive until
  // Finish returns. UNAVAILABLE when the link is not ready or has failed.
  // The receiver starts it with the same range.
  StatusOr<std::unique_ptr<Transfer>> StartSend(const DeviceKvCache* cache, int seq_len,
                                                NcclKvSplit split = NcclKvSplit::kPerHead, int first_token = 0);
  // Receiver: transfer `seq` (from the sender's header) into `cache`; its
  // receives are posted once every earlier transfer's are. Every sequence
  // number the sender announces must be started here (or the link aborted).
  StatusOr<std::unique_ptr<Transfer>> StartRecv(DeviceKvCache* cache, int seq_len, uint64_t seq,
                                                NcclKvSplit split = NcclKvSplit::kPerHead, int first_token = 0);
  // Receiver into something other than a contiguous cache (the batched
  // decode's KV pages): every layer of the `num_layers` lands in `staging`
  // (one layer, capacity >= seq_len), and `after_layer(layer, stream)` is
  // queued on the link's stream right behind that layer's receives (a scatter
  // into the pages); the stream's order keeps the next layer's receives from
  // overwriting the staging before it has been read. A layer counts as
  // arrived once its after_layer work is done.
  using AfterLayer = std::function<cudaError_t(int layer, cudaStream_t stream)>;
  StatusOr<std::unique_ptr<Transfer>> StartRecvStaged(DeviceKvCache* staging, int num_layers, int seq_len, uint64_t seq,
                                                      AfterLayer after_layer, int first_token = 0);

  const NcclLinkOptions& options() const { return options_; }
  NcclRole role() const { return role_; }

  class Transfer {
   public:
    ~Transfer();  // an unfinished transfer aborts the link
    uint64_t seq() const { return seq_; }
    // Sender: layer `layer` (0, 1, ... in order) is computed, or will be once
    // `ready` (an event on the compute stream of the cache's device; null:
    // already) completes. Never blocks on the transfer.
    Status SendLayer(int layer, cudaEvent_t ready = nullptr);
    // Receiver: the sender says layer `layer` is on its way; from now on it
    // must arrive within the stall timeout.
    void NoteLayerSent(int layer);
    // Waits until every layer has arrived (receiver) or left (sender); a
    // sender whose layers were not all handed over aborts the link.
    // UNAVAILABLE naming the peer on any failure.
    // `timeout_seconds` > 0 bounds the wait (then the link is aborted).
    StatusOr<NcclTransferStats> Finish(double timeout_seconds = 0.0);

   private:
    friend class NcclKvLink;
    Transfer(std::shared_ptr<NcclKvLink> link, uint64_t seq) : link_(std::move(link)), seq_(seq) {}
    std::shared_ptr<NcclKvLink> link_;
    uint64_t seq_;
    bool finished_ = false;
  };

 private:
  using Clock = std::chrono::steady_clock;
  enum class State { kJoining, kReady, kFailed };

  struct Layer {
    cudaEvent_t ready = nullptr;  // sender: compute done (not owned)
    cudaEvent_t done = nullptr;  // recorded after the layer's calls (owned by the link's pool)
    bool handed = false;  // sender: SendLayer; receiver: NoteLayerSent or posted
    bool announced = false;  // receiver: NoteLayerSent came
    bool issued = false;
    bool completed = false;
  };
  struct Xfer {
    uint64_t seq = 0;
    const DeviceKvCache* src = nullptr;
    DeviceKvCache* dst = nullptr;
    int first = 0;  // tokens [first, seq_len) of each layer move
    int seq_len = 0;
    NcclKvSplit split = NcclKvSplit::kPerHead;
    AfterLayer after_layer;  // staged receive: every layer lands in dst's layer 0
    std::vector<Layer> layers;
    int handed = 0, issued = 0, completed = 0;
    bool abandoned = false;
    Status status;
    bool done = false;
    Clock::time_point first_issue{}, last_complete{};
    int64_t bytes = 0;
  };

  NcclKvLink(NcclRole role, const NcclLinkOptions& options);
  void Run();  // the worker thread
  void FailLocked(const std::string& why);  // records the failure; the worker aborts
  void AbortCommunicator();  // worker only, without the lock
  Status IssueLayer(const Xfer& x, int layer, cudaEvent_t ready, cudaEvent_t done);  // worker, no lock
  bool PollProgressLocked();  // worker: completions and stalls; true while work is in flight
  StatusOr<std::unique_ptr<Transfer>> Start(const DeviceKvCache* src, DeviceKvCache* dst, int first_token, int seq_len,
                                            uint64_t seq, NcclKvSplit split, int num_layers = 0,
                                            AfterLayer after_layer = nullptr);
  Status FinishTransfer(uint64_t seq, double timeout_seconds, NcclTransferStats* stats);
  Xfer* FindLocked(uint64_t seq);
  std::string Peer() const;

  const NcclRole role_;
  const NcclLinkOptions options_;
  const Clock::time_point opened_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // wakes the worker
  std::condition_variable changed_;  // wakes waiters (ready, transfers)
  State state_ = State::kJoining;
  Status failure_;
  bool stop_ = false;
  bool aborted_ = false;  // the communicator is gone
  uint64_t next_send_seq_ = 0;
  uint64_t issue_seq_ = 0;  // the transfer whose calls are issued next
  std::map<uint64_t, std::unique_ptr<Xfer>> xfers_;  // by sequence number
  std::vector<cudaEvent_t> event_pool_;  // worker only
  std::optional<Clock::time_point> stall_since_;  // the oldest ready layer waiting on the peer
  std::atomic<bool> abort_requested_{false};  // read by the worker inside NCCL polling loops
  // Receiver: when the sender first said a layer was on its way (steady
  // clock ticks; 0: not yet). From then on the connection, which needs the
  // sender's first group, gets the stall timeout instead of the setup one.
  std::atomic<Clock::rep> first_announced_{0};
  bool connected_ = false;  // worker only: a group went through (the GPUs are connected)
  bool kernels_stopped_ = true;  // worker only: the stream drained after the abort
  std::thread worker_;
};

}  // namespace seer
