// The KV transport metrics (rpc/kv_transport_metrics.h) as a scrape shows
// them: the contract's names with their labels, every transport's in-flight
// gauge present at 0 from the start and back at 0 after a finished and a
// failed transfer, bytes and transfers counted per transport and wire.
#include "rpc/kv_transport_metrics.h"

#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <string>

namespace seer {
namespace {

std::string Scrape(prometheus::Registry& r) { return prometheus::TextSerializer().Serialize(r.Collect()); }

TEST(KvTransportMetrics, TheContractsNamesAndLabels) {
  prometheus::Registry r;
  KvTransportMetrics m(r, KvSide::kSend);
  std::string text = Scrape(r);
  EXPECT_NE(text.find("seer_kv_transfers_inflight{side=\"send\",transport=\"nccl\"} 0"), std::string::npos) << text;
  EXPECT_NE(text.find("seer_kv_transfers_inflight{side=\"send\",transport=\"grpc\"} 0"), std::string::npos);
  m.Started("nccl");
  m.Started("grpc");
  EXPECT_NE(Scrape(r).find("seer_kv_transfers_inflight{side=\"send\",transport=\"nccl\"} 1"), std::string::npos);
  m.Finished("nccl", "bf16", 0.02, 4.0e9);
  m.Failed("grpc", "peer_lost");
  m.Blocked("nccl", 0.001);
  m.Fallback("nccl", "same_gpu");
  m.links(true).Set(1);
  text = Scrape(r);
  for (const char* want : {"seer_kv_transfers_inflight{side=\"send\",transport=\"nccl\"} 0",
                           "seer_kv_transfers_inflight{side=\"send\",transport=\"grpc\"} 0",
                           "seer_kv_transfer_bytes_total{side=\"send\",transport=\"nccl\",wire=\"bf16\"} 4000000000",
                           "seer_kv_transfers_total{side=\"send\",transport=\"nccl\",wire=\"bf16\"} 1",
                           "seer_kv_transfer_seconds_count{side=\"send\",transport=\"nccl\",wire=\"bf16\"} 1",
                           "seer_kv_transfer_failures_total{reason=\"peer_lost\",side=\"send\",transport=\"grpc\"} 1",
                           "seer_kv_transport_blocked_seconds_count{transport=\"nccl\"} 1",
                           "seer_kv_transport_fallbacks_total{offered=\"nccl\",reason=\"same_gpu\"} 1",
                           "seer_kv_nccl_links{state=\"ready\"} 1"}) {
    EXPECT_NE(text.find(want), std::string::npos) << want << "\n" << text;
  }
}

}  // namespace
}  // namespace seer
