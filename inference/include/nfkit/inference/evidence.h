#pragma once
// Bayesian evidence z = ∫ L(θ) π(θ) dθ from posterior samples.
//
// Learned harmonic mean (McEwen et al. 2021, arXiv 2111.12720; with normalizing flows,
// Polanska et al. 2024, arXiv 2405.05969). The reciprocal evidence
//   rho = 1/z = E_post[ phi(θ) / (L(θ) π(θ)) ]
// for any normalised phi whose support lies inside the posterior's. phi is a flow trained by
// maximum likelihood on the *training* chains and then concentrated by the base temperature
// T in (0, 1] (the convention of flows/distribution.h: q_T ∝ q^(1/T)); rho is estimated on
// the separate *evaluation* chains. With C evaluation chains, chain j holding N_j samples:
//   rho_j   = (1/N_j) Σ_i phi(θ_i)/(L π)(θ_i),      rho = Σ_j w_j rho_j / Σ_j w_j,  w_j = N_j
//   N_eff   = (Σ w_j)^2 / Σ w_j^2
//   sigma^2 = 1/(N_eff - 1) Σ_j w_j (rho_j - rho)^2 / Σ_j w_j          (variance of rho)
//   kappa   = Σ_j w_j (rho_j - rho)^4 / (s^4 Σ_j w_j),  s^2 = N_eff sigma^2   (kurtosis)
//   nu^4    = sigma^4 / N_eff (kappa - 1 + 2/(N_eff - 1))                (variance of sigma^2)
// all in log space: per chain a log-sum-exp, then a shift by the largest log rho_j.
// ln z = -ln rho - eta^2/2 with eta = sigma/rho: since E[-ln rho_hat] = -ln rho + eta^2/2 +
// O(eta^3), this removes the second-order bias of the log; its standard error is eta
// (delta method). Gaussian per-chain estimates give kappa ≈ 3 and nu^2/sigma^2 ≈
// sqrt(2/(N_eff - 1)); much larger values mean too few samples or heavy tails.
//
// Importance sampling from the same flow at T = 1:  z = E_q[L π / q], with
//   ln z = log-mean-exp(log w),  standard error sqrt(Var(w)/n)/mean(w)  (delta method), and the
//   Kish ESS (Σw)^2/Σw^2.
//
// Bounded parameters (a uniform prior's box, a positive scale): the flow then models
// y = logit((θ - lo)/(hi - lo)) (or log(θ - lo), -log(hi - θ) for one-sided bounds), and
// phi(θ) = q(y) |dy/dθ| has exactly the parameters' support. Without this, a flow's mass beyond
// a hard prior edge is lost from ∫ phi over the posterior and ln z comes out too high.
//
//   nfkit::HarmonicOptions o;  o.temperature = 0.9;
//   auto r = nfkit::learned_harmonic_mean(chains, o);
//   std::cout << r.estimate.ln_z << " ± " << r.estimate.ln_z_error << "\n";
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nfkit/flows/builder.h"
#include "nfkit/flows/trainer.h"
#include "nfkit/inference/chains.h"
#include "nfkit/inference/model.h"

namespace nfkit {

/// The map between bounded parameters θ and unbounded flow coordinates y (identity where a
/// bound is infinite on both sides; no bounds at all = identity everywhere).
struct SupportMap {
  std::vector<std::pair<double, double>> bounds;  ///< per parameter (lo, hi), may be ±inf
  /// {y, log|dy/dθ| [B]}; θ outside the bounds gives non-finite y.
  std::pair<torch::Tensor, torch::Tensor> to_unbounded(const torch::Tensor& theta) const;
  /// {θ, log|dθ/dy| [B]}.
  std::pair<torch::Tensor, torch::Tensor> to_bounded(const torch::Tensor& y) const;
};

struct HarmonicEstimate {
  double ln_z = NAN;
  double ln_z_error = NAN;   ///< eta = sigma/rho
  double ln_rho = NAN;       ///< log of the reciprocal-evidence estimate (no bias correction)
  double ln_sigma = NAN;     ///< log of the standard deviation of rho
  double kurtosis = NAN;     ///< kappa over the per-chain estimates
  double var_var_ratio = NAN;  ///< nu^2 / sigma^2
  double n_eff = NAN;        ///< effective number of chains
  int64_t chains = 0;        ///< evaluation chains
  int64_t samples = 0;       ///< evaluation samples
  double max_term_share = NAN;  ///< largest single sample's share of Σ phi/(Lπ)
  std::vector<std::string> warnings;
  nlohmann::json to_json() const;
};

/// The estimator from log ratios log phi(θ) - log(L π)(θ) [C, S] of C evaluation chains
/// (equal lengths). Needs C >= 2 (UsageError otherwise); warns below 10 chains, below 100
/// samples per chain, and when one sample dominates the sum.
HarmonicEstimate harmonic_from_log_ratios(const torch::Tensor& log_ratio);

struct HarmonicOptions {
  double temperature = 0.9;       ///< base temperature of the flow at evaluation
  double train_fraction = 0.5;    ///< leading share of chains used for training
  double val_fraction = 0.1;      ///< share of training samples held out for validation
  /// Parameter bounds (e.g. Model::support()); empty = unbounded.
  std::vector<std::pair<double, double>> bounds;
  FlowRecipe flow = [] {
    FlowRecipe r;
    r.kind = "nsf";
    r.layers = 4;
    r.hidden = 64;
    return r;
  }();
  TrainerOptions training = TrainerOptions().steps(1500).batch_size(512).lr(2e-3).warmup_steps(50)
                                .min_lr_fraction(0.02).eval_every(100).quiet(true);
};

struct LearnedHarmonicResult {
  HarmonicEstimate estimate;
  std::shared_ptr<Flow> flow;   ///< float64, at temperature 1 on return; models support.to_unbounded(θ)
  SupportMap support;
  TrainReport training;
  int64_t training_chains = 0;
  double seconds = 0.0;
};

/// Splits the chains (leading train_fraction for training), trains the flow (float64) and
/// evaluates the estimator at options.temperature. Needs at least 4 chains (UsageError).
LearnedHarmonicResult learned_harmonic_mean(const Chains& chains, const HarmonicOptions& options);

/// Evaluates the learned harmonic mean with a given (trained) flow on evaluation chains.
HarmonicEstimate harmonic_mean(Flow& flow, const Chains& evaluation, double temperature,
                               const SupportMap& support = {});

struct ImportanceEstimate {
  double ln_z = NAN;
  double ln_z_error = NAN;
  double ess = NAN;           ///< Kish ESS of the n weights
  double ess_fraction = NAN;
  int64_t samples = 0;
  nlohmann::json to_json() const;
};

/// Importance sampling z = E_q[L π / q] with n draws from the flow at temperature 1.
ImportanceEstimate importance_evidence(Flow& flow, const Model& model, int64_t n,
                                       uint64_t seed = 0, int64_t batch = 8192,
                                       const SupportMap& support = {});

/// ln z difference and whether two estimates disagree beyond 3 combined standard errors and
/// beyond 0.02 nats. The floor: importance sampling's delta-method error understates its real
/// error when the flow's tails are slightly light (on the NANOGrav models it was 0.004 where
/// the error against quadrature was 0.016), and 0.02 in ln z is immaterial for a Bayes factor.
struct EvidenceAgreement {
  double difference = NAN;  ///< harmonic - importance
  double sigma = NAN;       ///< combined standard error
  bool agree = true;
};
EvidenceAgreement compare_estimates(const HarmonicEstimate& h, const ImportanceEstimate& is);

}  // namespace nfkit
