#pragma once
// MCMC samplers that produce many chains at once, evaluating the log posterior in batches.
//
// Affine-invariant ensemble sampler with the stretch move (Goodman & Weare 2010,
// Comm. App. Math. Comp. Sci. 5, 65; the parallel "red-black" split of Foreman-Mackey et al.
// 2013, arXiv 1202.3665): W walkers in two halves; each walker k of one half draws a partner
// j from the other half and z ~ g(z) ∝ 1/sqrt(z) on [1/a, a], proposes
// y = x_j + z (x_k - x_j) and accepts with probability min(1, z^(D-1) p(y)/p(x_k)).
// Each walker's path is one chain. Stuck walkers: a walker on a plateau far below the mode,
// or in a tiny local mode, can never reach a narrow main mode (the stretch proposal lands at
// least half the partner distance away), so at 1/4, 1/2 and 3/4 of burn-in a walker is
// restarted at a randomly chosen good walker's position (jitter 1e-3 of the good walkers'
// spread) when its log posterior is more than 20 + 2.5 D below the best walker's, or when it
// accepted fewer than a fifth of the median walker's moves since the last check while lying
// below the median log posterior. This touches burn-in only.
//
// Hamiltonian Monte Carlo (Neal 2011, "MCMC using Hamiltonian dynamics"): C independent
// chains, leapfrog with L steps (jittered uniformly in [L/2, L] per iteration), gradients of
// the log posterior by autograd (so the log density must be built from differentiable torch
// operations). During warm-up the step size follows Nesterov dual averaging to a target
// acceptance (Hoffman & Gelman 2014, JMLR 15, Alg. 5) and a diagonal mass matrix is set from
// the chains' variance over the second half of warm-up. Proposals with a non-finite energy
// are rejected.
//
// Parallel tempering of the ensemble sampler (Swendsen & Wang 1986; Earl & Deem 2005,
// Phys. Chem. Chem. Phys. 7, 3910; with ensemble moves as in Vousden, Farr & Mandel 2016,
// MNRAS 455, 1919): K rungs with inverse temperatures 1 = beta_0 > ... > beta_{K-1} =
// 1/max_temperature (geometric), each an ensemble of W walkers sampling prior x likelihood^beta
// with the stretch move; after every step, for k = K-1 down to 1, walker i of rung k-1 is
// paired with a random walker of rung k and the two swap positions with probability
// min(1, exp((beta_{k-1} - beta_k)(ln L_k - ln L_{k-1}))). Hot rungs cross the barriers and
// degeneracies that trap cold walkers; swaps hand their positions down. Only the beta = 1
// rung is returned as chains (each walker slot is a chain). No stuck-walker restarts.
//
// Randomness: iteration t draws from the global generator reseeded with
// derive_seed(seed, stream, t): the same seed gives the same chains on the CPU.
//
//   nfkit::EnsembleOptions o; o.steps = 2000; o.burn_in = 500;
//   auto run = nfkit::sample_ensemble(log_post, model.sample_prior(64), o, model.names());
//   auto d = nfkit::diagnose(run.chains);
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "nfkit/inference/chains.h"
#include "nfkit/inference/model.h"

namespace nfkit {

struct EnsembleOptions {
  int64_t steps = 2000;    ///< kept steps per walker (after burn-in, before thinning)
  int64_t burn_in = 1000;  ///< discarded steps per walker
  int64_t thin = 1;        ///< keep every thin-th step
  double stretch = 2.0;    ///< the scale a of the stretch move (> 1)
  bool reset_stuck = true; ///< restart stuck walkers during burn-in (see above)
  /// Block (Metropolis-within-Gibbs) moves: when given, every step sweeps these groups of
  /// parameter indices in order, each a stretch move of that group's coordinates only (the
  /// factor z^(|group| - 1)). For near-product posteriors (hierarchical models, per-pulsar
  /// noise given a common process) where joint stretch moves in many flat directions mix
  /// slowly. Every parameter must be in some group. One step = one sweep.
  std::vector<std::vector<int64_t>> blocks;
  uint64_t seed = 0;
  bool quiet = true;       ///< progress on stderr when false
};

struct HMCOptions {
  int64_t steps = 1000;      ///< kept iterations per chain
  int64_t warmup = 500;      ///< adaptation iterations (discarded)
  int64_t leapfrog = 16;     ///< maximum leapfrog steps per iteration
  double step_size = 0.1;    ///< initial step size (adapted during warm-up)
  double target_accept = 0.8;
  uint64_t seed = 0;
  bool quiet = true;
};

struct SamplerRun {
  Chains chains;               ///< [C, S, D] kept samples and their log posterior
  torch::Tensor acceptance;    ///< [C] fraction of accepted proposals over the kept steps
  double seconds = 0.0;
  double step_size = NAN;      ///< HMC: the adapted step size
  int64_t evaluations = 0;     ///< log-posterior evaluations (rows)
  int64_t reset_walkers = 0;   ///< ensemble: walkers restarted during burn-in
};

struct TemperedOptions {
  int64_t temperatures = 12;      ///< rungs K (>= 2)
  double max_temperature = 100.0; ///< 1 / beta_{K-1} (> 1)
  EnsembleOptions ensemble;       ///< steps, burn-in, thin, stretch, seed, quiet (per rung)
};

struct TemperedInfo {
  torch::Tensor betas;            ///< [K]
  torch::Tensor mean_log_like;    ///< [K] mean ln L per rung over the kept steps
  torch::Tensor swap_acceptance;  ///< [K-1] between rungs k and k+1
};

/// Ensemble sampling of log_post (batched [B, D] -> [B]) from walkers `init` [W, D]
/// (W even, W >= 2D + 2 recommended; every start must have a finite log posterior).
SamplerRun sample_ensemble(const LogDensityFn& log_post, const torch::Tensor& init,
                           const EnsembleOptions& options, const std::vector<std::string>& names);

/// Parallel-tempered ensemble sampling of log_prior + log_like from walkers `init` [W, D]
/// (copied to every rung); log_like is evaluated only where log_prior is finite.
SamplerRun sample_tempered(const LogDensityFn& log_prior, const LogDensityFn& log_like,
                           const torch::Tensor& init, const TemperedOptions& options,
                           const std::vector<std::string>& names, TemperedInfo* info = nullptr);

/// HMC of log_post from chains `init` [C, D] (finite log posterior at every start).
SamplerRun sample_hmc(const LogDensityFn& log_post, const torch::Tensor& init,
                      const HMCOptions& options, const std::vector<std::string>& names);

/// n starting points drawn from the model's prior with a finite log posterior (redraws up to
/// 100 rounds; RuntimeError if the posterior is -inf nearly everywhere on the prior).
torch::Tensor initial_points(const Model& model, int64_t n);

}  // namespace nfkit
