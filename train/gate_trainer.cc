#include "train/gate_trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <thread>
#include <tuple>

#include "base/clock.h"
#include "base/strings.h"
#include "engine/model/sparsity.h"
#include "formats/safetensors.h"
#include "kernels/gate/distill_target_cpu.h"

namespace seer::train {
namespace {

namespace fs = std::filesystem;

constexpr int kBlockSize = 64;  // the only gate block size Seer runs
// 2: the tensors in a file named by their step (trainer_state.json's
// "tensors"); 1 kept them in trainer_state.safetensors, still read.
constexpr std::string_view kCheckpointFormat = "seer-train-checkpoint/2";
constexpr std::string_view kCheckpointFormatV1 = "seer-train-checkpoint/1";
constexpr std::string_view kWeightsName = "attn_gate_weights.safetensors";

std::string Hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string GateKey(int layer, std::string_view which) {
  return "model.layers." + std::to_string(layer) + ".self_attn.attn_gate." + std::string(which) + ".weight";
}

// SplitMix64 draws, uniform in [-bound, bound): a fully specified stream, so
// the initial gates are the same on every platform.
class Uniform {
 public:
  explicit Uniform(uint64_t seed) : state_(seed) {}
  double Next(double bound) {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (static_cast<double>(z >> 11) * 0x1.0p-53 * 2.0 - 1.0) * bound;
  }

 private:
  uint64_t state_;
};

// torch.nn.init.xavier_uniform_ on a [heads, in, out] tensor: torch's fan_in
// is in * out and its fan_out heads * out (dimension 1 and 0, each times the
// "receptive field" out), so bound = sqrt(6 / (in * out + heads * out)).
void XavierUniform(int heads, int in, int out, uint64_t seed, std::vector<double>* w) {
  const double bound = std::sqrt(6.0 / (double(in) * out + double(heads) * out));
  Uniform u(seed);
  w->resize(size_t(heads) * in * out);
  for (double& x : *w) x = u.Next(bound);
}

GateParams ZerosLike(const GateParams& p) {
  GateParams z;
  z.k.assign(p.k.size(), 0.0);
  z.q.assign(p.q.size(), 0.0);
  return z;
}

Status WriteText(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return InvalidArgument(path + ": cannot create " + tmp);
    out << text;
    out.flush();
    if (!out) return Internal(path + ": write failed");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return Internal(path + ": cannot rename " + tmp + ": " + ec.message());
  return OkStatus();
}

Status EnsureDir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return InvalidArgument(dir + ": cannot create the directory: " + ec.message());
  return OkStatus();
}

std::vector<float> InvFreq(const RopeConfig& rope, int dim) {
  std::vector<float> out;
  for (double f : RopeInvFreq(rope, dim)) out.push_back(static_cast<float>(f));
  return out;
}

cpu::DistillTargetProblem TargetProblem(const ModelConfig& m, const AttentionTap& tap, int block_size) {
  cpu::DistillTargetProblem p;
  p.q = tap.q_rope;
  p.k = tap.k_rope;
  p.seq_len = tap.seq_len;
  p.num_heads = m.num_heads;
  p.num_kv_heads = m.num_kv_heads;
  p.head_dim = m.head_dim;
  p.block_size = block_size;
  // The model's own softmax scale, as the CPU engine and HF apply it.
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(m.head_dim)));
  return p;
}

}  // namespace

GateTrainer::GateTrainer(std::unique_ptr<Engine> engine, int threads, const TrainConfig& config,
                         std::vector<int32_t> data)
    : engine_(std::move(engine)),
      threads_(threads),
      config_(config),
      data_(std::move(data)),
      data_fingerprint_(IdsFingerprint(data_)),
      order_(static_cast<int64_t>(data_.size()), config.seq_len, static_cast<uint64_t>(config.seed)) {}

