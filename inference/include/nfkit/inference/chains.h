#pragma once
// MCMC chains: storage, files and convergence diagnostics.
//
// Chains hold `samples` [C, S, D] and `ln_posterior` [C, S] (float64): C chains of S steps
// over D named parameters, ln_posterior = log L + log pi with a normalised prior (what the
// learned harmonic mean needs).
//
// Files (read_chains / write_chains pick the format from the extension):
//   .h5   /samples [C, S, D], /ln_posterior [C, S], root attribute `names` (JSON array of
//         strings, optional: x0, x1, ... when absent); root nfkit_format "chains", version 1
//         (files made by other tools without nfkit_format are accepted)
//   .csv  a header `chain,<name 1>,...,<name D>,ln_posterior`, then one row per sample,
//         chain ids 0..C-1 in order; every chain must have the same length
//
// Diagnostics (Gelman et al., Bayesian Data Analysis 3rd ed., ch. 11; Vehtari et al. 2021,
// arXiv 1903.08008, without rank normalisation):
//   split R-hat per parameter: each chain split in halves; sqrt(var+ / W) with
//     var+ = (n - 1)/n W + B/n (n the half length, W the mean within-half variance, B/n the
//     variance of the half means)
//   effective sample size per parameter: C S / tau, tau = -1 + 2 sum of Geyer's initial
//     monotone positive pair sums of the combined autocorrelation
//     rho_t = 1 - (W - mean_c acov_c(t)) / var+
//
//   auto ch = nfkit::read_chains("chains.h5");
//   auto d = nfkit::diagnose(ch);    // d.rhat[k], d.ess[k]
#include <torch/types.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace nfkit {

struct Chains {
  torch::Tensor samples;        ///< [C, S, D] float64
  torch::Tensor ln_posterior;   ///< [C, S] float64
  std::vector<std::string> names;

  int64_t chains() const { return samples.size(0); }
  int64_t steps() const { return samples.size(1); }
  int64_t dim() const { return samples.size(2); }
  /// Chains [first, first + count).
  Chains slice(int64_t first, int64_t count) const;
  /// Checks shapes and that samples are finite and ln_posterior is finite (a sample with
  /// ln_posterior -inf lies outside the prior's support); RuntimeError naming `source`,
  /// the field and the first bad chain/step otherwise.
  void validate(const std::string& source) const;
};

/// Reads .h5 or .csv (see above). RuntimeError naming the file and the field on bad input.
Chains read_chains(const std::string& path);
/// Writes .h5 or .csv atomically (UsageError for another extension).
void write_chains(const std::string& path, const Chains& chains);

struct ChainDiagnostics {
  std::vector<double> rhat;   ///< split R-hat per parameter
  std::vector<double> ess;    ///< effective sample size per parameter
  double max_rhat = 0.0;
  double min_ess = 0.0;
  nlohmann::json to_json(const std::vector<std::string>& names) const;
};

/// Split R-hat and ESS; needs at least 4 steps per chain.
ChainDiagnostics diagnose(const Chains& chains);

}  // namespace nfkit
