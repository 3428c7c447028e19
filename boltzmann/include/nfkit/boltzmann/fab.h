#pragma once
// Flow Annealed Importance Sampling Bootstrap (FAB; Midgley, Stimper, Simm, Schölkopf &
// Hernández-Lobato, ICLR 2023, arXiv 2208.01893): trains a flow q from the target's energy
// alone (no samples of p), by minimising the alpha = 2 divergence
//   D_2(p || q) ∝ ∫ p^2 / q,   whose gradient is  -E_{p^2/q}[grad log q] * const,
// estimated with annealed importance sampling (ais.h) from q to g = p^2 / q: AIS reaches the
// regions where q places too little mass, so the flow covers the target's modes instead of
// collapsing onto one as reverse KL tends to.
//
// Without a buffer every step runs AIS on `batch` particles and takes
//   L = -sum_i wbar_i log q(x_i),   wbar = softmax(log w_AIS)   (self-normalised).
// With the prioritised replay buffer (FAB, Algorithm 2; the paper's best variant) every
// `buffer_batches` steps run AIS once and append its (x, log w, log q) to a ring buffer of
// `buffer_size` points (filled to `buffer_min` before the first step); each step draws `batch`
// distinct points with probability ∝ w (Gumbel top-k) and takes
//   L = -mean_i c_i log q_theta(x_i),   c_i = exp((1 - alpha)(log q_theta(x_i) - log q_old(x_i)))
// (no gradient through c; optionally clipped at w_adjust_clip), then corrects the drawn points'
// weights for the new flow: log w_i += (1 - alpha)(log q_theta - log q_old), log q_old = log q_theta.
// Points whose log q is not finite any more leave the buffer (weight 0).
//
// The Trainer (flows/trainer.h) does the optimisation: AdamW with warm-up and cosine decay,
// gradient clipping, skipped non-finite steps, and checkpoints that carry the buffer and the
// HMC step sizes, so an interrupted run resumes as the same run. Validation is the flow's own
// importance-sampling estimate of the alpha = 2 divergence, log(1 / Kish ESS fraction), on
// `val_samples` fresh samples with a fixed seed (lower is better; the best weights are kept).
//
//   nfkit::ManyWell target(32);
//   nfkit::FabOptions o;  o.trainer.steps(4000);
//   auto rep = nfkit::train_fab(flow, target, o);
//   auto est = nfkit::importance_estimate(*flow, target, 100000);   // log Z, ESS
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "nfkit/boltzmann/ais.h"
#include "nfkit/flows/trainer.h"

namespace nfkit {

struct FabOptions {
  AisOptions ais = [] {
    AisOptions a;
    a.alpha = 2.0;
    return a;
  }();
  int64_t batch = 1024;           ///< AIS particles per AIS run, and points per gradient step
  bool buffer = true;             ///< prioritised replay buffer (FAB's Algorithm 2)
  int64_t buffer_size = 100000;   ///< points kept (the oldest are overwritten)
  int64_t buffer_min = 10000;     ///< points gathered before the first step
  int64_t buffer_batches = 8;     ///< gradient steps per AIS run
  double w_adjust_clip = 0.0;     ///< clip the weight correction c at this value (0 = off)
  int64_t val_samples = 8192;     ///< flow samples of each validation
  TrainerOptions trainer;         ///< steps = gradient steps; batch_size is ignored (see batch)
  /// Checks the values, naming the option (usage errors).
  void check() const;
  nlohmann::json to_json() const;
};

/// The flow's own importance-sampling estimates with n samples: log Z = log mean w (for the
/// reduced energy u, p = exp(-u) / Z), the Kish ESS fraction, and how many samples had a
/// non-finite energy (zero weight).
struct ImportanceEstimate {
  double log_z = NAN, ess_fraction = NAN;
  int64_t n = 0, infinite = 0;
  torch::Tensor x, log_w;  ///< the samples [n, D] (float64) and their log-weights [n]
};
ImportanceEstimate importance_estimate(Distribution& flow, Energy& energy, int64_t n,
                                       int64_t chunk = 8192);

struct FabReport {
  TrainReport train;
  int64_t ais_runs = 0;            ///< in this process (a resumed run counts from the resume)
  int64_t energy_evaluations = 0;  ///< rows, in this process
  int64_t failed = 0;              ///< AIS particles dropped (non-finite energy or log q)
  double last_ais_ess = NAN;       ///< Kish ESS fraction of the last AIS run's weights
  std::vector<double> step_sizes;  ///< final HMC step sizes
  nlohmann::json to_json() const;
};

/// Trains `flow` (any Distribution with parameters, on the device and in the dtype it should
/// train in) against `energy` over the flow's coordinates by FAB, resuming from
/// options.trainer.checkpoint_path() when it exists (unless restart). `stop` is polled between
/// steps; report.train.interrupted says it stopped (the checkpoint holds the progress).
FabReport train_fab(std::shared_ptr<Distribution> flow, Energy& energy, const FabOptions& options,
                    const nlohmann::json& metadata = nlohmann::json::object(), bool restart = false,
                    const std::function<bool()>& stop = {},
                    const std::function<void(int64_t step)>& on_resume = {});

}  // namespace nfkit
