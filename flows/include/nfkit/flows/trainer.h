#pragma once
// The trainer: AdamW (Loshchilov & Hutter, ICLR 2019) with linear warm-up and cosine decay,
// gradient-norm clipping, an exponential moving average (EMA) of the weights, validation
// with early stopping, non-finite-loss protection and resumable checkpoints.
//
// Reproducibility: step k draws its minibatch and samples from the global torch generator
// reseeded with derive_seed(seed, 1, k), so the run depends on (seed, step) only, and a run
// resumed from a checkpoint reproduces the uninterrupted one bit for bit on the CPU.
//
// Non-finite protection: a step whose loss or gradient is not finite is skipped (no update);
// if the weights become non-finite after an update, the trainer rolls back to the last good
// state (taken at each validation). More than max_bad_steps bad steps in a row throw
// RuntimeError: NaN weights are never kept.
//
// Validation runs every eval_every steps (on EMA weights when ema_decay > 0); the best
// weights are kept and restored at the end; with patience > 0 training stops after that many
// validations without improvement.
//
//   nfkit::Trainer trainer(flow, nfkit::TrainerOptions().steps(2000).lr(1e-3), objective);
//   auto report = trainer.train();
#include <torch/arg.h>

#include <functional>
#include <tuple>
#include <string>

#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/losses.h"

namespace nfkit {

struct TrainerOptions {
  TORCH_ARG(int64_t, steps) = 1000;
  TORCH_ARG(int64_t, batch_size) = 256;
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(double, beta1) = 0.9;
  TORCH_ARG(double, beta2) = 0.999;
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(int64_t, warmup_steps) = 0;
  /// Cosine decay floor as a fraction of lr.
  TORCH_ARG(double, min_lr_fraction) = 0.0;
  /// Maximum global gradient norm (0 = no clipping).
  TORCH_ARG(double, clip_grad_norm) = 10.0;
  /// EMA decay per step (0 = no EMA).
  TORCH_ARG(double, ema_decay) = 0.0;
  TORCH_ARG(int64_t, eval_every) = 100;
  /// Validations without improvement before stopping (0 = never stop early).
  TORCH_ARG(int64_t, patience) = 0;
  TORCH_ARG(int64_t, checkpoint_every) = 0;
  TORCH_ARG(std::string, checkpoint_path) = "";
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(int64_t, max_bad_steps) = 20;
  TORCH_ARG(bool, quiet) = false;

 public:
  json to_json() const;
};

/// What to minimise: forward KL on train (validated on val), reverse KL on energy, or the
/// mix (1 - reverse_weight) forward + reverse_weight reverse; or a custom minibatch loss on
/// train (`loss`). Validation uses `validate` when given, else val, else the reverse-KL
/// estimate when an energy is given, else the first 8192 training rows.
struct Objective {
  torch::Tensor train, train_context;
  torch::Tensor val, val_context;
  EnergyFn energy;
  double reverse_weight = 0.0;
  /// Reverse-KL samples per step (default: batch_size).
  int64_t energy_batch = 0;
  /// Applied to every training minibatch (x, context) before the forward-KL loss, under the
  /// step's seed (reproducible): dequantisation noise, noise augmentation, label drop.
  /// Validation data is used as given (dequantise it once, with a fixed seed).
  std::function<std::tuple<torch::Tensor, torch::Tensor>(const torch::Tensor&, const torch::Tensor&)>
      augment;
  /// Replaces the forward-KL term: the loss of a training minibatch (x, context) of `train`
  /// (after augment), e.g. a flow-matching regression (flows/flow_matching.h). Called under
  /// the step's seed. With a custom loss the rows of `train` may be wider than the model
  /// (packed pairs); the loss unpacks them.
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)> loss;
  /// Replaces the validation NLL: a number to minimise, computed deterministically (seed the
  /// generator inside; the trainer reseeds every step, so this never shifts training).
  std::function<double()> validate;
  /// Replaces every training term: the loss of step `step`, for objectives that draw their own
  /// minibatches (FAB's replay buffer, boltzmann/fab.h). Called under the step's seed; needs
  /// no `train`, `loss` or `energy`.
  std::function<torch::Tensor(int64_t step)> step_loss;
  /// State such an objective keeps across steps (a replay buffer, sampler step sizes): written
  /// with every trainer checkpoint under the group it is given, and read back on resume, so a
  /// resumed run continues the same run.
  std::function<void(H5Writer& w, const std::string& group)> save_state;
  std::function<void(const H5Reader& r, const std::string& group)> load_state;
};

struct TrainReport {
  int64_t steps_done = 0;   ///< final step reached
  int64_t start_step = 0;   ///< the step this run started from (> 0 after a resume)
  int64_t best_step = -1;
  double best_val = NAN;    ///< best validation loss [nats]
  double last_train = NAN;  ///< last finite training loss
  int64_t bad_steps = 0;    ///< skipped or rolled-back steps, in total
  int64_t rollbacks = 0;
  bool stopped_early = false;
  bool interrupted = false;
  std::vector<std::pair<int64_t, double>> validation;  ///< (step, loss)
  /// (step, mean finite training loss of the steps since the previous validation), recorded
  /// at each validation: the training curve beside `validation`. Kept across resumes.
  std::vector<std::pair<int64_t, double>> training;
};

class Trainer {
 public:
  /// model: any Distribution whose parameters are trained (a Flow, a ContinuousFlow).
  Trainer(std::shared_ptr<Distribution> model, TrainerOptions opts, Objective objective,
          json metadata = json::object());
  ~Trainer();

  /// Trains from the current step to opts.steps (or until early stop / stop request).
  /// At the end the flow holds the best validated weights (or the EMA / last weights if no
  /// validation ran).
  TrainReport train();

  /// Asked before every step; returning true stops training after writing a checkpoint
  /// (used for SIGINT in the command line and to test resuming).
  std::function<bool(int64_t step)> should_stop;

  /// Writes the full state (model, optimizer, EMA, best weights, counters) atomically.
  void save_checkpoint(const std::string& path) const;
  /// Restores the full state written by save_checkpoint; the flow must have the same
  /// configuration (checked).
  void load_checkpoint(const std::string& path);

  int64_t step() const;
  double learning_rate(int64_t step) const;

 private:
  struct State;
  std::shared_ptr<Distribution> flow_;
  TrainerOptions opts_;
  Objective obj_;
  json metadata_;
  std::unique_ptr<State> s_;
};

/// The one train-resume-save routine of every training command and pipeline: a Trainer over
/// `model`, resumed from options.checkpoint_path() when that file exists and !restart
/// (on_resume(step) is told), trained, and returned with interrupted set when `stop` asked (the
/// checkpoint then holds the progress and the same call resumes it).
TrainReport train_resuming(std::shared_ptr<Distribution> model, const TrainerOptions& options,
                           Objective objective, const json& metadata, bool restart,
                           const std::function<bool()>& stop = {},
                           const std::function<void(int64_t step)>& on_resume = {});

/// Writes the trained model atomically (metadata plus best_step and the best validation value
/// under `val_key`, with the step count), then removes `checkpoint` (if not empty): the model
/// file replaces it.
void save_trained(const std::string& path, const Distribution& model, json metadata,
                  const TrainReport& report, const std::string& checkpoint,
                  const std::string& val_key = "best_val");

}  // namespace nfkit
