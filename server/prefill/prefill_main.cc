// seer-prefill: loads a model and its SeerAttention gates and serves Prefill,
// streaming each prompt's KV cache layer by layer (docs/SERVICE.md).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "base/flags.h"
#include "engine/engine.h"
#include "engine/model/model_config.h"
#include "rpc/prefill_client.h"
#include "rpc/requests.h"
#include "server/common/grpc_server.h"
#include "server/common/metrics.h"
#include "server/prefill/prefill_service.h"
#include "server/common/serve.h"

int main(int argc, char** argv) {
  seer::BlockTerminationSignals();

  std::string listen = "0.0.0.0:50051";
  std::string metrics_address = "0.0.0.0:9090";
  std::string model, gates, device = "auto";
  int64_t threads = 0, max_concurrent = 1, max_queue = 16, max_tokens = 0;
  int64_t chunk_bytes = int64_t{4} << 20, stream_buffer_bytes = int64_t{64} << 20;
  int64_t max_buffered_bytes = int64_t{8} << 30;
  int64_t prefix_cache_bytes = 0;
  double drain_seconds = 30.0, write_stall_seconds = 20.0;
#ifdef SEER_HAVE_NCCL
  std::string kv_transports = "nccl,grpc";
#else
  std::string kv_transports = "grpc";
#endif
  int64_t kv_grpc_streams = 8;
  bool allow_kv_fp8 = false, warm_up = true;
  double kv_nccl_stall_seconds = 10.0, kv_nccl_setup_seconds = 30.0;

  seer::FlagSet flags(
      "seer-prefill --model DIR [--gates DIR] [flags]",
      "Serves seer.v1.PrefillService (and its deprecated name seer.v1.Prefill): runs the (gated,\n"
      "block-sparse) prefill of a prompt and streams its KV cache layer by layer. Also serves grpc.health.v1.Health and server reflection, and\n"
      "Prometheus metrics on --metrics. SIGTERM drains in-flight streams, then exits.");
  flags.String("listen", &listen, "gRPC address, host:port (port 0 picks a free port)");
  flags.String("metrics", &metrics_address, "/metrics address, host:port (port 0 picks one; empty: off)");
  flags.String("model", &model, "Hugging Face checkpoint directory (required)");
  flags.String("gates", &gates, "SeerAttention gate directory; without it every prefill is dense");
  flags.String("device", &device, "cpu, cuda or auto (cuda when a GPU is present)");
  flags.Int("threads", &threads, "CPU engine threads (0: all cores)", 0, 4096);
  flags.Int("max-concurrent", &max_concurrent, "prefills computing at once", 1, 1024);
  flags.Int("max-queue", &max_queue, "prefills waiting for a slot; beyond that RESOURCE_EXHAUSTED", 0, 100000);
  flags.Int("chunk-bytes", &chunk_bytes,
            "largest KvChunk message, bytes (65536 to 67108864, the largest message a decode worker accepts)");
  flags.Int("stream-buffer-bytes", &stream_buffer_bytes,
            "KV bytes a stream keeps copied into messages ahead of the network; the rest waits in its KV cache");
  flags.Int("max-buffered-bytes", &max_buffered_bytes,
            "KV all admitted streams may hold for their clients (KV caches and messages); a request that would "
            "exceed it is RESOURCE_EXHAUSTED before any work");
  flags.Int("prefix-cache-bytes", &prefix_cache_bytes,
            "memory for finished prompts' KV caches, kept so that a prompt that starts the same way (a chat's next "
            "turn, another question on one document) computes only the rest, as its whole prefill would: dense and "
            "threshold selection, never nz_ratio; the oldest go first, and when a new prompt needs the GPU's memory "
            "(0: off; docs/SERVICE.md, \"The prefix store\")");
  flags.Seconds("write-stall-seconds", &write_stall_seconds,
                "cancel a stream whose client reads nothing for this long (0: never)");
  flags.Int("max-tokens", &max_tokens, "longest prompt served (0: the model's max_position_embeddings)");
  flags.Bool("warm-up", &warm_up,
             "before serving, time the prefill's large GEMMs for prompts up to --max-tokens, so that the first "
             "prompt of each size does not wait for it (CUDA, prompts of 16,384 tokens or more; docs/GPU.md)");
  flags.Seconds("drain-seconds", &drain_seconds, "on SIGTERM, how long in-flight streams get to finish");
  flags.String("kv-transports", &kv_transports,
               "KV transports offered to decode workers, grpc always among them: nccl,grpc (GPU to GPU when the "
               "decode worker is CUDA on another GPU of this host; needs an NCCL build and a CUDA engine, else "
               "gRPC) or grpc (docs/KV_TRANSPORT.md)");
  flags.Int("kv-grpc-streams", &kv_grpc_streams,
            "gRPC streams one KV transfer may use, the Prefill call and KvStream calls (1 to 16; the decode "
            "worker's offer caps it)");
  flags.Bool("allow-kv-fp8", &allow_kv_fp8,
             "send K/V as fp8 E4M3 with a scale per 64 tokens when a request asks (kv_wire); off: such requests "
             "get the cache's own type, and the reason in their summary");
  flags.Seconds("kv-nccl-stall-seconds", &kv_nccl_stall_seconds,
                "an NCCL KV transfer whose next layer makes no progress this long aborts its link");
  flags.Seconds("kv-nccl-setup-seconds", &kv_nccl_setup_seconds,
                "an NCCL link that has not joined after this long is aborted (the next offer starts another)");
  seer::CommonServerFlags common;
  common.Register(flags);
  if (seer::Status s = flags.Parse(argc, argv); !s.ok()) {
    std::fprintf(stderr, "seer-prefill: %s\n\n%s", s.ToString().c_str(), flags.Help().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::printf("%s", flags.Help().c_str());
    return 0;
  }
  if (seer::Status s = flags.RefusePositional(); !s.ok()) {
    std::fprintf(stderr, "%s: %s (--help lists the flags)\n", "seer-prefill", s.message().c_str());
    return 2;
  }
  if (common.version) {
    std::printf("%s\n", seer::VersionLine("seer-prefill").c_str());
    return 0;
  }
  if (seer::Status s = common.Apply("seer-prefill"); !s.ok()) {
    std::fprintf(stderr, "seer-prefill: %s\n", s.ToString().c_str());
    return 2;
  }
  if (model.empty()) {
    std::fprintf(stderr, "seer-prefill: --model is required\n\n%s", flags.Help().c_str());
    return 2;
  }
  // What can be refused before the ports bind is refused now, with exit 2.
  if (seer::Status s = seer::CheckDeviceName(device); !s.ok()) {
    std::fprintf(stderr, "seer-prefill: --%s\n", s.message().c_str());
    return 2;
  }
  if (std::error_code ec; !gates.empty() && !std::filesystem::is_directory(gates, ec)) {
    std::fprintf(stderr, "seer-prefill: --gates: '%s' is not a directory\n", gates.c_str());
    return 2;
  }
  seer::PrefillServiceOptions options;
  options.max_concurrent = static_cast<int>(max_concurrent);
  options.max_queue = static_cast<int>(max_queue);
  options.chunk_bytes = chunk_bytes;
  options.stream_buffer_bytes = stream_buffer_bytes;
  options.max_buffered_bytes = max_buffered_bytes;
  options.prefix_cache_bytes = prefix_cache_bytes;
  options.write_stall_seconds = write_stall_seconds;
  options.max_tokens = max_tokens;
  seer::StatusOr<seer::KvTransportSet> transports = seer::ParseKvTransports(kv_transports, "--kv-transports");
  if (!transports.ok()) {
    std::fprintf(stderr, "seer-prefill: %s\n", transports.status().ToString().c_str());
    return 2;
  }
  options.kv_nccl = transports->nccl;
  options.kv_grpc_streams = static_cast<int>(std::clamp<int64_t>(kv_grpc_streams, -1, 1 << 20));
  options.allow_kv_fp8 = allow_kv_fp8;
  options.nccl_stall_seconds = kv_nccl_stall_seconds;
  options.nccl_setup_seconds = kv_nccl_setup_seconds;
  if (seer::Status s = seer::PrefillService::CheckOptions(options); !s.ok()) {
    std::fprintf(stderr, "seer-prefill: %s\n", s.ToString().c_str());
    return 2;
  }

  // The receive limit is the largest valid request (docs/SERVICE.md,
  // "Limits"), which the model's config.json bounds; it is read before the
  // model so that the server binds at once.
  seer::StatusOr<seer::ModelConfig> model_config = seer::LoadModelConfig(model + "/config.json");
  if (!model_config.ok()) {
    std::fprintf(stderr, "seer-prefill: --model: %s\n", model_config.status().ToString().c_str());
    return 2;
  }
  seer::RequestLimits limits;
  limits.max_prompt_tokens = max_tokens > 0 ? std::min<int64_t>(max_tokens, model_config->max_position_embeddings)
                                            : model_config->max_position_embeddings;

  auto registry = std::make_shared<prometheus::Registry>();
  seer::PrefillMetrics metrics(*registry);
  seer::PrefillService service(options, &metrics);
  std::unique_ptr<seer::Engine> engine;

  seer::ServeConfig config;
  config.program = "seer-prefill";
  config.listen = listen;
  config.metrics = metrics_address;
  config.drain_seconds = drain_seconds;
  config.max_receive_bytes = seer::ReceiveLimitBytes(seer::MaxRequestBytes(limits));
  config.tls = common.tls;
  config.metrics_tls = common.metrics_tls;
  config.services = {&service, service.legacy()};
  config.health_names = {"seer.v1.PrefillService", "seer.v1.Prefill"};
  config.registry = registry;
  config.scrape_time = metrics.server.scrape_time;
  const seer::WorkQueue& queue = service.queue();
  config.hooks.request_id_prefix = "prefill";
  config.hooks.load = [&queue] {
    return seer::ServerLoad{queue.running(), queue.waiting(), queue.workers(), queue.max_waiting()};
  };
  config.hooks.count_unserved = [&metrics](grpc::StatusCode code) { metrics.CountRequest(code); };
  seer::AddStreamBudgetGauges(
      *metrics.server.scrape_time, [&service] { return service.buffered_bytes(); }, max_buffered_bytes);
  metrics.server.scrape_time->AddGauge("seer_prefill_queued_requests",
                                       "Prefill requests admitted and waiting for a slot (--max-queue bounds it).", {},
                                       [&queue] { return queue.waiting(); });
  metrics.server.scrape_time->AddGauge("seer_prefill_running_requests",
                                       "Prefill requests holding a slot (--max-concurrent bounds it).", {},
                                       [&queue] { return queue.running(); });
  metrics.server.scrape_time->AddGauge("seer_prefill_max_queue", "--max-queue: requests that may wait for a slot.", {},
                                       [&queue] { return queue.max_waiting(); });
  metrics.server.scrape_time->AddGauge("seer_prefill_max_concurrent", "--max-concurrent: slots.", {},
                                       [&queue] { return queue.workers(); });
  seer::GrpcServer* grpc_server = nullptr;
  config.started = [&](seer::GrpcServer& server) {
    grpc_server = &server;
    return seer::OkStatus();
  };
  config.load = [&]() -> seer::StatusOr<std::string> {
    seer::EngineOptions eo;
    eo.model_dir = model;
    eo.gates_dir = gates;
    eo.device = device;
    eo.threads = static_cast<int>(threads);
    SEER_ASSIGN_OR_RETURN(engine, seer::CreateEngine(eo));
    std::string warmed;
    if (warm_up) {
      SEER_ASSIGN_OR_RETURN(warmed, engine->WarmUp(static_cast<int>(limits.max_prompt_tokens)));
    }
    SEER_RETURN_IF_ERROR(service.SetEngine(engine.get()));
    // Decode workers check that this server serves their checkpoint by
    // asking for its health under the model's name.
    if (grpc_server != nullptr) grpc_server->AddHealthName(seer::PrefillModelHealthName(engine->fingerprint()));
    seer::AddDeviceMemoryGauges(*metrics.server.scrape_time, *engine);
    // A stream's KV cache outlives its --max-concurrent slot until its client
    // has read it; what bounds them all is the streams' budget.
    metrics.server.kv_cache_capacity_bytes.Set(static_cast<double>(max_buffered_bytes));
    return "model " + model + (gates.empty() ? std::string(" (dense, no gates)") : " with gates " + gates) + " on " +
           engine->device_name() + (warmed.empty() ? std::string() : "; " + warmed);
  };
  config.stop = [&] { service.Shutdown(); };
  config.drain_expired = [&] { service.DrainExpired(); };
  return seer::Serve(config);
}
