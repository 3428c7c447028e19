#pragma once
// Annealed importance sampling (Neal, Statistics and Computing 11, 2001) from a flow q towards a
// Boltzmann target p ∝ exp(-u), with Hamiltonian Monte Carlo transitions (Neal, "MCMC using
// Hamiltonian dynamics", 2011), as in Flow Annealed Importance Sampling Bootstrap (FAB;
// Midgley, Stimper, Simm, Schölkopf & Hernández-Lobato, ICLR 2023, arXiv 2208.01893).
//
// Intermediate densities, for beta_0 = 0 < beta_1 < ... < beta_K < beta_{K+1} = 1:
//   log f_beta(x) = (1 - beta) log q(x) + beta log g(x),
//   g = p^alpha q^(1 - alpha)   (alpha = 1: g = p, plain AIS; alpha = 2: FAB's target p^2 / q,
//                                the importance sampler of least variance for the
//                                alpha = 2 divergence)
// Each particle starts at x_0 ~ q with log w = log f_{beta_1}(x_0) - log q(x_0); transition
// j = 1..K is an HMC move that leaves f_{beta_j} invariant, followed by
// log w += log f_{beta_{j+1}}(x_j) - log f_{beta_j}(x_j) = (beta_{j+1} - beta_j) alpha
// (log p - log q)(x_j). Then E[exp(log w)] = Z_g / Z_q: with alpha = 1 the weights estimate
// the target's normalising constant (log Z = logsumexp(log w) - log n) and reweight the
// final points to p.
//
// Spacing: "linear" (beta evenly spaced) or "geometric" (a quarter of the points linear in
// [0, 0.01], the rest geometric in [0.01, 1], Neal's example, as FAB).
//
// HMC: unit mass, `leapfrog` steps of size eps_j per intermediate density j, one Metropolis
// test. Gradients are clamped to +-max_grad and NaN gradients set to 0 (FAB's safeguards
// against clashes); a proposal whose energy or log q is not finite is rejected. With adapt,
// each run moves eps_j by a factor 1.05 towards the target mean acceptance (0.65; FAB ties
// the sizes with a shared component, nfkit keeps one per density).
//
// Non-finite values: particles whose initial energy or log q is not finite (NaN, +inf
// energies of clashes, points outside the flow's support) are dropped and counted (`failed`);
// the run continues with the rest. The energy is evaluated in float64 on the CPU
// (Energy::evaluate, forces included); the flow in its own dtype and device.
//
//   nfkit::AisOptions o;  o.intermediate = 8;
//   nfkit::AnnealedImportanceSampler ais(*flow, energy, o);
//   auto r = ais.run(4096);
//   double log_z = nfkit::log_mean_exp(r.log_w);
#include <torch/types.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nfkit/flows/distribution.h"
#include "nfkit/physics/energy.h"

namespace nfkit {

struct HmcOptions {
  int64_t leapfrog = 5;         ///< leapfrog steps per HMC move (FAB: 5)
  double step_size = 1.0;       ///< initial eps for every intermediate density (FAB: 1.0)
  double target_accept = 0.65;  ///< mean acceptance the step sizes adapt towards
  double max_grad = 1e3;        ///< gradients clamped to +-max_grad per coordinate
  bool adapt = true;            ///< adapt eps_j after every run
};

struct AisOptions {
  int64_t intermediate = 4;          ///< K intermediate densities (FAB: 4 to 8)
  std::string spacing = "linear";    ///< linear | geometric
  double alpha = 1.0;                ///< 1: anneal to p; 2: FAB's p^2 / q
  HmcOptions hmc;
  /// Checks the values, naming the option (usage errors).
  void check() const;
  nlohmann::json to_json() const;
};

/// The K + 2 inverse temperatures beta_0 = 0, ..., beta_{K+1} = 1 of a spacing.
std::vector<double> ais_betas(int64_t intermediate, const std::string& spacing);

struct AisResult {
  torch::Tensor x;      ///< [m, D] final points (float64, CPU); m = n - failed
  torch::Tensor log_w;  ///< [m] AIS log-weights
  torch::Tensor log_q;  ///< [m] log q at the final points (flow dtype -> float64)
  torch::Tensor u;      ///< [m] reduced energies at the final points
  /// Plain importance weights -u - log q of the initial flow samples [m], for comparison.
  torch::Tensor flow_log_w;
  int64_t failed = 0;   ///< particles dropped at the start (non-finite energy or log q)
  /// Mean acceptance of the HMC move at each intermediate density [K].
  std::vector<double> accept;
  /// Energy-and-force evaluations (rows) of this run: n at the start, then K x leapfrog per
  /// particle kept.
  int64_t energy_evaluations = 0;
};

class AnnealedImportanceSampler {
 public:
  /// flow: the start density q (any Distribution, usually the Flow being trained); energy:
  /// the target's reduced energy over the same coordinates (dim must match).
  AnnealedImportanceSampler(Distribution& flow, Energy& energy, AisOptions options);

  /// n particles from the flow through the annealing path (global torch generator).
  AisResult run(int64_t n);

  const AisOptions& options() const { return options_; }
  const std::vector<double>& betas() const { return betas_; }
  /// The current HMC step size of each intermediate density [K] (adapted by run()).
  const std::vector<double>& step_sizes() const { return eps_; }
  /// Restores step sizes (from a checkpoint); K values, each > 0.
  void set_step_sizes(const std::vector<double>& eps);
  /// Energy evaluations (rows) since construction, over all runs.
  int64_t energy_evaluations() const { return evaluations_; }

 private:
  struct Point {
    torch::Tensor x, log_q, grad_log_q, u, force;  // float64 CPU
  };
  Point evaluate(const torch::Tensor& x);

  Distribution& flow_;
  Energy& energy_;
  AisOptions options_;
  std::vector<double> betas_, eps_;
  int64_t evaluations_ = 0;
};

/// log(mean(exp(v))) of a 1-D tensor (-inf entries count as zeros).
double log_mean_exp(const torch::Tensor& v);

}  // namespace nfkit
