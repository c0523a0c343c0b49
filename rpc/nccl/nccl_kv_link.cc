#include "rpc/nccl/nccl_kv_link.h"

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <utility>

namespace seer {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string NcclError(ncclResult_t r, ncclComm_t comm) {
  std::string s = ncclGetErrorString(r);
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && *last != '\0') s += std::string(" (") + last + ")";
  return s;
}

// The caller's current device is put back when this goes out of scope.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&saved_) != cudaSuccess) saved_ = -1;
    ok_ = cudaSetDevice(device) == cudaSuccess;
  }
  ~DeviceScope() {
    if (saved_ >= 0) cudaSetDevice(saved_);
  }
  bool ok() const { return ok_; }

 private:
  int saved_ = -1;
  bool ok_ = false;
};

}  // namespace

StatusOr<std::string> NewNcclUniqueId() {
  ncclUniqueId id;
  if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess)
    return Unavailable(std::string("ncclGetUniqueId: ") + ncclGetErrorString(r));
  return std::string(id.internal, sizeof(id.internal));
}

int NcclVersion() {
  int v = 0;
  ncclGetVersion(&v);
  return v;
}

StatusOr<std::string> CudaDeviceUuid(int device) {
  cudaDeviceProp prop{};
  if (cudaError_t e = cudaGetDeviceProperties(&prop, device); e != cudaSuccess)
    return FailedPrecondition("CUDA device " + std::to_string(device) + ": " + cudaGetErrorString(e));
  const auto* b = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
  char out[64];
  std::snprintf(out, sizeof(out), "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return std::string(out);
}

NcclKvLink::NcclKvLink(NcclRole role, const NcclLinkOptions& options)
    : role_(role), options_(options), opened_(Clock::now()) {}

StatusOr<std::shared_ptr<NcclKvLink>> NcclKvLink::Open(NcclRole role, const std::string& unique_id,
                                                       const NcclLinkOptions& options) {
  if (unique_id.size() != kNcclUniqueIdBytes)
    return InvalidArgument("NCCL unique id: " + std::to_string(unique_id.size()) + " bytes, expected " +
                           std::to_string(kNcclUniqueIdBytes));
  if (options.setup_timeout_seconds <= 0 || options.stall_timeout_seconds <= 0)
    return InvalidArgument("NCCL link: setup and stall timeouts must be positive");
  SEER_ASSIGN_OR_RETURN(std::string uuid, CudaDeviceUuid(options.device));
  if (!options.peer_gpu_uuid.empty() && options.peer_gpu_uuid == uuid)
    return FailedPrecondition("NCCL link to " + options.peer + ": the peer runs on this process's GPU (" + uuid +
                              "); NCCL does not run two ranks of one communicator on one GPU");
  // NVLink multicast: point-to-point needs none of it, and on shared hosts it
  // can take the GPUs out of service. Set before the first communicator.
  setenv("NCCL_NVLS_ENABLE", "0", 1);

  std::shared_ptr<NcclKvLink> link(new NcclKvLink(role, options));
  ncclUniqueId id;
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  {
    DeviceScope scope(options.device);
    if (!scope.ok()) return FailedPrecondition("NCCL link: cannot use CUDA device " + std::to_string(options.device));
    if (cudaError_t e = cudaStreamCreateWithFlags(&link->stream_, cudaStreamNonBlocking); e != cudaSuccess)
      return Unavailable(std::string("NCCL link: cudaStreamCreate: ") + cudaGetErrorString(e));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    config.commName = role == NcclRole::kSender ? "seer-kv-prefill" : "seer-kv-decode";
    const ncclResult_t r = ncclCommInitRankConfig(&link->comm_, 2, id, static_cast<int>(role), &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      cudaStreamDestroy(link->stream_);
      link->stream_ = nullptr;
      if (link->comm_ != nullptr) ncclCommAbort(link->comm_);
      link->comm_ = nullptr;
      return Unavailable("NCCL link to " + options.peer + ": ncclCommInitRankConfig: " + ncclGetErrorString(r));
    }
  }
  link->worker_ = std::thread([raw = link.get()] { raw->Run(); });
  return link;
}

NcclKvLink::~NcclKvLink() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    if (state_ != State::kFailed) FailLocked("the link was closed");
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

std::string NcclKvLink::Peer() const { return options_.peer.empty() ? std::string("the peer") : options_.peer; }

bool NcclKvLink::ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_ == State::kReady;
}