StatusOr<std::unique_ptr<GateTrainer>> GateTrainer::Create(const std::string& model_dir, int threads,
                                                           const TrainConfig& config, std::vector<int32_t> data,
                                                           const std::string& device) {
  EngineOptions options;
  options.model_dir = model_dir;
  options.device = device;
  options.threads = threads;
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, CreateEngine(options));
  const int host_threads = threads > 0 ? threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const ModelConfig& m = engine->config();
  if (config.seq_len < 2 * kBlockSize || config.seq_len > m.max_position_embeddings) {
    return InvalidArgument("--seq-len: " + std::to_string(config.seq_len) + " is outside [" +
                           std::to_string(2 * kBlockSize) + ", " + std::to_string(m.max_position_embeddings) +
                           "] (two " + std::to_string(kBlockSize) +
                           "-token blocks up to the model's max_position_embeddings)");
  }
  if (config.steps < 1) return InvalidArgument("--steps: " + std::to_string(config.steps) + " must be at least 1");
  if (config.batch < 1) return InvalidArgument("--batch: " + std::to_string(config.batch) + " must be at least 1");
  if (!(config.lr > 0.0) || !std::isfinite(config.lr)) {
    return InvalidArgument("--lr: " + ShortestDouble(config.lr) + " must be a positive number");
  }
  if (config.warmup < 0) return InvalidArgument("--warmup: " + std::to_string(config.warmup) + " is negative");
  if (config.seed < 0) return InvalidArgument("--seed: " + std::to_string(config.seed) + " is negative");
  const int hidden = config.gate_hidden > 0 ? config.gate_hidden : m.head_dim;
  if (hidden % 2 != 0 || hidden > 65536) {
    return InvalidArgument("--gate-hidden: " + std::to_string(hidden) + " must be even (RoPE pairs) and at most 65536");
  }
  if (static_cast<int64_t>(data.size()) < config.seq_len) {
    return InvalidArgument("the training data holds " + std::to_string(data.size()) +
                           " tokens, fewer than one sequence of --seq-len " + std::to_string(config.seq_len));
  }
  SEER_RETURN_IF_ERROR(CheckTokenIds(data, m.vocab_size, "training data"));

  std::unique_ptr<GateLossCuda> gpu_loss;
  if (engine->device_name().starts_with("cuda")) {
    // The teacher is on a GPU: the gates' math goes there too.
    int index = 0;
    if (device.starts_with("cuda")) {
      SEER_ASSIGN_OR_RETURN(index, ParseCudaDeviceIndex(device));
    }
    SEER_ASSIGN_OR_RETURN(gpu_loss, GateLossCuda::Create(index));
  }
  std::unique_ptr<GateTrainer> t(new GateTrainer(std::move(engine), host_threads, config, std::move(data)));
  t->gpu_loss_ = std::move(gpu_loss);
  t->model_dir_ = model_dir;
  t->config_.gate_hidden = hidden;
  GateShape& s = t->shape_;
  s.num_heads = m.num_heads;
  s.num_kv_heads = m.num_kv_heads;
  s.head_dim = m.head_dim;
  s.hidden = hidden;
  s.block_size = kBlockSize;
  // The authors' AttnGate: hidden == head_dim has mask_linear_k per Q head
  // only; otherwise mask_linear_q per Q head and mask_linear_k per KV head.
  s.has_q_weight = hidden != m.head_dim;
  s.k_weight_heads = s.has_q_weight ? m.num_kv_heads : m.num_heads;
  t->gate_rope_inv_freq_ = InvFreq(m.rope, hidden);

  try {
    t->params_.resize(m.num_layers);
    for (int layer = 0; layer < m.num_layers; ++layer) {
      const uint64_t seed = static_cast<uint64_t>(config.seed) * 0x100000001b3ull + uint64_t(layer) * 2 + 1;
      XavierUniform(s.k_weight_heads, 3 * s.head_dim, hidden, seed, &t->params_[layer].k);
      if (s.has_q_weight) XavierUniform(s.num_heads, s.head_dim, hidden, seed + 1, &t->params_[layer].q);
      t->exp_avg_.push_back(ZerosLike(t->params_[layer]));
      t->exp_avg_sq_.push_back(ZerosLike(t->params_[layer]));
    }
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough host memory for the gates' weights and AdamW state");
  }
  return t;
}

