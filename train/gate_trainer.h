// SeerAttention gate self-distillation (DESIGN §1).
//
// The model is frozen and a gate reads only its own layer's Q and K, so every
// layer's gate trains from one teacher pass of the model with dense
// attention: Engine::ForwardWithAttentionTap hands each layer's pre-RoPE Q/K
// (the gate's input) to the trainer as the pass reaches it, with either the
// post-RoPE Q/K (the CPU engine: the trainer computes the distillation target,
// kernels/gate/distill_target_cpu) or the target itself (the CUDA engine
// computes it on the GPU, kernels/gate/distill_target). The trainer computes
// the gate's loss and gradient on the host in float64 (train/gate_grad), and
// lets the activations go. No backward pass runs
// through the model and nothing of size L x L or of more than one layer is
// kept.
//
// A step draws `batch` sequences (train/train_data), sums the layers' losses
// and averages over the batch, scales by loss_scale, clips the gradient's
// global norm and takes one AdamW step with the cosine-with-warm-up learning
// rate (train/adamw): the reference's recipe (docs/TRAINING.md).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/json.h"
#include "base/status.h"
#include "engine/engine.h"
#include "kernels/gate/selection.h"
#include "train/adamw.h"
#include "train/gate_grad.h"
#include "train/gate_grad_cuda.h"
#include "train/train_data.h"

namespace seer::train {

struct TrainConfig {
  int seq_len = 0;
  int64_t steps = 0;  // the schedule's length
  int batch = 1;  // sequences per optimizer step
  double lr = 1e-3;
  int64_t warmup = 20;
  AdamWConfig adamw;
  double loss_scale = 10.0;  // the reference's gate_loss_scale: the optimised loss is this times the KL
  double max_grad_norm = 1.0;  // Hugging Face Trainer's default; <= 0 does not clip
  int64_t seed = 0;  // the initial weights and the order of the sequences
  int gate_hidden = 0;  // 0: head_dim, the released form (no mask_linear_q)
};

struct StepReport {
  int64_t step = 0;  // optimizer steps done, this one included
  double loss = 0.0;  // sum over layers of the KL, mean over the batch (not scaled)
  std::vector<double> layer_loss;  // per layer, mean over the batch
  double lr = 0.0;  // the learning rate this step used
  double grad_norm = 0.0;  // of the scaled loss's gradient, before clipping
  int64_t tokens = 0;  // tokens run through the model this step
  double seconds = 0.0;
};

class GateTrainer {
 public:
  // Loads the model (dense, without gates) as the teacher on `device` ("cpu",
  // or "cuda"/"cuda:N": the teacher pass and the target on the GPU), with
  // `threads` CPU threads (0: all) for the CPU teacher and the gates' math,
  // and makes fresh gates: mask_linear_k (and mask_linear_q when the hidden
  // size differs from head_dim) initialised as the reference does, with
  // torch.nn.init.xavier_uniform_ on the [heads, in, out] tensors, from `seed`.
  // `data` must hold at least one sequence of seq_len tokens, each id in the
  // vocabulary.
  static StatusOr<std::unique_ptr<GateTrainer>> Create(const std::string& model_dir, int threads,
                                                       const TrainConfig& config, std::vector<int32_t> data,
                                                       const std::string& device = "cpu");

  // One optimizer step.
  StatusOr<StepReport> Step();
  // The loss of the current gates on `ids` per layer (no update).
  StatusOr<std::vector<double>> Evaluate(std::span<const int32_t> ids);

  // The gate directory LoadGates reads: config.json (the model's config plus
  // the seerattn_* fields, with `default_sparsity`, a threshold or nz_ratio,
  // as the gates' default) and attn_gate_weights.safetensors (BF16, as the
  // released gates are). `training_note` goes into config.json as
  // "seerattn_training". A weight that is not a finite bf16 (a diverged run)
  // is FAILED_PRECONDITION, and nothing is written.
  Status WriteGates(const std::string& dir, const SparsityConfig& default_sparsity,
                    const JsonValue& training_note) const;
  // Everything a resumed run needs (weights, AdamW moments and the step, in
  // float64; the configuration and the fingerprints of the model and the
  // data): dir/trainer_state.json, which names the step's tensor file
  // (TensorsName). The .json is renamed into place last and the older
  // tensor files are deleted after it, so an interrupted save leaves the
  // previous checkpoint whole.
  Status SaveCheckpoint(const std::string& dir) const;
  // "trainer_state-000000042.safetensors" for step 42.
  static std::string TensorsName(int64_t step);
  // Restores a checkpoint saved by a run with the same model, data and
  // configuration (steps may differ: the schedule then follows the new
  // length); a difference is FAILED_PRECONDITION naming the field.
  Status LoadCheckpoint(const std::string& dir);

  // The first weight whose bf16 (what WriteGates writes) is not finite,
  // named with its value; nullopt when every one fits.
  std::optional<std::string> WeightPastBf16() const;

  int64_t step() const { return step_; }
  const TrainConfig& config() const { return config_; }
  const GateShape& shape() const { return shape_; }
  const std::vector<GateParams>& params() const { return params_; }
  const ModelConfig& model() const { return engine_->config(); }
  int64_t num_sequences() const { return order_.num_sequences(); }
  int threads() const { return threads_; }
  // Where the gates' float64 loss and gradient run: "cpu", or the GPU.
  std::string gate_math_device() const { return gpu_loss_ != nullptr ? engine_->device_name() : "cpu"; }
  // The teacher's device, as the engine names it.
  std::string device_name() const { return engine_->device_name(); }
  const std::string& model_dir() const { return model_dir_; }

 private:
  GateTrainer(std::unique_ptr<Engine> engine, int threads, const TrainConfig& config, std::vector<int32_t> data);
  // One sequence through the teacher: per layer, its loss added to
  // layer_loss and (when grads) its gradient scaled by grad_scale into grads.
  Status RunSequence(std::span<const int32_t> ids, std::vector<GateParams>* grads, double grad_scale,
                     std::vector<double>* layer_loss);

  std::unique_ptr<Engine> engine_;
  int threads_ = 1;
  // The gates' loss and gradient on the teacher's GPU (float64, the twin of
  // GateLoss); null when the teacher runs on the CPU.
  std::unique_ptr<GateLossCuda> gpu_loss_;
  std::string model_dir_;
  TrainConfig config_;
  GateShape shape_;
  std::vector<float> gate_rope_inv_freq_;
  std::vector<int32_t> data_;
  uint64_t data_fingerprint_ = 0;
  SequenceOrder order_;
  int64_t step_ = 0;
  std::vector<GateParams> params_, exp_avg_, exp_avg_sq_;
};

// The distillation target of every layer of `engine`'s model for `ids`
// (dense teacher pass): [layers][Hq * nb * nb]. Computed by the engine when it
// can (CUDA: 64-token blocks only), else on `threads` CPU threads.
StatusOr<std::vector<std::vector<float>>> DistillTargets(Engine& engine, std::span<const int32_t> ids, int threads,
                                                         int block_size = 64);

}  // namespace seer::train