Status NcclKvLink::health() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_ == State::kFailed ? failure_ : OkStatus();
}

Status NcclKvLink::WaitReady(double timeout_seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  const bool settled = changed_.wait_for(lock, std::chrono::duration<double>(timeout_seconds),
                                         [&] { return state_ != State::kJoining; });
  if (!settled)
    return Unavailable("NCCL link to " + Peer() + ": not ready after " + std::to_string(timeout_seconds) + " s");
  return state_ == State::kReady ? OkStatus() : failure_;
}

void NcclKvLink::Abort(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == State::kFailed) return;
    FailLocked(reason);
  }
  cv_.notify_all();
}

void NcclKvLink::FailLocked(const std::string& why) {
  if (state_ == State::kFailed) return;
  state_ = State::kFailed;
  failure_ = Unavailable("NCCL KV link to " + Peer() + " failed: " + why);
  abort_requested_.store(true);
  changed_.notify_all();
}

NcclKvLink::Xfer* NcclKvLink::FindLocked(uint64_t seq) {
  auto it = xfers_.find(seq);
  return it == xfers_.end() ? nullptr : it->second.get();
}

StatusOr<std::unique_ptr<NcclKvLink::Transfer>> NcclKvLink::StartSend(const DeviceKvCache* cache, int seq_len,
                                                                      NcclKvSplit split, int first_token) {
  if (role_ != NcclRole::kSender) return FailedPrecondition("NCCL link: StartSend on the receiving side");
  return Start(cache, nullptr, first_token, seq_len, 0, split);
}

StatusOr<std::unique_ptr<NcclKvLink::Transfer>> NcclKvLink::StartRecv(DeviceKvCache* cache, int seq_len, uint64_t seq,
                                                                      NcclKvSplit split, int first_token) {
  if (role_ != NcclRole::kReceiver) return FailedPrecondition("NCCL link: StartRecv on the sending side");
  return Start(nullptr, cache, first_token, seq_len, seq, split);
}

StatusOr<std::unique_ptr<NcclKvLink::Transfer>> NcclKvLink::StartRecvStaged(DeviceKvCache* staging, int num_layers,
                                                                            int seq_len, uint64_t seq,
                                                                            AfterLayer after_layer, int first_token) {
  if (role_ != NcclRole::kReceiver) return FailedPrecondition("NCCL link: StartRecvStaged on the sending side");
  if (num_layers < 1 || after_layer == nullptr)
    return InvalidArgument("NCCL transfer: a staged receive needs num_layers >= 1 and an after_layer step");
  return Start(nullptr, staging, first_token, seq_len, seq, NcclKvSplit::kPerHead, num_layers, std::move(after_layer));
}

