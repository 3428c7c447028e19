#pragma once
// Annealed importance sampling (Neal, Statistics and Computing 11, 2001) and sequential Monte
// Carlo samplers (Del Moral, Doucet & Jasra, JRSS B 68, 2006) from a proposal q (a flow)
// towards a Boltzmann target p ∝ exp(-u), with Hamiltonian Monte Carlo (Neal, "MCMC using
// Hamiltonian dynamics", 2011) or Langevin (MALA / ULA) moves. AIS with HMC is what Flow
// Annealed Importance Sampling Bootstrap trains with (FAB; Midgley, Stimper, Simm, Schölkopf &
// Hernández-Lobato, ICLR 2023, arXiv 2208.01893); SMC with Langevin moves and resampling along
// E_t = (1 - t) E_flow + t E_target is the inference-time refinement of Sequential Boltzmann
// Generators (SBG; Tan, Bose, Lin, Klein, Bronstein & Tong, ICML 2025, arXiv 2502.18462).
//
// Intermediate densities, for beta_0 = 0 < beta_1 < ... < beta_K < beta_{K+1} = 1:
//   log f_beta(x) = (1 - beta) log q(x) + beta log g(x),
//   g = p^alpha q^(1 - alpha)   (alpha = 1: g = p, E_beta = (1 - beta) E_flow + beta E_target
//                                with E_flow = -log q; alpha = 2: FAB's target p^2 / q, the
//                                importance sampler of least variance for the alpha = 2
//                                divergence)
// Each particle starts at x_0 ~ q with log w = log f_{beta_1}(x_0) - log q(x_0). For
// j = 1..K: if resampling is on and the normalised Kish ESS of w is below the threshold, the
// particles are resampled (systematic or multinomial) and their weights reset; then `moves`
// MCMC moves leave f_{beta_j} invariant; then log w += log f_{beta_{j+1}}(x) - log f_{beta_j}(x)
// = (beta_{j+1} - beta_j) alpha (log p - log q)(x). The normalising constant of g is estimated
// by the product over resampling epochs of the mean weight: log Z = sum of log mean w (with
// alpha = 1, the target's log Z; for the reduced energy u, p = exp(-u) / Z).
//
// Spacing: "linear" (beta evenly spaced) or "geometric" (a quarter of the points linear in
// [0, 0.01], the rest geometric in [0.01, 1], Neal's example, as FAB).
//
// Moves (unit mass, or diag(1 / s^2) with per-coordinate scales s): "hmc" `leapfrog` steps of size eps_j and one Metropolis test; "mala" one
// leapfrog step and the test (the Metropolis-adjusted Langevin algorithm, x' = x + h grad log f
// + sqrt(2 h) xi with h = eps^2 / 2); "ula" the same step without the test (unadjusted
// Langevin: cheaper, biased at finite step, as SBG uses it). Gradients are clamped to
// +-max_grad and NaN gradients set to 0 (FAB's safeguards against clashes); a proposal whose
// energy or log q is not finite is rejected (for ula too). With adapt, eps_j moves by a factor
// 1.05 after each run towards the target mean acceptance (0.65; FAB ties the sizes with a
// shared component, nfkit keeps one per density), and on a sampler's first run each density
// starts from the size its predecessor adapted to, so a single long SMC run adapts along its
// path. After every position update the energy's wrap() maps the particles into the
// fundamental domain of its periodic coordinates (torsions), so the moves are those of the torus.
//
// Non-finite values: particles whose initial energy or log q is not finite (NaN, +inf
// energies of clashes, points outside the flow's support) are dropped and counted (`failed`;
// zero weight in log Z); so are those above energy_cut (SBG's energy cut-off filter, off by
// default; a truncation, so log Z then counts them as zero weight, which biases it low). The
// run continues with the rest. The energy is evaluated in float64 on the CPU
// (Energy::evaluate, forces included); the proposal in its own dtype and device.
//
//   nfkit::AisOptions o;  o.intermediate = 8;
//   nfkit::AnnealedImportanceSampler ais(*flow, energy, o);
//   auto r = ais.run(4096);          // r.log_z, r.x, r.log_w
#include <torch/types.h>

#include <functional>
#include <limits>
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
  /// Per-coordinate scales s [D] of the moves (empty: all 1): the moves are those of the
  /// coordinates x / s, i.e. HMC with the diagonal mass matrix diag(1 / s^2). For coordinates
  /// of different units (bond lengths in nm beside torsions in radians) s is their spread.
  std::vector<double> scales;
};

