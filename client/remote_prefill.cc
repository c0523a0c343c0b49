// `seer prefill`: calls Prefill on a seer-prefill server, assembles the KV
// stream as a decode worker would, and can dump it with `seer run --dump`'s
// tensor names.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "client/remote_common.h"
#include "client/token_ids.h"
#include "base/clock.h"
#include "base/flags.h"
#include "base/json.h"
#include "engine/kv/kv_cache.h"
#include "formats/safetensors.h"
#include "seer/v1/seer.grpc.pb.h"
#include "rpc/kv_assembler.h"

namespace seer {
namespace {

// A header this large would be a broken or hostile server, not a model.
constexpr int kMaxLayers = 4096;
constexpr int kMaxKvHeads = 4096;
constexpr int kMaxHeadDim = 16384;
// The most KV (K and V, float32, all layers) the CLI assembles in memory.
constexpr int64_t kMaxKvBytes = int64_t{64} << 30;

Status WriteKvDump(const std::string& path, const HostKvCache& cache, int seq_len, const v1::PrefillSummary& summary) {
  SafetensorsWriter writer;
  const int vocab = summary.last_logits_size();
  // The last position's logits: the last row of `seer run --dump`'s logits.
  writer.AddF32("logits", {1, vocab}, std::vector<float>(summary.last_logits().begin(), summary.last_logits().end()));
  const KvLayout& layout = cache.layout();
  const std::vector<int64_t> shape = {layout.num_kv_heads, seq_len, layout.head_dim};
  const size_t elems = static_cast<size_t>(layout.num_kv_heads) * seq_len * layout.head_dim;
  for (int layer = 0; layer < layout.num_layers; ++layer) {
    const std::string prefix = "layers." + std::to_string(layer) + ".";
    // The cache holds exactly seq_len tokens, so its storage is
    // [kv_heads, seq_len, head_dim] already.
    writer.Add(prefix + "k", DType::kF32, shape, cache.k(layer), elems * sizeof(float));
    writer.Add(prefix + "v", DType::kF32, shape, cache.v(layer), elems * sizeof(float));
  }
  writer.SetMetadata("source", "seer prefill");
  return writer.WriteFile(path).WithContext("--dump");
}

}  // namespace

int RunPrefillCommand(int argc, char** argv) {
  using namespace remote;
  const char* cmd = "prefill";
  CommonFlags common;
  std::string dump;
  int64_t max_chunk_bytes = 0;
  FlagSet flags("seer prefill --addr HOST:PORT --ids IDS [--dump OUT.safetensors] [flags]",
                "Calls seer.v1.PrefillService/Prefill on a seer-prefill server, checks and assembles the KV stream,\n"
                "and prints its size, speed and density. --dump writes the KV cache with the tensor names of\n"
                "`seer run --dump`: layers.{i}.k / layers.{i}.v F32 [kv_heads, L, head_dim] (K after RoPE),\n"
                "and logits F32 [1, vocab] (the last position).\n"
                "Exit codes: 0 success, 1 the call failed (the message has the gRPC status code), 2 usage.");
  common.Register(flags, "seer-prefill");
  flags.Int("max-chunk-bytes", &max_chunk_bytes, "largest KV chunk message to ask for (0: the server's)");
  flags.String("dump", &dump, "write the KV cache and last logits to this safetensors file");
  CommonRequest common_request;
  if (int rc = ParseCommonFlags(flags, argc, argv, cmd, "seer-prefill", common, &common_request); rc >= 0) return rc;
  const bool json = common.json;

  v1::PrefillRequest request;
  request.mutable_token_ids()->Assign(common_request.ids.begin(), common_request.ids.end());
  request.set_request_id(common.request_id);
  *request.mutable_sparsity() = common_request.sparsity;
  request.set_max_chunk_bytes(max_chunk_bytes);
  const int seq_len = request.token_ids_size();

  auto stub = v1::PrefillService::NewStub(MakeChannel(common.addr, common.tls, int64_t{1} << 30));
  grpc::ClientContext context;
  const Clock::time_point start = Clock::now();
  SetDeadline(context, common.timeout);
  std::unique_ptr<grpc::ClientReader<v1::PrefillResponse>> reader = stub->Prefill(&context, request);

  std::unique_ptr<HostKvCache> cache;
  std::unique_ptr<KvAssembler> assembler;
  v1::LayoutHeader header;
  v1::PrefillSummary summary;
  bool have_summary = false;
  double first_chunk_ms = -1.0;
  Status protocol;
  v1::PrefillResponse msg;
  while (protocol.ok() && reader->Read(&msg)) {
    if (have_summary) {
      protocol = DataLoss("a message after the summary");
    } else if (msg.has_header()) {
      if (assembler) {
        protocol = DataLoss("a second layout header");
        break;
      }
      header = msg.header();
      if (header.num_layers() < 1 || header.num_layers() > kMaxLayers || header.num_kv_heads() < 1 ||
          header.num_kv_heads() > kMaxKvHeads || header.head_dim() < 1 || header.head_dim() > kMaxHeadDim ||
          header.seq_len() != seq_len) {
        protocol = DataLoss("implausible layout header: " + header.ShortDebugString());
        break;
      }
      const int64_t kv_bytes =
          int64_t{2} * sizeof(float) * header.num_layers() * header.num_kv_heads() * header.head_dim() * seq_len;
      if (kv_bytes > kMaxKvBytes) {
        protocol = ResourceExhausted("the layout header asks for " + std::to_string(kv_bytes >> 20) +
                                     " MiB of KV, more than this client assembles (" +
                                     std::to_string(kMaxKvBytes >> 30) + " GiB)");
        break;
      }
      // The client has no model of its own: the header is the layout.
      ExpectedLayout expected;
      expected.fingerprint = header.model_fingerprint();
      expected.num_layers = header.num_layers();
      expected.num_kv_heads = header.num_kv_heads();
      expected.head_dim = header.head_dim();
      expected.vocab_size = header.vocab_size();
      cache = std::make_unique<HostKvCache>(header.num_layers(), header.num_kv_heads(), header.head_dim(), seq_len);
      assembler = std::make_unique<KvAssembler>(expected, 0, seq_len, cache.get());
      protocol = assembler->OnHeader(header);
    } else if (!assembler) {
      protocol = DataLoss("a message before the layout header");
    } else if (msg.has_chunk()) {
      if (first_chunk_ms < 0) first_chunk_ms = SecondsSince(start) * 1e3;
      protocol = assembler->OnChunk(msg.chunk());
    } else if (msg.has_summary()) {
      protocol = assembler->OnSummary(msg.summary());
      summary = msg.summary();
      have_summary = true;
    }
  }
  if (!protocol.ok()) context.TryCancel();
  const grpc::Status status = reader->Finish();
  const double total_ms = SecondsSince(start) * 1e3;
  if (!protocol.ok()) return ReportError(cmd, protocol.WithContext("the prefill stream is malformed"));
  if (!status.ok()) return ReportRpcError(cmd, status);
  if (!have_summary)
    return ReportRpcError(cmd, grpc::Status(grpc::StatusCode::DATA_LOSS, "the stream ended without a summary"));

  if (!dump.empty()) {
    if (Status s = WriteKvDump(dump, *cache, seq_len, summary); !s.ok()) return ReportError(cmd, s);
  }
  const double mb = static_cast<double>(assembler->bytes()) / 1e6;
  if (json) {
    JsonValue out = JsonValue::Object();
    out.Set("first_token", JsonValue::Int(summary.first_token()));
    out.Set("seq_len", JsonValue::Int(seq_len));
    out.Set("num_layers", JsonValue::Int(header.num_layers()));
    out.Set("kv_dtype", JsonValue::String(v1::KvDtype_Name(header.kv_dtype())));
    out.Set("kv_bytes", JsonValue::Int(assembler->bytes()));
    out.Set("kv_chunks", JsonValue::Int(assembler->chunks()));
    out.Set("first_chunk_ms", JsonValue::Number(first_chunk_ms));
    out.Set("total_ms", JsonValue::Number(total_ms));
    out.Set("prefill_ms", JsonValue::Number(summary.timings().prefill_seconds() * 1e3));
    out.Set("cached_tokens", JsonValue::Int(summary.cached_tokens()));
    JsonValue density = JsonValue::Object();
    density.Set("overall", JsonValue::Number(summary.overall_density()));
    JsonValue layers = JsonValue::Array();
    for (double d : summary.layer_density()) layers.Append(JsonValue::Number(d));
    density.Set("layers", std::move(layers));
    out.Set("density", std::move(density));
    out.Set("sparsity", JsonValue::String(summary.sparsity()));
    out.Set("device", JsonValue::String(header.device()));
    if (!dump.empty()) out.Set("dump", JsonValue::String(dump));
    std::printf("%s\n", out.Dump().c_str());
    return kExitOk;
  }
  std::printf("prefill     %d tokens (%d from the prefix store), %d layers on %s, %s, prefill %.2f ms\n", seq_len,
              summary.cached_tokens(), header.num_layers(), header.device().c_str(), summary.sparsity().c_str(),
              summary.timings().prefill_seconds() * 1e3);
  std::printf("KV          %.2f MB (%s) in %d chunks; first chunk at %.2f ms, all in %.2f ms (%.1f MB/s)\n", mb,
              v1::KvDtype_Name(header.kv_dtype()).c_str(), assembler->chunks(), first_chunk_ms, total_ms,
              total_ms > 0 ? mb / (total_ms / 1e3) : 0.0);
  std::printf("next token  %d\n", summary.first_token());
  std::printf("density     overall %.4f\n", summary.overall_density());
  for (int i = 0; i < summary.layer_density_size(); ++i)
    std::printf("  layer %-3d %.4f\n", i, summary.layer_density(i));
  if (!dump.empty()) std::printf("dump        %s\n", dump.c_str());
  return kExitOk;
}

}  // namespace seer
