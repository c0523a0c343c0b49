// seer-nccl-kv-bench: how fast the NCCL KV link (nccl_kv_link.h) moves a
// Llama-3.1-8B-shaped KV cache (32 layers x 8 KV heads x head_dim 128, bf16)
// from this process on GPU 0 to a child process on GPU 1, for a few prompt
// lengths, with the protocol's split (per head, K then V, into a decode cache
// of larger capacity) next to the whole-layer split (2 calls a layer, equal
// capacities: what a staging copy would buy at best). Every transfer is
// checked element by element at the receiver. Layers are handed over all at
// once (no prefill compute), so this is the transport alone. A program that
// prints a table.
//
// With --prefill LEN:MODE,... it also runs the CUDA engine (8B shape, random
// weights and gates) on GPU 0 and sends each layer as the engine hands it to
// its observer, as seer-prefill will: the time from the prefill's start to the
// last layer delivered, next to the same prefill with an observer that sends
// nothing (what the engine costs inside the service) and with none.
//
//   seer-nccl-kv-bench [--lengths 8192,32768,131072] [--layers 32] [--repeats 3]
//                      [--prefill 32768:dense,32768:nz_ratio=0.1,131072:nz_ratio=0.1] [--transport 0|1]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "base/version.h"
#include "bench/llama_shape.h"
#include "engine/cuda/cuda_engine.h"
#include "engine/engine.h"
#include "engine/model/sparsity.h"
#include "rpc/nccl/kv_test_pattern.h"
#include "rpc/nccl/nccl_kv_link.h"
#include "rpc/nccl/nccl_test_peer.h"

namespace seer {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<int> Ints(const char* s) {
  std::vector<int> out;
  for (const char* p = s; *p;) {
    out.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return out;
}

// Sends each finished layer over the link, as the prefill service will.
class LayerSender final : public PrefillObserver {
 public:
  explicit LayerSender(NcclKvLink::Transfer* xfer) : xfer_(xfer) {}
  Status OnLayerDone(const LayerDone& done) override {
    return xfer_ != nullptr ? xfer_->SendLayer(done.layer) : OkStatus();
  }

