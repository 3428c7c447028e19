#pragma once
// Default settings for fitting a flow to samples by maximum likelihood, chosen from the number
// of training rows and the dimension: what `nfkit flow train` uses for every option left
// unset, and what a library user gets from one call. Computed from the training rows
// themselves (their count, dimension and standardised range).
//
// The rule (measured against zuko's NSF on exact-density sets, docs/benchmarks.md "Fit
// quality"):
//   flow     nsf-ar (autoregressive rational-quadratic splines, one pass for the density and
//            D for sampling) for D <= 32, nsf (coupling, one pass each way) above
//   size     5 blocks of a 2-hidden-layer conditioner, 128 units (64 below 4000 rows),
//            8 bins on [-B, B] in standardised units with B = 5 when every standardised
//            training value lies within [-4, 4] and B = 8 otherwise (heavy or skewed tails),
//            zero-initialised conditioners that start at the identity (identity_at_zero)
//   batch    512 (rows / 20 rounded down to a power of two, at least 32, for fewer rows)
//   length   40 epochs, at least 1000 and at most 20000 steps; AdamW lr 1e-3 with a
//            warm-up of min(100, steps / 10) steps and cosine decay to 0
//   stopping validation about once per epoch (40 per run), stop after 10 without
//            improvement, the best weights restored
//   dtype    float32 (the fit equals float64's at half the time; pass float64 for more)
// The spline bound matters most: at [-4, 4] banana:6 ended 0.15 nats above the truth, at
// [-8, 8] 0.06, because the conditional shifts of the autoregressive layers carry mass past
// a narrow interval, where the identity tails cannot move it; a 16-mode mixture inside
// [-2.7, 2.7] ended 0.22 at [-8, 8] and 0.13 at [-5, 5] (coarser bins for the same 8 knots).
//
//   auto s = nfkit::default_fit_settings(x);
//   auto flow = nfkit::build_flow(s.recipe, x);
//   flow->to(s.dtype);
//   nfkit::Trainer(flow, s.trainer, objective).train();
#include <string>

#include "nfkit/flows/builder.h"
#include "nfkit/flows/trainer.h"

namespace nfkit {

struct FitSettings {
  FlowRecipe recipe;
  TrainerOptions trainer;  ///< steps, batch_size, lr, warmup_steps, eval_every, patience
  torch::Dtype dtype = torch::kFloat32;
  int64_t n_train = 0;     ///< rows the length was computed for

  /// Epochs the step count amounts to: steps * batch_size / n_train.
  double epochs() const;
  /// Everything above, for checkpoint metadata and --json.
  json to_json() const;
  /// One line: "nsf-ar, 5 blocks x [128, 128], 8 bins on [-8, 8], batch 512, ...".
  std::string summary() const;
};

/// The settings for the training rows train [N, D] (N >= 1, finite).
FitSettings default_fit_settings(const torch::Tensor& train);

/// Sets the step count and what follows it: warm-up min(100, steps / 10) and a validation
/// every steps / 40 steps (at least 1).
void set_fit_length(FitSettings& s, int64_t steps);

/// Steps for `epochs` passes over n_train rows at batch_size (at least 1).
int64_t steps_for_epochs(double epochs, int64_t n_train, int64_t batch_size);

}  // namespace nfkit
