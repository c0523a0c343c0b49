// seer-decode: serves Generate. For each request it pulls the prompt's KV
// cache from a seer-prefill endpoint into the KV page pool, then decodes it
// in the running batch and streams the tokens and their text
// (docs/SERVICE.md); optionally an OpenAI-compatible HTTP API on --http.
#include <atomic>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "base/flags.h"
#include "base/strings.h"
#include "engine/engine.h"
#include "engine/model/model_config.h"
#include "rpc/channel_credentials.h"
#include "rpc/kv_handshake.h"
#include "rpc/requests.h"
#include "server/decode/decode_service.h"
#include "server/decode/openai_http.h"
#include "text/prompt.h"
#include "text/tokenizer.h"
#include "server/common/grpc_server.h"
#include "server/common/grpc_experiments.h"
#include "server/common/malloc_tuning.h"
#include "server/common/metrics.h"
#include "rpc/prefill_client.h"
#include "server/common/logging.h"
#include "server/common/serve.h"

namespace {

seer::JsonValue ReasonField(const std::string& why) {
  seer::JsonValue f = seer::JsonValue::Object();
  f.Set("reason", seer::JsonValue::String(why));
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  seer::BlockTerminationSignals();

  std::string listen = "0.0.0.0:50052";
  std::string metrics_address = "0.0.0.0:9091";
  std::string model, prefill, device = "auto";
  int64_t threads = 0, max_concurrent = 4, max_queue = 64, max_new_tokens = 4096, attempts = 0;
  int64_t default_new_tokens = 256, max_batch = 64, page_tokens = 64;
  std::string kv_pool = "auto", tokenizer_path, http, served_model_name;
  std::string tool_call_parser = "auto";
  int64_t max_buffered_bytes = int64_t{256} << 20;
  int64_t kv_prefix_cache_bytes = 0;
  double drain_seconds = 30.0, prefill_timeout = 0.0, write_stall_seconds = 20.0;
  seer::PrefillClientOptions client_options;
  bool retry_broken = false, cuda_graphs = true;
#ifdef SEER_HAVE_NCCL
  std::string kv_transports = "nccl,grpc";
#else
  std::string kv_transports = "grpc";
#endif
  int64_t kv_grpc_streams = 8;
  bool malloc_tuning = true;
  std::string grpc_experiments = seer::kBulkReceiveGrpcExperiments;

  seer::FlagSet flags("seer-decode --model DIR --prefill HOST:PORT[,HOST:PORT...] [flags]",
                      "Serves seer.v1.DecodeService (and its deprecated name seer.v1.Decode): for each Generate\n"
                      "request (token ids, or text or chat messages with a tokenizer), pulls the prompt's KV\n"
                      "cache from a seer-prefill endpoint into its pages of the KV pool, then decodes it in the\n"
                      "running batch (one step for every running request) and streams the tokens and their text.\n"
                      "Also serves grpc.health.v1.Health,\n"
                      "server reflection, Prometheus metrics on --metrics, and with --http an OpenAI-compatible\n"
                      "API (/v1/completions, /v1/chat/completions, /v1/models).\n"
                      "SIGTERM drains in-flight streams, then exits.");
  flags.String("listen", &listen, "gRPC address, host:port (port 0 picks a free port)");
  flags.String("metrics", &metrics_address, "/metrics address, host:port (port 0 picks one; empty: off)");
  flags.String("model", &model, "Hugging Face checkpoint directory, the same model as the prefill's (required)");
  flags.String("prefill", &prefill,
               "prefill endpoints: host:port[,host:port...] or dns:///name:port (required); picked "
               "round-robin, the next one tried when one is UNAVAILABLE");
  flags.String("device", &device, "cpu, cuda or auto (cuda when a GPU is present)");
  flags.Int("threads", &threads, "CPU engine threads (0: all cores)", 0, 4096);
  flags.Int("max-concurrent", &max_concurrent,
            "requests being prepared at once (tokenized, waiting for KV pages, fetching their KV); with "
            "--max-batch 0, requests decoding at once",
            1, 1024);
  flags.Int("max-queue", &max_queue, "requests waiting for a slot; beyond that RESOURCE_EXHAUSTED", 0, 100000);
  flags.Int("max-new-tokens", &max_new_tokens, "largest max_new_tokens a request may ask for", 1, 1 << 20);
  flags.Int("default-max-new-tokens", &default_new_tokens, "max_new_tokens of a request that gives none", 1, 1 << 20);
  flags.Int("max-batch", &max_batch,
            "requests one decode step runs together (continuous batching over the KV page pool); "
            "0: no batching, each request decodes alone in its --max-concurrent slot",
            0, 1024);
  flags.Int("kv-page-tokens", &page_tokens, "positions per KV page (a multiple of 16 in [16, 1024])", 16, 1024);
  flags.Bool("cuda-graphs", &cuda_graphs,
             "on the GPU, record a batched step's layers once as a CUDA graph and replay it while the batch "
             "size and its longest context's 256-position splits stay the same (false: launch every kernel)");
  flags.String("kv-pool", &kv_pool,
               "the KV page pool: a size (24GiB, 512MiB), a share of the memory free after the weights "
               "(70%), or auto (70% of the GPU's; 256MiB on the CPU). A request reserves the pages of its "
               "prompt and max_new_tokens before its KV moves, and waits while they are taken");
  flags.String("tokenizer", &tokenizer_path,
               "tokenizer.json, or a directory holding one, for text prompts and replies (default: the model "
               "directory's, when it has one; none: token ids only)");
  flags.String("http", &http,
               "serve the OpenAI-compatible HTTP API on host:port (port 0 picks one; empty: off). With --tls-cert "
               "it is HTTPS with the gRPC port's certificate (and needs client certificates under --tls-client-ca)");
  bool http_plaintext_with_tls = false;
  flags.Bool("http-plaintext-with-tls", &http_plaintext_with_tls,
             "serve --http as plaintext although the gRPC port has TLS (--tls-cert): TLS for HTTP is terminated "
             "in front of it (an Ingress, a mesh sidecar)");
  flags.String("tool-call-parser", &tool_call_parser,
               "how the OpenAI API reads a chat's tool calls when tool_choice is \"auto\" (the default with "
               "tools): llama3_json, hermes or mistral; auto: the format the tokenizer's chat template shows; "
               "none: refuse \"auto\" (\"required\" and named functions are guided, so need no parser)");
  flags.String("served-model-name", &served_model_name,
               "the model name the HTTP API lists and requests must give (default: the model directory's name)");
  flags.Int("kv-prefix-cache-bytes", &kv_prefix_cache_bytes,
            "KV pages of finished prompts to keep (whole 64-token blocks), so that a prompt that starts the same way "
            "(a chat's next turn, another question on one document) is sent only the rest of its KV by the prefill; "
            "dense and threshold selection, never nz_ratio or an fp8 transfer; the oldest go first, and whenever a "
            "request waits for pages (0: off; needs --max-batch > 0; docs/SERVICE.md, \"The KV prefix store\")");
  flags.Int("max-buffered-bytes", &max_buffered_bytes,
            "tokens all admitted streams may hold for their clients (each reserves max_new_tokens x 128 bytes); "
            "a request that would exceed it is RESOURCE_EXHAUSTED before any work");
  flags.Seconds("write-stall-seconds", &write_stall_seconds,
                "cancel a stream whose client reads nothing for this long (0: never)");
  flags.Int("prefill-attempts", &attempts,
            "Prefill calls per request when endpoints are UNAVAILABLE (0: one per endpoint, +2 per dns name)", 0, 1000);
  flags.Seconds("prefill-timeout", &prefill_timeout, "deadline of one Prefill call, seconds (0: none)");
  flags.Bool("prefill-retry-broken", &retry_broken,
             "when a prefill stream breaks (UNAVAILABLE) after it started, redo the prefill on another "
             "endpoint instead of failing the request");
  flags.Bool("prefill-prefix-affinity", &client_options.prefix_affinity,
             "send a prompt to the prefill endpoint that served its longest prefix lately (whole 64-token blocks), "
             "among those within one request of the least load, so that a chat's next turn finds its previous "
             "turn in that server's prefix store (seer-prefill --prefix-cache-bytes); off: the least loaded, "
             "round-robin among equals");
  flags.Seconds("prefill-connect-timeout", &client_options.connect_timeout_seconds,
                "seconds a connection attempt to a prefill endpoint (TCP and HTTP/2 handshake) may take");
  flags.Seconds("prefill-first-byte-timeout", &client_options.first_byte_timeout_seconds,
                "seconds a Prefill call may wait for its first message (the header, sent on admission) before the "
                "next endpoint is tried (0: no limit)");
  flags.Seconds("prefill-keepalive", &client_options.keepalive_seconds,
                "seconds between keepalive pings to a prefill endpoint while calls wait on it");
  flags.Seconds("prefill-keepalive-timeout", &client_options.keepalive_timeout_seconds,
                "seconds a keepalive ping may go unanswered before the connection is dropped");
  flags.Seconds("prefill-health-interval", &client_options.health_interval_seconds,
                "seconds between health checks of every prefill endpoint; health is NOT_SERVING while none "
                "serves (0: no checks)");
  flags.Seconds("prefill-health-timeout", &client_options.health_timeout_seconds,
                "seconds a prefill health check may take");
  flags.Seconds("drain-seconds", &drain_seconds, "on SIGTERM, how long in-flight streams get to finish");
  flags.String("kv-transports", &kv_transports,
               "KV transports offered to the prefill servers, grpc always among them: nccl,grpc (GPU to GPU when "
               "this worker's engine is CUDA and a prefill is CUDA on another GPU of this host; needs an NCCL "
               "build) or grpc (docs/KV_TRANSPORT.md)");
  flags.Int("kv-grpc-streams", &kv_grpc_streams,
            "gRPC streams read per request, the Prefill call and KvStream calls, each on a connection of its "
            "own (1 to 16; the prefill's --kv-grpc-streams caps it)");
  flags.Seconds("kv-nccl-stall-seconds", &client_options.nccl_stall_seconds,
                "an NCCL KV transfer whose announced layer makes no progress this long aborts its link");
  flags.Seconds("kv-nccl-setup-seconds", &client_options.nccl_setup_seconds,
                "an NCCL link that has not joined after this long is aborted");
  flags.Bool("malloc-tuning", &malloc_tuning,
             "one malloc arena, 32 MiB mmap and 1 GiB trim thresholds, so that gRPC's KV receive buffers are "
             "reused rather than faulted in and zeroed afresh for every transfer (docs/KV_TRANSPORT.md); "
             "MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or glibc.malloc tunables in the "
             "environment take precedence");
  flags.String("grpc-experiments", &grpc_experiments,
               "gRPC core experiments to turn on (GRPC_EXPERIMENTS, comma-separated; empty: none). The default "
               "makes a KV stream's reader wake once a frame's bytes are in rather than for every piece "
               "(docs/KV_TRANSPORT.md); GRPC_EXPERIMENTS in the environment takes precedence");
  seer::ClientTlsOptions prefill_tls;
  flags.String("prefill-tls-ca", &prefill_tls.ca,
               "PEM CA bundle that signed the prefill servers' certificates: call them over TLS");
  flags.String("prefill-tls-cert", &prefill_tls.cert,
               "PEM client certificate for the prefill servers (mutual TLS), with --prefill-tls-key");
  flags.String("prefill-tls-key", &prefill_tls.key, "PEM private key of --prefill-tls-cert");
  seer::CommonServerFlags common;
  common.Register(flags);
  if (seer::Status s = flags.Parse(argc, argv); !s.ok()) {
    std::fprintf(stderr, "seer-decode: %s\n\n%s", s.ToString().c_str(), flags.Help().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::printf("%s", flags.Help().c_str());
    return 0;
  }
  if (seer::Status s = flags.RefusePositional(); !s.ok()) {
    std::fprintf(stderr, "%s: %s (--help lists the flags)\n", "seer-decode", s.message().c_str());
    return 2;
  }
  if (common.version) {
    std::printf("%s\n", seer::VersionLine("seer-decode").c_str());
    return 0;
  }
  if (seer::Status s = common.Apply("seer-decode"); !s.ok()) {
    std::fprintf(stderr, "seer-decode: %s\n", s.ToString().c_str());
    return 2;
  }
  // Before the prefill client starts its threads (docs/KV_TRANSPORT.md).
  {
    seer::JsonValue fields = seer::JsonValue::Object();
    fields.Set("setting", seer::JsonValue::String(seer::EnableGrpcExperiments(grpc_experiments)));
    seer::LogEvent(seer::LogLevel::kInfo, "grpc_experiments", fields);
  }
  if (malloc_tuning) {
    seer::JsonValue fields = seer::JsonValue::Object();
    fields.Set("setting", seer::JsonValue::String(seer::TuneMallocForBulkReceive()));
    seer::LogEvent(seer::LogLevel::kInfo, "malloc", fields);
  }
  prefill_tls.reload_seconds = common.tls.reload_seconds;
  if (seer::Status s = seer::CheckClientTls(prefill_tls, "--prefill-tls-"); !s.ok()) {
    std::fprintf(stderr, "seer-decode: %s\n", s.ToString().c_str());
    return 2;
  }
  if (model.empty() || prefill.empty()) {
    std::fprintf(stderr, "seer-decode: --model and --prefill are required\n\n%s", flags.Help().c_str());
    return 2;
  }
  // What can be refused before the ports bind is refused now, with exit 2.
  if (std::string host; !http.empty()) {
    int port = 0;
    if (seer::Status s = seer::SplitHostPort(http, "--http", &host, &port); !s.ok()) {
      std::fprintf(stderr, "seer-decode: %s\n", s.message().c_str());
      return 2;
    }
  }
  if (tool_call_parser != "auto" && tool_call_parser != "none") {
    if (seer::Status s = seer::ToolCallFormatNamed(tool_call_parser).status(); !s.ok()) {
      std::fprintf(stderr, "seer-decode: --tool-call-parser: %s (or auto, none)\n", s.message().c_str());
      return 2;
    }
  }
  if (seer::Status s = seer::CheckDeviceName(device); !s.ok()) {
    std::fprintf(stderr, "seer-decode: --%s\n", s.message().c_str());
    return 2;
  }
  if (std::error_code ec;
      !tokenizer_path.empty() && tokenizer_path != "none" && !std::filesystem::exists(tokenizer_path, ec)) {
    std::fprintf(stderr, "seer-decode: --tokenizer: '%s' does not exist (\"none\": no tokenizer)\n",
                 tokenizer_path.c_str());
    return 2;
  }
  seer::DecodeServiceOptions options;
  options.max_concurrent = static_cast<int>(max_concurrent);
  options.max_queue = static_cast<int>(max_queue);
  options.max_new_tokens = static_cast<int>(max_new_tokens);
  // The default follows a smaller --max-new-tokens unless it was given.
  options.default_new_tokens = static_cast<int>(
      flags.WasSet("default-max-new-tokens") ? default_new_tokens : std::min(default_new_tokens, max_new_tokens));
  options.max_buffered_bytes = max_buffered_bytes;
  options.kv_prefix_cache_bytes = kv_prefix_cache_bytes;
  options.write_stall_seconds = write_stall_seconds;
  if (seer::Status s = seer::DecodeService::CheckOptions(options); !s.ok()) {
    std::fprintf(stderr, "seer-decode: %s\n", s.ToString().c_str());
    return 2;
  }
  seer::PagedDecodeOptions paged;
  paged.page_tokens = static_cast<int>(page_tokens);
  paged.max_batch = static_cast<int>(max_batch);
  paged.cuda_graphs = cuda_graphs;
  if (max_batch < 0 || max_batch > 1024 || page_tokens < 16 || page_tokens > 1024 || page_tokens % 16 != 0) {
    std::fprintf(
        stderr, "seer-decode: %s\n",
        max_batch < 0 || max_batch > 1024
            ? ("--max-batch: " + std::to_string(max_batch) + " is out of range [0, 1024]").c_str()
            : ("--kv-page-tokens: " + std::to_string(page_tokens) + " must be a multiple of 16 in [16, 1024]").c_str());
    return 2;
  }
  if (kv_prefix_cache_bytes > 0 && max_batch == 0) {
    std::fprintf(stderr,
                 "seer-decode: --kv-prefix-cache-bytes: held prompts live in the KV page pool, which --max-batch 0 "
                 "turns off; give --max-batch > 0 or --kv-prefix-cache-bytes 0\n");
    return 2;
  }
  if (!kv_pool.empty() && kv_pool.back() == '%') {
    char* end = nullptr;
    const double percent = std::strtod(kv_pool.c_str(), &end);
    if (end != kv_pool.c_str() + kv_pool.size() - 1 || !(percent > 0.0 && percent <= 100.0)) {
      std::fprintf(stderr, "seer-decode: --kv-pool: '%s' is not a share in (0%%, 100%%]\n", kv_pool.c_str());
      return 2;
    }
    paged.pool_fraction = percent / 100.0;
  } else if (kv_pool != "auto") {
    seer::StatusOr<int64_t> bytes = seer::ParseByteSize(kv_pool, "--kv-pool");
    if (!bytes.ok() || *bytes <= 0) {
      std::fprintf(stderr, "seer-decode: %s\n",
                   bytes.ok() ? "--kv-pool: must be more than 0 bytes" : bytes.status().ToString().c_str());
      return 2;
    }
    paged.pool_bytes = *bytes;
  }
  if (served_model_name.empty()) {
    served_model_name = std::filesystem::path(model).lexically_normal().filename().string();
    if (served_model_name.empty() || served_model_name == ".") {
      served_model_name = std::filesystem::path(model).lexically_normal().parent_path().filename().string();
    }
  }
  client_options.attempts = static_cast<int>(attempts);
  client_options.timeout_seconds = prefill_timeout;
  client_options.retry_broken_streams = retry_broken;
  client_options.credentials = seer::MakeChannelCredentials(prefill_tls);
  seer::StatusOr<seer::KvTransportSet> transports = seer::ParseKvTransports(kv_transports, "--kv-transports");
  if (!transports.ok()) {
    std::fprintf(stderr, "seer-decode: %s\n", transports.status().ToString().c_str());
    return 2;
  }
  client_options.kv_nccl = transports->nccl;
  client_options.kv_grpc_streams = static_cast<int>(std::clamp<int64_t>(kv_grpc_streams, -1, 1 << 20));
  seer::StatusOr<std::unique_ptr<seer::PrefillClient>> client = seer::PrefillClient::Create(prefill, client_options);
  if (!client.ok()) {
    std::fprintf(stderr, "seer-decode: %s\n", client.status().ToString().c_str());
    return 2;
  }

  // The receive limit is the largest valid request (docs/SERVICE.md,
  // "Limits"), which the model's config.json bounds; it is read before the
  // model so that the server binds at once.
  seer::StatusOr<seer::ModelConfig> model_config = seer::LoadModelConfig(model + "/config.json");
  if (!model_config.ok()) {
    std::fprintf(stderr, "seer-decode: --model: %s\n", model_config.status().ToString().c_str());
    return 2;
  }
  seer::RequestLimits limits;
  limits.max_prompt_tokens = model_config->max_position_embeddings;

  auto registry = std::make_shared<prometheus::Registry>();
  seer::DecodeMetrics metrics(*registry);
  seer::DecodeService service(options, client->get(), &metrics);
  std::unique_ptr<seer::Engine> engine;
  std::unique_ptr<seer::Tokenizer> tokenizer;
  std::unique_ptr<seer::GenerateBackend> http_backend;
  std::unique_ptr<seer::OpenAiHttpServer> http_server;
  std::atomic<bool> loaded{false};  // the tokenizer and engine are set (for /tokenize)

  seer::ServeConfig config;
  config.program = "seer-decode";
  config.listen = listen;
  config.metrics = metrics_address;
  config.drain_seconds = drain_seconds;
  config.max_receive_bytes = seer::ReceiveLimitBytes(seer::MaxRequestBytes(limits));
  config.tls = common.tls;
  config.metrics_tls = common.metrics_tls;
  config.services = {&service, service.legacy()};
  config.health_names = {"seer.v1.DecodeService", "seer.v1.Decode"};
  config.registry = registry;
  config.scrape_time = metrics.server.scrape_time;
  const seer::WorkQueue& queue = service.queue();
  config.hooks.request_id_prefix = "generate";
  // Requests preparing (holding a slot) plus those in the running batch.
  config.hooks.load = [&queue, &service] {
    return seer::ServerLoad{queue.running() + service.batch_running(), queue.waiting(), queue.workers(),
                            queue.max_waiting()};
  };
  config.hooks.count_unserved = [&metrics](grpc::StatusCode code) { metrics.CountRequest(code); };
  seer::AddStreamBudgetGauges(
      *metrics.server.scrape_time, [&service] { return service.buffered_bytes(); }, max_buffered_bytes);
  metrics.server.scrape_time->AddGauge("seer_decode_queued_requests",
                                       "Generate requests admitted and waiting for a slot (--max-queue bounds it).", {},
                                       [&queue] { return queue.waiting(); });
  metrics.server.scrape_time->AddGauge(
      "seer_decode_running_requests",
      "Generate requests decoding: in the running batch, or holding a slot with --max-batch 0.", {},
      [&queue, &service, max_batch] { return max_batch > 0 ? service.batch_running() : queue.running(); });
  metrics.server.scrape_time->AddGauge(
      "seer_decode_preparing_requests",
      "Generate requests holding a slot (--max-concurrent bounds it): tokenizing, waiting for KV pages, fetching "
      "their KV, or, with --max-batch 0, decoding.",
      {}, [&queue] { return queue.running(); });
  metrics.server.scrape_time->AddGauge("seer_decode_max_queue", "--max-queue: requests that may wait for a slot.", {},
                                       [&queue] { return queue.max_waiting(); });
  metrics.server.scrape_time->AddGauge("seer_decode_max_concurrent", "--max-concurrent: slots.", {},
                                       [&queue] { return queue.workers(); });
  config.load = [&]() -> seer::StatusOr<std::string> {
    seer::EngineOptions eo;
    eo.model_dir = model;
    eo.device = device;
    eo.threads = static_cast<int>(threads);
    // The tokenizer first: a bad one fails in a second, not after the weights.
    if (tokenizer_path != "none") {
      const bool given = !tokenizer_path.empty();
      const std::string where = given ? tokenizer_path : model;
      std::error_code ec;
      if (given || std::filesystem::exists(std::filesystem::path(model) / "tokenizer.json", ec)) {
        seer::StatusOr<std::unique_ptr<seer::Tokenizer>> loaded = seer::Tokenizer::Load(where);
        if (!loaded.ok()) return loaded.status().WithContext("--tokenizer");
        tokenizer = std::move(loaded).value();
        SEER_ASSIGN_OR_RETURN(std::vector<int32_t> ends, seer::EndOfTextIds(*tokenizer, model));
        service.SetTokenizer(tokenizer.get(), std::move(ends));
      }
    }
    SEER_ASSIGN_OR_RETURN(engine, seer::CreateEngine(eo));
    if (max_batch > 0) {
      if (kv_pool == "auto" && engine->device_name().rfind("cpu", 0) == 0) paged.pool_bytes = int64_t{256} << 20;
      if (kv_pool == "auto") paged.pool_fraction = 0.7;
      if (seer::Status s = engine->EnablePagedDecode(paged); !s.ok()) {
        return s.WithContext("batched decode (--max-batch 0 decodes each request alone)");
      }
    }
    SEER_RETURN_IF_ERROR(service.SetEngine(engine.get()));
    // Prefill servers of another checkpoint count as down from now on.
    (*client)->ExpectModel(engine->fingerprint());
    seer::AddDeviceMemoryGauges(*metrics.server.scrape_time, *engine);
    std::string batching = "decode unbatched (--max-batch 0)";
    if (const seer::PagePool* pool = engine->page_pool()) {
      metrics.server.kv_cache_capacity_bytes.Set(static_cast<double>(pool->layout().PageBytes()) * pool->num_pages());
      metrics.server.scrape_time->AddGauge("seer_kv_pages_total", "Pages of the KV page pool.", {},
                                           [pool] { return pool->num_pages(); });
      metrics.server.scrape_time->AddGauge("seer_kv_pages_used",
                                           "KV pages reserved by requests (prompt and new tokens, from their "
                                           "admission to their end).",
                                           {}, [pool] { return pool->used_pages(); });
      metrics.server.scrape_time->AddGauge("seer_kv_page_waiters",
                                           "Requests waiting for their KV pages (first come, first served).", {},
                                           [pool] { return pool->waiters(); });
      batching = "KV pool " + seer::FormatBytes(pool->layout().PageBytes() * pool->num_pages()) + " (" +
                 std::to_string(pool->num_pages()) + " pages of " + std::to_string(pool->layout().page_tokens) +
                 " positions), batches of up to " + std::to_string(engine->max_decode_batch());
    } else {
      SEER_ASSIGN_OR_RETURN(std::unique_ptr<seer::KvCache> probe, engine->NewCache(1));
      // Each running request holds a cache for its prompt and new tokens,
      // at most max_position_embeddings.
      metrics.server.kv_cache_capacity_bytes.Set(
          seer::KvCacheBytes(probe->layout(), max_concurrent * model_config->max_position_embeddings));
    }
    loaded.store(true, std::memory_order_release);
    return "model " + model + " on " + engine->device_name() + ", " + batching +
           (tokenizer ? ", with its tokenizer" : ", token ids only") + ", prefill " + prefill;
  };
  if (!http.empty()) {
    config.started = [&](seer::GrpcServer& server) -> seer::Status {
      http_backend = seer::MakeGrpcGenerateBackend(server.InProcessChannel());
      seer::OpenAiHttpOptions ho;
      ho.listen = http;
      ho.model_name = served_model_name;
      ho.max_request_bytes = static_cast<size_t>(config.max_receive_bytes);
      if (!http_plaintext_with_tls) ho.tls = common.tls;
      ho.registry = registry.get();
      ho.max_model_len = model_config->max_position_embeddings;
      ho.tool_call_parser = tool_call_parser;
      ho.tokenizer = [&]() -> seer::StatusOr<const seer::Tokenizer*> {
        if (!loaded.load(std::memory_order_acquire)) {
          return seer::Unavailable("seer-decode is still loading its model; retry shortly");
        }
        if (tokenizer == nullptr) {
          return seer::FailedPrecondition("seer-decode has no tokenizer (--tokenizer), so it takes token ids only");
        }
        return static_cast<const seer::Tokenizer*>(tokenizer.get());
      };
      SEER_ASSIGN_OR_RETURN(http_server, seer::OpenAiHttpServer::Start(ho, http_backend.get()));
      std::string host = http.substr(0, http.rfind(':'));
      std::printf("seer-decode http on %s:%d (OpenAI API%s, model \"%s\")\n", host.c_str(), http_server->port(),
                  ho.tls.enabled() ? " over TLS" : "", served_model_name.c_str());
      std::fflush(stdout);
      return seer::OkStatus();
    };
  }
  config.drain_first = [&](std::chrono::steady_clock::time_point deadline) {
    if (http_server != nullptr && !http_server->Drain(deadline)) {
      seer::LogEvent(seer::LogLevel::kWarn, "drain: --drain-seconds passed with HTTP requests still running; they end now");
    }
  };
  config.stop = [&] {
    service.Shutdown();
    http_server.reset();
  };
  config.drain_expired = [&] { service.DrainExpired(); };
  if (client_options.health_interval_seconds > 0) {
    seer::PrefillClient* prefill_client = client->get();
    config.watch_health = [prefill_client](std::function<void(bool)> set_serving) {
      auto was_serving = std::make_shared<bool>(true);
      prefill_client->WatchHealth([set_serving, was_serving](bool any, const std::string& why) {
        if (!any) {
          seer::LogEvent(seer::LogLevel::kError, "no prefill endpoint can serve: health NOT_SERVING",
                         ReasonField(why));
        } else if (!*was_serving) {
          seer::LogEvent(seer::LogLevel::kInfo, "a prefill endpoint serves again: health SERVING",
                         ReasonField(why));
        }
        *was_serving = any;
        set_serving(any);
      });
    };
  }
  return seer::Serve(config);
}
