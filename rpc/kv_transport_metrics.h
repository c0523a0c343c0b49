// The Prometheus metrics of KV transfers, for both servers (docs/SERVICE.md,
// "Metrics"; docs/KV_TRANSPORT.md). Header-only so that rpc/ does not link
// prometheus-cpp; server/ constructs one KvTransportMetrics on each server's
// registry beside PrefillMetrics / DecodeMetrics (server/common/metrics.*):
//
//   seer-prefill:  KvTransportMetrics kv(*registry, KvSide::kSend);
//   seer-decode:   KvTransportMetrics kv(*registry, KvSide::kReceive);
//
// The names are a contract, like the existing ones. Labels:
//   transport  "grpc" | "nccl"                 (KvTransportLabel)
//   wire       "bf16" | "f32" | "f16" | "fp8"  (the encoding on the wire)
//   side       "send" (seer-prefill) | "receive" (seer-decode)
//   reason     (failures) "peer_lost" | "timeout" | "aborted" | "protocol" | "cancelled"
//   offered    (fallbacks) the transport asked for and not used
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>
#include <vector>

namespace seer {

enum class KvSide { kSend, kReceive };

inline const char* KvTransportLabel(bool nccl) { return nccl ? "nccl" : "grpc"; }

// Every metric's name and help, in one place.
struct KvTransportMetricNames {
  static constexpr const char* kTransferSeconds = "seer_kv_transfer_seconds";
  static constexpr const char* kTransferSecondsHelp =
      "Duration of a request's KV transfer, from its first layer handed to the transport to its last layer "
      "delivered (nccl) or written (grpc), by transport, wire encoding and side.";
  static constexpr const char* kTransferBytes = "seer_kv_transfer_bytes_total";
  static constexpr const char* kTransferBytesHelp =
      "Bytes the KV transports moved (K, V and fp8 scales), by transport, wire encoding and side.";
  static constexpr const char* kTransfers = "seer_kv_transfers_total";
  static constexpr const char* kTransfersHelp = "KV transfers completed, by transport, wire encoding and side.";
  static constexpr const char* kFailures = "seer_kv_transfer_failures_total";
  static constexpr const char* kFailuresHelp =
      "KV transfers that failed, by transport, side and reason (peer_lost, timeout, aborted, setup, protocol, "
      "cancelled).";
  static constexpr const char* kBlocked = "seer_kv_transport_blocked_seconds";
  static constexpr const char* kBlockedHelp =
      "Per prefill, the time its compute waited on the KV transport (a full stream buffer, NCCL sends still in "
      "flight at the end), by transport.";
  static constexpr const char* kInflight = "seer_kv_transfers_inflight";
  static constexpr const char* kInflightHelp = "KV transfers started and not finished, by transport.";
  static constexpr const char* kFallbacks = "seer_kv_transport_fallbacks_total";
  static constexpr const char* kFallbacksHelp =
      "Requests that offered or asked for a transport or encoding the prefill did not use, by what was offered "
      "(nccl, fp8) and why.";
  static constexpr const char* kLinks = "seer_kv_nccl_links";
  static constexpr const char* kLinksHelp = "NCCL KV links this process holds, by state (joining, ready).";
};

class KvTransportMetrics {
 public:
  KvTransportMetrics(prometheus::Registry& r, KvSide side)
      : side_(side == KvSide::kSend ? "send" : "receive"),
        seconds_(prometheus::BuildHistogram()
                     .Name(KvTransportMetricNames::kTransferSeconds)
                     .Help(KvTransportMetricNames::kTransferSecondsHelp)
                     .Register(r)),
        bytes_(prometheus::BuildCounter()
                   .Name(KvTransportMetricNames::kTransferBytes)
                   .Help(KvTransportMetricNames::kTransferBytesHelp)
                   .Register(r)),
        transfers_(prometheus::BuildCounter()
                       .Name(KvTransportMetricNames::kTransfers)
                       .Help(KvTransportMetricNames::kTransfersHelp)
                       .Register(r)),
        failures_(prometheus::BuildCounter()
                      .Name(KvTransportMetricNames::kFailures)
                      .Help(KvTransportMetricNames::kFailuresHelp)
                      .Register(r)),
        blocked_(prometheus::BuildHistogram()
                     .Name(KvTransportMetricNames::kBlocked)
                     .Help(KvTransportMetricNames::kBlockedHelp)
                     .Register(r)),
        inflight_(prometheus::BuildGauge()
                      .Name(KvTransportMetricNames::kInflight)
                      .Help(KvTransportMetricNames::kInflightHelp)
                      .Register(r)),
        fallbacks_(prometheus::BuildCounter()
                       .Name(KvTransportMetricNames::kFallbacks)
                       .Help(KvTransportMetricNames::kFallbacksHelp)
                       .Register(r)),
        links_(prometheus::BuildGauge()
                   .Name(KvTransportMetricNames::kLinks)
                   .Help(KvTransportMetricNames::kLinksHelp)
                   .Register(r)) {
    // Every transport's series exist from the start, at 0.
    for (const char* t : {"grpc", "nccl"}) {
      inflight_.Add({{"transport", t}, {"side", side_}});
      failures_.Add({{"transport", t}, {"side", side_}, {"reason", "peer_lost"}});
    }
    links_.Add({{"state", "joining"}});
    links_.Add({{"state", "ready"}});
  }

  // A transfer starts: the in-flight gauge goes up until Finished or Failed.
  void Started(const std::string& transport) { inflight_.Add({{"transport", transport}, {"side", side_}}).Increment(); }
  void Finished(const std::string& transport, const std::string& wire, double seconds, double bytes) {
    const prometheus::Labels l{{"transport", transport}, {"wire", wire}, {"side", side_}};
    seconds_.Add(l, Buckets()).Observe(seconds);
    bytes_.Add(l).Increment(bytes);
    transfers_.Add(l).Increment();
    inflight_.Add({{"transport", transport}, {"side", side_}}).Decrement();
  }
  void Failed(const std::string& transport, const std::string& reason) {
    failures_.Add({{"transport", transport}, {"side", side_}, {"reason", reason}}).Increment();
    inflight_.Add({{"transport", transport}, {"side", side_}}).Decrement();
  }
  // seer-prefill only.
  void Blocked(const std::string& transport, double seconds) {
    blocked_.Add({{"transport", transport}}, Buckets()).Observe(seconds);
  }
  void Fallback(const std::string& offered, const std::string& reason) {
    fallbacks_.Add({{"offered", offered}, {"reason", reason}}).Increment();
  }
  prometheus::Gauge& links(bool ready) { return links_.Add({{"state", ready ? "ready" : "joining"}}); }

  // The servers' time buckets (server/common/metrics.cc LatencyBuckets),
  // down to 0.1 ms: a layer over NVLink takes about a millisecond.
  static std::vector<double> Buckets() {
    return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5,    1,       2.5,    5,     10,     25,    50,   100,   250,  600};
  }

 private:
  const std::string side_;
  prometheus::Family<prometheus::Histogram>& seconds_;
  prometheus::Family<prometheus::Counter>& bytes_;
  prometheus::Family<prometheus::Counter>& transfers_;
  prometheus::Family<prometheus::Counter>& failures_;
  prometheus::Family<prometheus::Histogram>& blocked_;
  prometheus::Family<prometheus::Gauge>& inflight_;
  prometheus::Family<prometheus::Counter>& fallbacks_;
  prometheus::Family<prometheus::Gauge>& links_;
};

}  // namespace seer