 private:
  NcclKvLink::Transfer* xfer_;
};

int PrefillOverlap(const std::string& spec, int layers) {
  struct Run {
    int len;
    std::string mode;
  };
  std::vector<Run> runs;
  for (const std::string& item : [&] {
         std::vector<std::string> v;
         size_t a = 0;
         while (a <= spec.size()) {
           const size_t b = std::min(spec.find(',', a), spec.size());
           if (b > a) v.push_back(spec.substr(a, b - a));
           a = b + 1;
         }
         return v;
       }()) {
    const size_t colon = item.find(':');
    runs.push_back(
        {std::atoi(item.substr(0, colon).c_str()), colon == std::string::npos ? "dense" : item.substr(colon + 1)});
  }
  RandomEngineOptions eo;
  eo.seed = 20240601;
  eo.with_gates = true;
  eo.gate_config.block_size = 64;
  eo.gate_config.hidden = 128;
  cudaSetDevice(0);
  auto engine = CreateRandomCudaEngine(Llama31_8B(layers), eo);
  if (!engine.ok()) {
    std::fprintf(stderr, "engine: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  auto id = NewNcclUniqueId();
  nccl_test::PeerConfig pc;
  pc.role = "recv";
  pc.device = 1;
  pc.unique_id_hex = nccl_test::Hex(*id);
  pc.layers = layers;
  pc.seq_lens.clear();
  for (const Run& r : runs) pc.seq_lens.push_back(r.len);
  pc.extra_capacity = 128;  // the decode worker's room for new tokens
  pc.stall_seconds = 30;
  std::string err;
  auto peer = nccl_test::PeerProcess::Start(pc, &err);
  NcclLinkOptions o;
  o.device = 0;
  o.peer = "the benchmark's decode side on GPU 1";
  o.stall_timeout_seconds = 30;
  auto link = NcclKvLink::Open(NcclRole::kSender, *id, o);
  if (!peer || !link.ok() || !(*link)->WaitReady(60).ok() || !peer->Expect("ready", 60)) {
    std::fprintf(stderr, "link: %s %s\n", err.c_str(), link.ok() ? (*link)->health().ToString().c_str() : "");
    return 1;
  }
  std::vector<int32_t> ids(131072);
  uint64_t x = 88172645463325252ull;
  for (int32_t& v : ids) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = static_cast<int32_t>(x % 128256);
  }
  auto prefill = [&](int len, const SparsityConfig& sp, PrefillObserver* obs, NcclKvLink::Transfer** xfer_out,
                     std::unique_ptr<KvCache>* keep) -> double {
    auto cache = (*engine)->NewCache(len);
    if (!cache.ok()) return -1;
    std::unique_ptr<NcclKvLink::Transfer> xfer;
    if (xfer_out != nullptr) {
      auto t = (*link)->StartSend(static_cast<DeviceKvCache*>(cache->get()), len);
      if (!t.ok()) return -1;
      xfer = std::move(t).value();
      *xfer_out = xfer.get();
    }
    PrefillOptions po;
    po.sparsity = sp;
    LayerSender sender(xfer.get());
    const Clock::time_point start = Clock::now();
    auto r = (*engine)->Prefill(std::span<const int32_t>(ids.data(), len), po, cache->get(),
                                obs != nullptr ? obs : (xfer ? &sender : nullptr));
    if (!r.ok()) return -1;
    if (xfer) {
      auto st = xfer->Finish(120);
      if (!st.ok()) {
        std::fprintf(stderr, "transfer: %s\n", st.status().ToString().c_str());
        return -1;
      }
    }
    *keep = std::move(cache).value();
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
  {  // warm-up
    std::unique_ptr<KvCache> keep;
    prefill(4096, {}, nullptr, nullptr, &keep);
  }
  std::printf("\nNCCL KV during the prefill, 8B shape (%d layers, random weights and gates) on GPU 0 -> GPU 1\n",
              layers);
  std::printf(
      "| tokens | sparsity | prefill, no observer ms | prefill, observer (no transfer) ms | prefill + NCCL, "
      "last layer delivered ms | ratio to the observer run | receiver verified |\n"
      "|---|---|---|---|---|---|---|\n");
  size_t t = 0;
  for (const Run& r : runs) {
    auto sp = ParseSparsity(r.mode);
    if (!sp.ok()) {
      std::fprintf(stderr, "%s\n", sp.status().ToString().c_str());
      return 2;
    }
    struct Noop final : PrefillObserver {
      Status OnLayerDone(const LayerDone&) override { return OkStatus(); }
    } noop;
    std::unique_ptr<KvCache> keep;
    const double bare = r.len <= 32768 ? prefill(r.len, *sp, nullptr, nullptr, &keep) : -1;
    keep.reset();
    const double observed = prefill(r.len, *sp, &noop, nullptr, &keep);
    keep.reset();
    NcclKvLink::Transfer* xfer = nullptr;
    const double sent = prefill(r.len, *sp, nullptr, &xfer, &keep);
    keep.reset();
    // The receiver's check is of the pattern; here the bytes are the model's,
    // so only its transfer status counts.
    auto done = peer->Expect("done " + std::to_string(t), 60);
    auto verified = peer->Expect("verified " + std::to_string(t), 60);
    ++t;
    std::printf("| %d | %s | %.1f | %.1f | %.1f | %.3f | %s |\n", r.len, r.mode.c_str(), bare * 1e3, observed * 1e3,
                sent * 1e3, sent / observed, done && done->rfind("done", 0) == 0 && verified ? "transfer ok" : "NO");
    std::fflush(stdout);
  }
  peer->Wait(30);
  return 0;
}

constexpr char kUsage[] =
    "usage: seer-nccl-kv-bench [--lengths 8192,32768,131072] [--layers 32] [--repeats 3]\n"
    "                          [--prefill LEN:MODE,...] [--transport 0|1]\n";

constexpr char kHelp[] =
    "How fast the NCCL KV link moves a Llama-3.1-8B-shaped KV cache (8 KV heads x head_dim\n"
    "128, bf16) from GPU 0 to a child process on GPU 1, every transfer checked element by\n"
    "element at the receiver. Needs two GPUs.\n"
    "\n"
    "  --lengths LIST        prompt lengths for the transport table\n"
    "  --layers N            layers (32 is the 8B shape)\n"
    "  --repeats N           transfers per cell; the best is reported\n"
    "  --prefill LEN:MODE,.  also run the CUDA engine's prefill on GPU 0 and send each layer\n"
    "                        as it is made: prefill start to last layer delivered, beside the\n"
    "                        same prefill without sending (MODE: dense, nz_ratio=R, ...)\n"
    "  --transport 0|1       the transport table (default 1)\n";

int Main(int argc, char** argv) {
  std::vector<int> lengths = {8192, 32768, 131072};
  int layers = 32, repeats = 3;
  std::string prefill;
  bool transport = true;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag != "--lengths" && flag != "--layers" && flag != "--repeats" && flag != "--prefill" &&
        flag != "--transport") {
      std::fprintf(stderr, "%sunknown flag: %s (--help explains)\n", kUsage, flag.c_str());
      return 2;
    }
    if (i + 1 == argc) {
      std::fprintf(stderr, "%s%s needs a value (--help explains)\n", kUsage, flag.c_str());
      return 2;
    }
    const char* value = argv[i + 1];
    if (flag == "--lengths")
      lengths = Ints(value);
    else if (flag == "--layers")
      layers = std::atoi(value);
    else if (flag == "--repeats")
      repeats = std::atoi(value);
    else if (flag == "--prefill")
      prefill = value;
    else
      transport = std::atoi(value) != 0;
  }
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 2) {
    std::printf("seer-nccl-kv-bench: needs two GPUs (found %d)\n", gpus);
    return 1;
  }
  cudaSetDevice(0);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const int heads = 8, dim = 128;
  std::printf("NCCL KV link, GPU 0 -> GPU 1 (%s), NCCL %d, %d layers x %d KV heads x head_dim %d, bf16, best of %d\n",
              prop.name, NcclVersion(), layers, heads, dim, repeats);
  if (transport)
    std::printf("| tokens | split | KV GB | best ms | GB/s | all transfers verified |\n|---|---|---|---|---|---|\n");
  for (const bool whole : {false, true}) {
    if (!transport) break;
    auto id = NewNcclUniqueId();
    if (!id.ok()) {
      std::fprintf(stderr, "%s\n", id.status().ToString().c_str());
      return 1;
    }
    nccl_test::PeerConfig pc;
    pc.role = "recv";
    pc.device = 1;
    pc.unique_id_hex = nccl_test::Hex(*id);
    pc.layers = layers;
    pc.heads = heads;
    pc.head_dim = dim;
    pc.seq_lens.clear();
    for (int L : lengths)
      for (int r = 0; r < repeats; ++r) pc.seq_lens.push_back(L);
    pc.extra_capacity = whole ? 0 : 128;
    pc.whole = whole;
    pc.stall_seconds = 20;
    pc.salt = whole ? 5000 : 1000;
    std::string err;
    auto peer = nccl_test::PeerProcess::Start(pc, &err);
    if (!peer) {
      std::fprintf(stderr, "peer: %s\n", err.c_str());
      return 1;
    }
    NcclLinkOptions o;
    o.device = 0;
    o.peer = "the benchmark's receiver on GPU 1";
    o.stall_timeout_seconds = 20;
    auto link = NcclKvLink::Open(NcclRole::kSender, *id, o);
    if (!link.ok() || !(*link)->WaitReady(60).ok() || !peer->Expect("ready", 60)) {
      std::fprintf(stderr, "link: %s\n",
                   link.ok() ? (*link)->health().ToString().c_str() : link.status().ToString().c_str());
      return 1;
    }
    size_t t = 0;
    for (int L : lengths) {
      auto cache = DeviceKvCache::Create(layers, heads, dim, L);
      if (!cache.ok()) {
        std::fprintf(stderr, "%s\n", cache.status().ToString().c_str());
        return 1;
      }
      double best = 1e30;
      int64_t bytes = 0;
      bool verified = true;
      for (int r = 0; r < repeats; ++r, ++t) {
        nccl_test::FillPattern(cache->get(), L, pc.salt + static_cast<uint32_t>(t));
        const Clock::time_point start = Clock::now();
        auto xfer = (*link)->StartSend(cache->get(), L, whole ? NcclKvSplit::kWhole : NcclKvSplit::kPerHead);
        if (!xfer.ok()) {
          std::fprintf(stderr, "%s\n", xfer.status().ToString().c_str());
          return 1;
        }
        for (int layer = 0; layer < layers; ++layer) (void)(*xfer)->SendLayer(layer);
        auto stats = (*xfer)->Finish(120);
        const double s = std::chrono::duration<double>(Clock::now() - start).count();
        if (!stats.ok()) {
          std::fprintf(stderr, "%s\n", stats.status().ToString().c_str());
          return 1;
        }
        bytes = stats->bytes;
        best = std::min(best, s);
        auto v = peer->Expect("verified " + std::to_string(t), 120);
        verified = verified && v && *v == "verified " + std::to_string(t) + " 0";
      }
      std::printf("| %d | %s | %.2f | %.2f | %.1f | %s |\n", L, whole ? "whole layer (2 calls)" : "per head (16 calls)",
                  bytes / 1e9, best * 1e3, bytes / best / 1e9, verified ? "yes" : "NO");
      std::fflush(stdout);
    }
    peer->Wait(60);
  }
  if (!prefill.empty()) return PrefillOverlap(prefill, layers);
  return 0;
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-nccl-kv-bench")) return 0;
  if (seer::PrintHelpIfAsked(argc, argv, seer::kUsage, seer::kHelp)) return 0;
  if (argc > 1 && std::string(argv[1]) == "--nccl-peer") return seer::nccl_test::RunPeer(argc, argv);
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  return seer::Main(argc, argv);
}