StatusOr<std::unique_ptr<NcclKvLink::Transfer>> NcclKvLink::Start(const DeviceKvCache* src, DeviceKvCache* dst,
                                                                  int first_token, int seq_len, uint64_t seq,
                                                                  NcclKvSplit split, int num_layers,
                                                                  AfterLayer after_layer) {
  const DeviceKvCache* cache = src != nullptr ? src : dst;
  if (cache == nullptr) return InvalidArgument("NCCL transfer: null KV cache");
  if (seq_len < 1 || seq_len > cache->capacity())
    return InvalidArgument("NCCL transfer: seq_len " + std::to_string(seq_len) + " is out of range [1, " +
                           std::to_string(cache->capacity()) + "] (the cache's capacity)");
  if (first_token < 0 || first_token >= seq_len)
    return InvalidArgument("NCCL transfer: first_token " + std::to_string(first_token) + " is out of range [0, " +
                           std::to_string(seq_len) + ")");
  if (split == NcclKvSplit::kWhole && (cache->capacity() != seq_len || first_token != 0))
    return InvalidArgument("NCCL transfer: a whole-layer split needs capacity == seq_len and first_token 0");
  auto x = std::make_unique<Xfer>();
  x->src = src;
  x->dst = dst;
  x->first = first_token;
  x->seq_len = seq_len;
  x->split = split;
  x->after_layer = std::move(after_layer);
  if (num_layers == 0) num_layers = cache->layout().num_layers;
  x->layers.resize(num_layers);
  x->bytes = int64_t{2} * num_layers * cache->layout().num_kv_heads * (seq_len - first_token) *
             cache->layout().head_dim * static_cast<int64_t>(sizeof(__nv_bfloat16));
  std::unique_lock<std::mutex> lock(mu_);
  if (state_ == State::kFailed) return failure_;
  if (state_ != State::kReady) return Unavailable("NCCL KV link to " + Peer() + " is not ready yet");
  if (role_ == NcclRole::kSender) {
    seq = next_send_seq_++;
  } else {
    if (seq < issue_seq_ || xfers_.count(seq) != 0)
      return InvalidArgument("NCCL transfer " + std::to_string(seq) + " was already started on this link");
    for (Layer& l : x->layers) l.handed = true;  // every receive is posted up front
    x->handed = static_cast<int>(x->layers.size());
  }
  x->seq = seq;
  xfers_[seq] = std::move(x);
  lock.unlock();
  cv_.notify_all();
  return std::unique_ptr<Transfer>(new Transfer(shared_from_this(), seq));
}

Status NcclKvLink::Transfer::SendLayer(int layer, cudaEvent_t ready) {
  NcclKvLink& l = *link_;
  {
    std::lock_guard<std::mutex> lock(l.mu_);
    Xfer* x = l.FindLocked(seq_);
    if (l.state_ == State::kFailed) return l.failure_;
    if (x == nullptr || l.role_ != NcclRole::kSender) return FailedPrecondition("NCCL transfer: SendLayer");
    if (layer != x->handed)
      return InvalidArgument("NCCL transfer: layer " + std::to_string(layer) + " handed over, expected " +
                             std::to_string(x->handed) + " (layers go in order)");
    x->layers[layer].ready = ready;
    x->layers[layer].handed = true;
    ++x->handed;
  }
  l.cv_.notify_all();
  return OkStatus();
}

void NcclKvLink::Transfer::NoteLayerSent(int layer) {
  NcclKvLink& l = *link_;
  std::lock_guard<std::mutex> lock(l.mu_);
  Xfer* x = l.FindLocked(seq_);
  if (x == nullptr) return;
  Clock::rep unset = 0;
  l.first_announced_.compare_exchange_strong(unset, Clock::now().time_since_epoch().count());
  // A layer on its way means every earlier one is too.
  for (int i = 0; i <= layer && i < static_cast<int>(x->layers.size()); ++i) x->layers[i].announced = true;
}

StatusOr<NcclTransferStats> NcclKvLink::Transfer::Finish(double timeout_seconds) {
  NcclTransferStats stats;
  const Status s = link_->FinishTransfer(seq_, timeout_seconds, &stats);
  finished_ = true;
  if (!s.ok()) return s;
  return stats;
}

NcclKvLink::Transfer::~Transfer() {
  if (!finished_) (void)link_->FinishTransfer(seq_, 0.0, nullptr);
}

