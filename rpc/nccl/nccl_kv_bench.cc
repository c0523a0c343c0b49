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
//   seer-nccl-kv-bench [--lengths 8192,32768,131072] [--layers 32] [--repeats 3]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

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

int Main(int argc, char** argv) {
  std::vector<int> lengths = {8192, 32768, 131072};
  int layers = 32, repeats = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--lengths")) lengths = Ints(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--layers")) layers = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--repeats")) repeats = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: %s [--lengths 8192,32768,131072] [--layers 32] [--repeats 3]\n", argv[0]);
      return 2;
    }
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
  std::printf("| tokens | split | KV GB | best ms | GB/s | all transfers verified |\n|---|---|---|---|---|---|\n");
  for (const bool whole : {false, true}) {
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
      std::fprintf(stderr, "link: %s\n", link.ok() ? (*link)->health().ToString().c_str()
                                                   : link.status().ToString().c_str());
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
  return 0;
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--nccl-peer") return seer::nccl_test::RunPeer(argc, argv);
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  return seer::Main(argc, argv);
}