Status GateTrainer::RunSequence(std::span<const int32_t> ids, std::vector<GateParams>* grads, double grad_scale,
                                std::vector<double>* layer_loss) {
  const ModelConfig& m = engine_->config();
  const int threads = threads_;
  std::vector<float> computed;
  return engine_->ForwardWithAttentionTap(ids, [&](const AttentionTap& tap) -> Status {
    const float* target = tap.target;
    if (target == nullptr) {
      computed = cpu::DistillTarget(TargetProblem(m, tap, shape_.block_size), threads);
      target = computed.data();
    }
    const GateFeatures f = PoolGateFeatures(shape_, tap.q, tap.k, tap.seq_len, gate_rope_inv_freq_, threads);
    GateParams* grad = grads != nullptr ? &(*grads)[tap.layer] : nullptr;
    double loss = 0.0;
    if (gpu_loss_ != nullptr) {
      SEER_ASSIGN_OR_RETURN(loss, gpu_loss_->Loss(shape_, f, target, params_[tap.layer], grad, grad_scale));
    } else {
      loss = GateLoss(shape_, f, target, params_[tap.layer], grad, grad_scale, threads);
    }
    (*layer_loss)[tap.layer] += loss;
    return OkStatus();
  });
}

StatusOr<StepReport> GateTrainer::Step() {
  const Clock::time_point start = Clock::now();
  const int layers = engine_->config().num_layers;
  std::vector<GateParams> grads;
  for (const GateParams& p : params_) grads.push_back(ZerosLike(p));
  StepReport r;
  r.layer_loss.assign(layers, 0.0);
  // The optimised objective: loss_scale * (sum over layers of the KL), mean
  // over the batch.
  const double grad_scale = config_.loss_scale / config_.batch;
  for (int b = 0; b < config_.batch; ++b) {
    const int64_t first = order_.Start(step_ * config_.batch + b);
    const std::span<const int32_t> ids(data_.data() + first, static_cast<size_t>(config_.seq_len));
    SEER_RETURN_IF_ERROR(RunSequence(ids, &grads, grad_scale, &r.layer_loss));
    r.tokens += config_.seq_len;
  }
  for (double& l : r.layer_loss) l /= config_.batch;
  for (double l : r.layer_loss) r.loss += l;

  std::vector<std::vector<double>*> all;
  for (GateParams& g : grads) {
    all.push_back(&g.k);
    if (!g.q.empty()) all.push_back(&g.q);
  }
  r.grad_norm = ClipGradNorm(all, config_.max_grad_norm);
  r.lr = config_.lr * CosineWarmupFactor(step_, config_.warmup, config_.steps);
  for (int layer = 0; layer < layers; ++layer) {
    GateParams& p = params_[layer];
    AdamWStep(config_.adamw, r.lr, step_ + 1, p.k, grads[layer].k, exp_avg_[layer].k, exp_avg_sq_[layer].k);
    if (!p.q.empty()) {
      AdamWStep(config_.adamw, r.lr, step_ + 1, p.q, grads[layer].q, exp_avg_[layer].q, exp_avg_sq_[layer].q);
    }
  }
  r.step = ++step_;
  r.seconds = SecondsSince(start);
  return r;
}

StatusOr<std::vector<double>> GateTrainer::Evaluate(std::span<const int32_t> ids) {
  std::vector<double> layer_loss(engine_->config().num_layers, 0.0);
  SEER_RETURN_IF_ERROR(RunSequence(ids, nullptr, 0.0, &layer_loss));
  return layer_loss;
}

std::optional<std::string> GateTrainer::WeightPastBf16() const {
  for (size_t layer = 0; layer < params_.size(); ++layer) {
    for (const auto& [part, v] :
         {std::pair{"mask_linear_k", &params_[layer].k}, std::pair{"mask_linear_q", &params_[layer].q}}) {
      for (size_t i = 0; i < v->size(); ++i) {
        if (!std::isfinite(Bf16ToFloat(FloatToBf16(static_cast<float>((*v)[i]))))) {
          return "layer " + std::to_string(layer) + " " + part + "[" + std::to_string(i) + "] is " +
                 ShortestDouble((*v)[i]) + ", past bf16's range";
        }
      }
    }
  }
  return std::nullopt;
}