Status NcclKvLink::FinishTransfer(uint64_t seq, double timeout_seconds, NcclTransferStats* stats) {
  const Clock::time_point start = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  Xfer* x = FindLocked(seq);
  if (x == nullptr) return FailedPrecondition("NCCL transfer " + std::to_string(seq) + " is not on this link");
  if (role_ == NcclRole::kSender && x->handed < static_cast<int>(x->layers.size()) && !x->done) {
    // The receiver has posted every layer: the two sides can only be put back
    // in step by starting over.
    FailLocked("transfer " + std::to_string(seq) + " ended after " + std::to_string(x->handed) + " of " +
               std::to_string(x->layers.size()) + " layers");
    cv_.notify_all();
  }
  auto done = [&] { return x->done; };
  if (timeout_seconds > 0) {
    if (!changed_.wait_for(lock, std::chrono::duration<double>(timeout_seconds), done)) {
      FailLocked("transfer " + std::to_string(seq) + " took longer than " + std::to_string(timeout_seconds) + " s");
      cv_.notify_all();
    }
  }
  changed_.wait(lock, done);
  const Status status = x->status;
  if (stats != nullptr) {
    stats->bytes = x->bytes;
    stats->seconds = x->completed > 0 ? std::chrono::duration<double>(x->last_complete - x->first_issue).count() : 0.0;
    stats->waited_seconds = Since(start);
  }
  for (Layer& l : x->layers)
    if (l.done != nullptr) event_pool_.push_back(l.done);
  xfers_.erase(seq);
  return status;
}

