#pragma once
// Importance reweighting of generated samples to the Boltzmann distribution (Noé et al. 2019):
// self-normalised importance sampling with log w = -u(x) - log q(x).
//
//   * ess_fraction: Kish's effective sample size (sum w)^2 / sum w^2, divided by n.
//   * clip_log_weights: caps the largest log-weights at a quantile (off by default in the
//     pipeline; when used, reports say so). Clipping trades variance for bias.
//   * resample: multinomial resampling to unweighted samples.
//   * weighted_mean / bootstrap: reweighted expectations with bootstrap error bars (Efron 1979),
//     resampling the n weighted samples with replacement.
//
// Non-finite log-weights (u = +inf: clashes) count as zero weight; NaN is a bug upstream and
// raises an error naming the sample.
//
//   double ess = nfkit::ess_fraction(log_w);
#include <torch/types.h>

#include <functional>

namespace nfkit {

/// log w = -u - log q(x) [n] of reduced energies u [n] and generator log-densities log_q [n];
/// -inf (zero weight) where u is +inf or either is NaN.
torch::Tensor log_importance_weights(const torch::Tensor& u, const torch::Tensor& log_q);

/// Normalised weights [n] (sum 1) from log-weights [n]; -inf -> 0. Throws on NaN or if every
/// weight is zero.
torch::Tensor normalized_weights(const torch::Tensor& log_w);

/// Kish ESS / n in (0, 1].
double ess_fraction(const torch::Tensor& log_w);
/// ess_fraction, but 0 where there is no weight or every weight is zero (an untrained model,
/// an energy that failed everywhere, a sampler whose particles all died): a result, not an error.
double ess_fraction_or_zero(const torch::Tensor& log_w);

/// log w with every value above the `quantile` quantile (e.g. 0.999) of the finite log-weights
/// set to it.
torch::Tensor clip_log_weights(const torch::Tensor& log_w, double quantile);

/// Indices [m] drawn with probabilities w (multinomial resampling), seeded.
torch::Tensor resample(const torch::Tensor& log_w, int64_t m, uint64_t seed);

/// sum_i w_i f_i for values f [n] and log-weights [n].
double weighted_mean(const torch::Tensor& f, const torch::Tensor& log_w);

struct Estimate {
  double value = 0.0;
  double error = 0.0;  ///< bootstrap standard deviation
};

/// statistic(indices) evaluated on the full sample and on `rounds` bootstrap resamples of the
/// indices 0..n-1; value = full-sample statistic, error = std over resamples (non-finite
/// resamples skipped).
Estimate bootstrap(int64_t n, const std::function<double(const torch::Tensor& idx)>& statistic,
                   int64_t rounds, uint64_t seed,
                   int64_t block = 1);

}  // namespace nfkit