Status GateTrainer::WriteGates(const std::string& dir, const SparsityConfig& default_sparsity,
                               const JsonValue& training_note) const {
  if (default_sparsity.mode != SparsityMode::kThreshold && default_sparsity.mode != SparsityMode::kNzRatio) {
    return InvalidArgument("the gates' default sparsity must be threshold=T or nz_ratio=R, not " +
                           SparsityToString(default_sparsity));
  }
  SEER_RETURN_IF_ERROR(EnsureDir(dir));
  std::error_code ec;
  if (fs::exists(fs::path(dir) / "attn_gate_weights.pth", ec)) {
    return FailedPrecondition(dir +
                              " holds attn_gate_weights.pth, which LoadGates would read instead of the "
                              "trained weights; use another --out");
  }
  const ModelConfig& m = engine_->config();
  SEER_ASSIGN_OR_RETURN(JsonValue config, ReadJsonFile(model_dir_ + "/config.json"));
  if (!config.is_object()) return InvalidArgument(model_dir_ + "/config.json: must hold a JSON object");
  const bool threshold = default_sparsity.mode == SparsityMode::kThreshold;
  config.Set("base_model", JsonValue::String(model_dir_));
  config.Set("seerattn_gate_type", JsonValue::String("Qavg_Kmaxminavg"));
  config.Set("seerattn_gate_block_size", JsonValue::Int(shape_.block_size));
  config.Set("seerattn_gate_hidden_size", JsonValue::Int(shape_.hidden));
  // LoadGates expects mask_linear_q exactly when hidden != head_dim or this is set.
  config.Set("seerattn_gate_force_double", JsonValue::Bool(false));
  config.Set("seerattn_sparsity_method", JsonValue::String(threshold ? "threshold" : "nz_ratio"));
  config.Set("seerattn_threshold", JsonValue::Number(threshold ? default_sparsity.threshold : 0.0));
  config.Set("seerattn_nz_ratio", JsonValue::Number(threshold ? 1.0 : default_sparsity.nz_ratio));
  config.Set("seerattn_last_block_dense", JsonValue::Bool(default_sparsity.last_block_dense));
  config.Set("seerattn_training", training_note);

  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  auto add_bf16 = [&](const std::string& name, std::vector<int64_t> shape, const std::vector<double>& v) -> Status {
    std::vector<uint16_t> bits(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      bits[i] = FloatToBf16(static_cast<float>(v[i]));
      // A weight past bf16's range (or already not finite) is a diverged run:
      // gates of inf select nothing useful and must not look trained.
      if (!std::isfinite(Bf16ToFloat(bits[i]))) {
        return FailedPrecondition(name + "[" + std::to_string(i) + "] is " + ShortestDouble(v[i]) +
                                  ", not a finite bf16: the training diverged (lower --lr); nothing was written");
      }
    }
    writer.Add(name, DType::kBF16, std::move(shape), bits.data(), bits.size() * sizeof(uint16_t));
    return OkStatus();
  };
  for (int layer = 0; layer < m.num_layers; ++layer) {
    SEER_RETURN_IF_ERROR(add_bf16(GateKey(layer, "mask_linear_k"),
                                  {shape_.k_weight_heads, 3 * shape_.head_dim, shape_.hidden}, params_[layer].k));
    if (shape_.has_q_weight) {
      SEER_RETURN_IF_ERROR(add_bf16(GateKey(layer, "mask_linear_q"), {shape_.num_heads, shape_.head_dim, shape_.hidden},
                                    params_[layer].q));
    }
  }
  SEER_RETURN_IF_ERROR(writer.WriteFile((fs::path(dir) / kWeightsName).string()));
  return WriteText((fs::path(dir) / "config.json").string(), config.Dump() + "\n");
}

namespace {

// The configuration a checkpoint must share with the run that resumes it.
JsonValue ConfigJson(const TrainConfig& c) {
  JsonValue o = JsonValue::Object();
  o.Set("seq_len", JsonValue::Int(c.seq_len));
  o.Set("steps", JsonValue::Int(c.steps));
  o.Set("batch", JsonValue::Int(c.batch));
  o.Set("lr", JsonValue::Number(c.lr));
  o.Set("warmup", JsonValue::Int(c.warmup));
  o.Set("beta1", JsonValue::Number(c.adamw.beta1));
  o.Set("beta2", JsonValue::Number(c.adamw.beta2));
  o.Set("eps", JsonValue::Number(c.adamw.eps));
  o.Set("weight_decay", JsonValue::Number(c.adamw.weight_decay));
  o.Set("loss_scale", JsonValue::Number(c.loss_scale));
  o.Set("max_grad_norm", JsonValue::Number(c.max_grad_norm));
  o.Set("seed", JsonValue::Int(c.seed));
  o.Set("gate_hidden", JsonValue::Int(c.gate_hidden));
  return o;
}

// Which flag each configuration field comes from, for messages.
std::string FlagOf(const std::string& field) {
  if (field == "seq_len") return "--seq-len";
  if (field == "max_grad_norm") return "--max-grad-norm";
  if (field == "loss_scale") return "--loss-scale";
  if (field == "weight_decay") return "--weight-decay";
  if (field == "gate_hidden") return "--gate-hidden";
  return "--" + field;
}

}  // namespace