Status NcclKvLink::IssueLayer(const Xfer& x, int layer, cudaEvent_t ready, cudaEvent_t done) {
  if (ready != nullptr) {
    if (cudaError_t e = cudaStreamWaitEvent(stream_, ready, 0); e != cudaSuccess)
      return Unavailable(std::string("cudaStreamWaitEvent: ") + cudaGetErrorString(e));
  }
  const DeviceKvCache* cache = x.src != nullptr ? x.src : x.dst;
  const KvLayout& lay = cache->layout();
  const size_t row = static_cast<size_t>(x.seq_len - x.first) * lay.head_dim;  // elements of one head
  const size_t pitch = static_cast<size_t>(cache->capacity()) * lay.head_dim;
  const int peer = role_ == NcclRole::kSender ? 1 : 0;
  ncclResult_t r = ncclGroupStart();
  for (int which = 0; which < 2 && (r == ncclSuccess || r == ncclInProgress); ++which) {
    const int at = x.after_layer != nullptr ? 0 : layer;  // a staged receive reuses layer 0
    __nv_bfloat16* base = which == 0 ? cache->k(at) : cache->v(at);
    const int calls = x.split == NcclKvSplit::kPerHead ? lay.num_kv_heads : 1;
    const size_t count = (x.split == NcclKvSplit::kPerHead ? row : row * lay.num_kv_heads) * sizeof(__nv_bfloat16);
    for (int h = 0; h < calls && (r == ncclSuccess || r == ncclInProgress); ++h) {
      void* p = base + h * pitch + static_cast<size_t>(x.first) * lay.head_dim;
      r = role_ == NcclRole::kSender ? ncclSend(p, count, ncclUint8, peer, comm_, stream_)
                                     : ncclRecv(p, count, ncclUint8, peer, comm_, stream_);
    }
  }
  const ncclResult_t end = ncclGroupEnd();
  if (r != ncclSuccess && r != ncclInProgress) return Unavailable("ncclSend/ncclRecv: " + NcclError(r, comm_));
  r = end;
  // Non-blocking: the group may still be being enqueued. The first one also
  // connects the two GPUs (which needs the peer's first group): it gets the
  // setup timeout, later ones the stall timeout.
  // Once the sender has announced a layer (receiver), its side of the
  // connection is under way, and a connection still not up after the stall
  // timeout means a dead or stuck peer (NCCL itself retries for about a minute).
  const Clock::time_point t0 = Clock::now();
  const double bound = connected_ ? options_.stall_timeout_seconds : options_.setup_timeout_seconds;
  while (r == ncclInProgress) {
    if (abort_requested_.load()) return Unavailable("aborted");
    if (Since(t0) > bound)
      return Unavailable(std::string(connected_ ? "enqueueing a layer" : "connecting to the peer") + " took over " +
                         std::to_string(bound) + " s");
    if (const Clock::rep announced = first_announced_.load();
        !connected_ && announced != 0 &&
        Since(Clock::time_point(Clock::duration(announced))) > options_.stall_timeout_seconds) {
      return Unavailable("connecting to the peer: not up " + std::to_string(options_.stall_timeout_seconds) +
                         " s after it announced a layer");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
    ncclCommGetAsyncError(comm_, &r);
  }
  if (r != ncclSuccess) return Unavailable("ncclGroupEnd: " + NcclError(r, comm_));
  if (x.after_layer != nullptr) {
    if (cudaError_t e = x.after_layer(layer, stream_); e != cudaSuccess)
      return Unavailable(std::string("landing the layer: ") + cudaGetErrorString(e));
  }
  if (cudaError_t e = cudaEventRecord(done, stream_); e != cudaSuccess)
    return Unavailable(std::string("cudaEventRecord: ") + cudaGetErrorString(e));
  connected_ = true;
  return OkStatus();
}

bool NcclKvLink::PollProgressLocked() {
  bool in_flight = false;
  bool oldest_seen = false;
  for (auto& [seq, xp] : xfers_) {
    Xfer& x = *xp;
    while (x.completed < x.issued) {
      Layer& l = x.layers[x.completed];
      const cudaError_t q = cudaEventQuery(l.done);
      if (q == cudaErrorNotReady) break;
      if (q != cudaSuccess) {
        FailLocked(std::string("layer ") + std::to_string(x.completed) + ": " + cudaGetErrorString(q));
        return false;
      }
      l.completed = true;
      ++x.completed;
      x.last_complete = Clock::now();
      stall_since_.reset();  // progress
    }
    if (!x.done && x.completed == static_cast<int>(x.layers.size())) {
      x.done = true;
      changed_.notify_all();
    }
    if (x.completed < x.issued) {
      in_flight = true;
      if (!oldest_seen) {
        // The oldest layer in flight: is the peer what it waits for?
        oldest_seen = true;
        const Layer& l = x.layers[x.completed];
        const bool ready =
            role_ == NcclRole::kSender ? (l.ready == nullptr || cudaEventQuery(l.ready) == cudaSuccess) : l.announced;
        if (!ready) {
          stall_since_.reset();
        } else if (!stall_since_) {
          stall_since_ = Clock::now();
        } else if (Since(*stall_since_) > options_.stall_timeout_seconds) {
          FailLocked("layer " + std::to_string(x.completed) + " of transfer " + std::to_string(x.seq) +
                     " made no progress for " + std::to_string(options_.stall_timeout_seconds) +
                     " s (the peer is gone or stuck)");
          return false;
        }
      }
    }
  }
  return in_flight;
}

void NcclKvLink::AbortCommunicator() {
  if (comm_ != nullptr) {
    // ncclCommAbort first raises the flag NCCL's kernels poll, then frees the
    // communicator. Within a node the freeing can wait for the peer to abort
    // too (NVIDIA/nccl#863), which a dead peer never does (seen on the
    // two-GPU host: the call did not return), so it runs on a thread of its
    // own; a link whose peer died leaves that thread behind.
    std::thread([comm = comm_] { ncclCommAbort(comm); }).detach();
    comm_ = nullptr;
  }
  // What must not outlive a failed transfer is the kernels: they read or
  // write its cache. Wait (bounded) for the link's stream to drain.
  const double bound = std::max(5.0, options_.stall_timeout_seconds);
  const Clock::time_point t0 = Clock::now();
  while (stream_ != nullptr && cudaStreamQuery(stream_) == cudaErrorNotReady && Since(t0) < bound)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  kernels_stopped_ = stream_ == nullptr || cudaStreamQuery(stream_) != cudaErrorNotReady;
  cudaGetLastError();
}

void NcclKvLink::Run() {
  cudaSetDevice(options_.device);
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (state_ == State::kFailed) {
      if (!aborted_) {
        lock.unlock();
        AbortCommunicator();
        lock.lock();
        aborted_ = true;
        if (!kernels_stopped_)
          failure_ = Unavailable(std::string(failure_.message()) +
                                 "; NCCL's kernels were still running after the abort, so the KV caches of the "
                                 "transfers in flight must not be reused");
        for (auto& [seq, x] : xfers_) {
          if (!x->done) {
            x->done = true;
            x->status = failure_;
          }
        }
        changed_.notify_all();
      }
      if (stop_) break;
      cv_.wait(lock, [&] {
        if (stop_) return true;
        for (auto& [seq, x] : xfers_)
          if (!x->done) return true;
        return false;
      });
      for (auto& [seq, x] : xfers_) {
        if (!x->done) {
          x->done = true;
          x->status = failure_;
        }
      }
      changed_.notify_all();
      continue;
    }

    if (state_ == State::kJoining) {
      ncclResult_t r = ncclInProgress;
      ncclCommGetAsyncError(comm_, &r);
      if (r == ncclSuccess) {
        state_ = State::kReady;
        changed_.notify_all();
      } else if (r != ncclInProgress) {
        FailLocked("joining the communicator: " + NcclError(r, comm_));
      } else if (Since(opened_) > options_.setup_timeout_seconds) {
        FailLocked("the peer did not join within " + std::to_string(options_.setup_timeout_seconds) + " s");
      } else {
        cv_.wait_for(lock, std::chrono::milliseconds(1));
      }
      continue;
    }

    // Ready: issue the next layer of the transfer whose turn it is.
    Xfer* x = FindLocked(issue_seq_);
    if (x != nullptr && x->issued < static_cast<int>(x->layers.size()) && x->layers[x->issued].handed) {
      const int layer = x->issued;
      Layer& l = x->layers[layer];
      if (event_pool_.empty()) {
        cudaEvent_t e = nullptr;
        if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) {
          FailLocked("cudaEventCreate failed");
          continue;
        }
        event_pool_.push_back(e);
      }
      l.done = event_pool_.back();
      event_pool_.pop_back();
      const cudaEvent_t ready = l.ready;
      lock.unlock();
      const Status s = IssueLayer(*x, layer, ready, l.done);
      lock.lock();
      if (!s.ok()) {
        FailLocked("issuing layer " + std::to_string(layer) + " of transfer " + std::to_string(x->seq) + ": " +
                   s.message());
        continue;
      }
      if (x->issued == 0) x->first_issue = Clock::now();
      l.issued = true;
      if (++x->issued == static_cast<int>(x->layers.size())) ++issue_seq_;
      continue;
    }

    const bool in_flight = PollProgressLocked();
    if (state_ == State::kFailed) continue;
    if (in_flight) {
      lock.unlock();
      ncclResult_t r = ncclSuccess;
      ncclCommGetAsyncError(comm_, &r);
      lock.lock();
      if (r != ncclSuccess && r != ncclInProgress) {
        FailLocked("NCCL reported " + NcclError(r, comm_));
        continue;
      }
    }
    if (stop_) {
      FailLocked("the link was closed");
      continue;
    }
    if (in_flight) {
      cv_.wait_for(lock, std::chrono::microseconds(200));
    } else {
      cv_.wait(lock, [&] {
        if (stop_ || state_ == State::kFailed) return true;
        Xfer* next = FindLocked(issue_seq_);
        return next != nullptr && next->issued < static_cast<int>(next->layers.size()) &&
               next->layers[next->issued].handed;
      });
    }
  }
  // Exit: the communicator is aborted; free the events.
  for (auto& [seq, x] : xfers_)
    for (Layer& l : x->layers)
      if (l.done != nullptr) event_pool_.push_back(l.done);
  for (cudaEvent_t e : event_pool_) cudaEventDestroy(e);
  event_pool_.clear();
}

}  // namespace seer