struct AisOptions {
  int64_t intermediate = 4;          ///< K intermediate densities (FAB: 4 to 8; SBG: 100)
  std::string spacing = "linear";    ///< linear | geometric
  double alpha = 1.0;                ///< 1: anneal to p; 2: FAB's p^2 / q
  std::string kernel = "hmc";        ///< hmc | mala | ula (mala and ula take one leapfrog step)
  int64_t moves = 1;                 ///< MCMC moves per intermediate density
  HmcOptions hmc;
  /// Resample when the normalised Kish ESS falls below this (0: never, plain AIS; SBG: 0.9).
  double resample_threshold = 0.0;
  std::string resampling = "systematic";  ///< systematic | multinomial
  /// Drop initial particles whose reduced energy lies above this (SBG's cut-off; +inf: off).
  double energy_cut = std::numeric_limits<double>::infinity();
  /// Checks the values, naming the option (usage errors).
  void check() const;
  nlohmann::json to_json() const;
};

/// The K + 2 inverse temperatures beta_0 = 0, ..., beta_{K+1} = 1 of a spacing.
std::vector<double> ais_betas(int64_t intermediate, const std::string& spacing);

struct AisResult {
  torch::Tensor x;      ///< [m, D] final points (float64, CPU); m = n - failed - cut
  torch::Tensor log_w;  ///< [m] log-weights of the last resampling epoch (all of them for AIS)
  /// log Z_g / Z_q estimated over all n particles (dropped ones count as zero weight).
  double log_z = -std::numeric_limits<double>::infinity();
  torch::Tensor log_q;  ///< [m] log q at the final points (flow dtype -> float64)
  torch::Tensor u;      ///< [m] reduced energies at the final points
  /// Plain importance weights -u - log q of the initial flow samples [m], for comparison.
  torch::Tensor flow_log_w;
  int64_t failed = 0;   ///< particles dropped at the start (non-finite energy or log q)
  int64_t cut = 0;      ///< particles dropped at the start by energy_cut
  int64_t resamplings = 0;
  bool interrupted = false;
  /// Mean acceptance of the moves at each intermediate density [K] (1 for ula, but for
  /// non-finite proposals).
  std::vector<double> accept;
  /// Normalised Kish ESS of the weights before each move [K] (before any resampling).
  std::vector<double> ess;
  /// Energy-and-force evaluations (rows) of this run: n at the start, then K x moves x
  /// leapfrog per particle kept.
  int64_t energy_evaluations = 0;
};

class AnnealedImportanceSampler {
 public:
  /// flow: the start density q (any Distribution, usually the Flow being trained); energy:
  /// the target's reduced energy over the same coordinates (dim must match).
  AnnealedImportanceSampler(Distribution& flow, Energy& energy, AisOptions options);
  /// A proposal given by functions (a Boltzmann generator over Cartesian coordinates):
  /// sample(n) -> x [n, D] and log_prob(x) -> [n], differentiable in x (float64 CPU x).
  AnnealedImportanceSampler(int64_t dim, std::function<torch::Tensor(int64_t)> sample,
                            std::function<torch::Tensor(const torch::Tensor&)> log_prob, Energy& energy,
                            AisOptions options);

  /// n particles from the flow through the annealing path (global torch generator). `stop`
  /// is asked before each intermediate density (result.interrupted, nothing else filled);
  /// progress: a progress line on stderr over the K densities.
  AisResult run(int64_t n, const std::function<bool()>& stop = {}, bool progress = false);

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

  void init();
  /// Resampling indices [m] of log-weights [m].
  torch::Tensor resample_indices(const torch::Tensor& log_w) const;

  Distribution* flow_ = nullptr;  // when built from a Distribution
  int64_t dim_;
  std::function<torch::Tensor(int64_t)> sample_;
  std::function<torch::Tensor(const torch::Tensor&)> log_prob_;
  Energy& energy_;
  AisOptions options_;
  std::vector<double> betas_, eps_;
  std::vector<bool> fresh_;  // not adapted yet: start from the predecessor's size
  int64_t evaluations_ = 0;
};

/// log(mean(exp(v))) of a 1-D tensor (-inf entries count as zeros).
double log_mean_exp(const torch::Tensor& v);

}  // namespace nfkit