std::string GateTrainer::TensorsName(int64_t step) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "trainer_state-%09lld.safetensors", static_cast<long long>(step));
  return buf;
}

Status GateTrainer::SaveCheckpoint(const std::string& dir) const {
  SEER_RETURN_IF_ERROR(EnsureDir(dir));
  SafetensorsWriter writer;
  const std::string step = std::to_string(step_);
  writer.SetMetadata("step", step);
  auto add = [&](const std::string& name, const std::vector<double>& v) {
    writer.Add(name, DType::kF64, {static_cast<int64_t>(v.size())}, v.data(), v.size() * sizeof(double));
  };
  for (size_t layer = 0; layer < params_.size(); ++layer) {
    const std::string prefix = "layers." + std::to_string(layer) + ".";
    for (const auto& [part, p, m, v] :
         {std::tuple{"k", &params_[layer].k, &exp_avg_[layer].k, &exp_avg_sq_[layer].k},
          std::tuple{"q", &params_[layer].q, &exp_avg_[layer].q, &exp_avg_sq_[layer].q}}) {
      if (p->empty()) continue;
      add(prefix + part, *p);
      add(prefix + part + ".exp_avg", *m);
      add(prefix + part + ".exp_avg_sq", *v);
    }
  }
  // The tensors go to a file of their step, and the .json, renamed into
  // place last, names it: a save interrupted anywhere leaves the previous
  // .json naming the previous file, which is deleted only after the rename.
  const std::string tensors = TensorsName(step_);
  SEER_RETURN_IF_ERROR(writer.WriteFile((fs::path(dir) / tensors).string()));
  JsonValue state = JsonValue::Object();
  state.Set("format", JsonValue::String(std::string(kCheckpointFormat)));
  state.Set("step", JsonValue::Int(step_));
  state.Set("model", JsonValue::String(model_dir_));
  state.Set("model_fingerprint", JsonValue::String(Hex(engine_->fingerprint())));
  state.Set("data_fingerprint", JsonValue::String(Hex(data_fingerprint_)));
  state.Set("data_tokens", JsonValue::Int(static_cast<int64_t>(data_.size())));
  state.Set("config", ConfigJson(config_));
  state.Set("tensors", JsonValue::String(tensors));
  SEER_RETURN_IF_ERROR(WriteText((fs::path(dir) / "trainer_state.json").string(), state.Dump() + "\n"));
  // Now the older steps' tensors (and a pre-step-name file) can go.
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name != tensors && name.starts_with("trainer_state") && name.find(".safetensors") != std::string::npos) {
      fs::remove(e.path(), ec);
    }
  }
  return OkStatus();
}

Status GateTrainer::LoadCheckpoint(const std::string& dir) {
  const std::string json_path = (fs::path(dir) / "trainer_state.json").string();
  std::error_code ec;
  if (!fs::exists(json_path, ec)) {
    return NotFound("--resume: no checkpoint in " + dir + " (trainer_state.json is missing)");
  }
  SEER_ASSIGN_OR_RETURN(JsonValue state, ReadJsonFile(json_path));
  const JsonFieldReader r(state, json_path);
  SEER_ASSIGN_OR_RETURN(const std::string format, r.String("format", std::nullopt));
  if (format != kCheckpointFormat && format != kCheckpointFormatV1) {
    return r.Error("format", "is " + Quoted(format) + "; this seer-train reads " + Quoted(kCheckpointFormat));
  }
  SEER_ASSIGN_OR_RETURN(const int64_t step, r.Int("step", 0, int64_t{1} << 62, std::nullopt));
  // Checkpoints before step-named tensors kept them in trainer_state.safetensors.
  SEER_ASSIGN_OR_RETURN(const std::string tensors, r.String("tensors", "trainer_state.safetensors"));
  if (tensors.find('/') != std::string::npos || !tensors.starts_with("trainer_state")) {
    return r.Error("tensors", "is " + Quoted(tensors) + ", not a trainer_state file of this directory");
  }
  const std::string st_path = (fs::path(dir) / tensors).string();
  SEER_ASSIGN_OR_RETURN(const std::string model_fp, r.String("model_fingerprint", std::nullopt));
  SEER_ASSIGN_OR_RETURN(const std::string data_fp, r.String("data_fingerprint", std::nullopt));
  if (model_fp != Hex(engine_->fingerprint())) {
    return FailedPrecondition("--resume: " + json_path + " was trained on another model (fingerprint " + model_fp +
                              ", --model " + model_dir_ + " has " + Hex(engine_->fingerprint()) + ")");
  }
  if (data_fp != Hex(data_fingerprint_)) {
    return FailedPrecondition("--resume: " + json_path + " was trained on other data (fingerprint " + data_fp +
                              ", this run's data has " + Hex(data_fingerprint_) + ")");
  }
  const JsonValue* saved = state.Find("config");
  if (saved == nullptr || !saved->is_object()) return r.Error("config", "is missing or not an object");
  const JsonValue mine = ConfigJson(config_);
  for (const auto& [key, value] : mine.as_object()) {
    if (key == "steps") continue;  // a longer (or shorter) schedule is the caller's choice
    const JsonValue* v = saved->Find(key);
    if (v == nullptr || v->Dump() != value.Dump()) {
      return FailedPrecondition("--resume: the checkpoint in " + dir + " was made with " + FlagOf(key) + " " +
                                (v == nullptr ? std::string("unset") : v->Dump()) + ", this run has " + value.Dump());
    }
  }

  SEER_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(st_path));
  const auto meta = file->metadata().find("step");
  if (meta == file->metadata().end() || meta->second != std::to_string(step)) {
    return DataLoss("--resume: " + st_path + " holds step " +
                    (meta == file->metadata().end() ? std::string("(none)") : meta->second) + " but " + json_path +
                    " names step " + std::to_string(step) + " (an interrupted save); start again");
  }
  auto read = [&](const std::string& name, std::vector<double>* out) -> Status {
    const TensorView* t = file->Find(name);
    if (t == nullptr) return DataLoss("--resume: " + st_path + " has no tensor " + Quoted(name));
    if (t->dtype != DType::kF64 || t->numel() != static_cast<int64_t>(out->size())) {
      return DataLoss("--resume: " + st_path + ": tensor " + Quoted(name) + " is " + std::string(DTypeName(t->dtype)) +
                      " " + ShapeToString(t->shape) + ", expected F64 [" + std::to_string(out->size()) + "]");
    }
    std::memcpy(out->data(), t->data, out->size() * sizeof(double));
    return OkStatus();
  };
  for (size_t layer = 0; layer < params_.size(); ++layer) {
    const std::string prefix = "layers." + std::to_string(layer) + ".";
    SEER_RETURN_IF_ERROR(read(prefix + "k", &params_[layer].k));
    SEER_RETURN_IF_ERROR(read(prefix + "k.exp_avg", &exp_avg_[layer].k));
    SEER_RETURN_IF_ERROR(read(prefix + "k.exp_avg_sq", &exp_avg_sq_[layer].k));
    if (!params_[layer].q.empty()) {
      SEER_RETURN_IF_ERROR(read(prefix + "q", &params_[layer].q));
      SEER_RETURN_IF_ERROR(read(prefix + "q.exp_avg", &exp_avg_[layer].q));
      SEER_RETURN_IF_ERROR(read(prefix + "q.exp_avg_sq", &exp_avg_sq_[layer].q));
    }
  }
  step_ = step;
  return OkStatus();
}

StatusOr<std::vector<std::vector<float>>> DistillTargets(Engine& engine, std::span<const int32_t> ids, int threads,
                                                         int block_size) {
  std::vector<std::vector<float>> out(engine.config().num_layers);
  SEER_RETURN_IF_ERROR(engine.ForwardWithAttentionTap(ids, [&](const AttentionTap& tap) -> Status {
    if (tap.target != nullptr && block_size == kBlockSize) {
      const int nb = (tap.seq_len + kBlockSize - 1) / kBlockSize;
      out[tap.layer].assign(tap.target, tap.target + static_cast<size_t>(engine.config().num_heads) * nb * nb);
    } else if (tap.q_rope != nullptr) {
      out[tap.layer] = cpu::DistillTarget(TargetProblem(engine.config(), tap, block_size), threads);
    } else {
      return Unimplemented("the " + engine.device_name() + " engine computes targets of " + std::to_string(kBlockSize) +
                           "-token blocks only, not " + std::to_string(block_size));
    }
    return OkStatus();
  }));
  return out;
}

}  // namespace seer::train
