#pragma once
// Models with exact evidences, for tests, calibration and examples. Each problem gives the
// Model (prior + likelihood), the exact ln z and an exact posterior sampler, so that an
// estimator can be checked without MCMC error.
//
//   gaussian_problem(cov, s):  L(θ) = exp(-θᵀ cov⁻¹ θ / 2) (unnormalised), prior N(0, s² I);
//       z = |cov|^(1/2) |cov + s² I|^(-1/2); posterior N(0, (cov⁻¹ + I/s²)⁻¹).
//   normal_gamma_problem(x, mu0, tau0, alpha0, beta0): data x_i ~ N(mu, 1/tau), prior
//       NormalGamma (Bernardo & Smith 1994, sec. 5.2):
//       z = Γ(α_n)/Γ(α0) β0^α0/β_n^α_n (τ0/τ_n)^(1/2) (2π)^(-n/2),  τ_n = τ0 + n,
//       α_n = α0 + n/2, β_n = β0 + Σ(x_i - x̄)²/2 + τ0 n (x̄ - μ0)² / (2 (τ0 + n));
//       the posterior is NormalGamma(μ_n, τ_n, α_n, β_n), μ_n = (τ0 μ0 + n x̄)/(τ0 + n).
//   linear_gaussian_problem(t, r, sigma, phi): r = F c + n, F the Fourier basis
//       [sin(2π k t/T), cos(2π k t/T)] for k = 1..K (K = phi.size(0)/2, T = span of t),
//       n ~ N(0, σ² I), prior c ~ N(0, diag phi); z = N(r; 0, σ² I + F diag(phi) Fᵀ).
//
//   auto p = nfkit::gaussian_problem(cov, 5.0);
//   auto x = p.sample_posterior(10000);      // exact draws [n, d]
#include <functional>

#include "nfkit/inference/model.h"

namespace nfkit {

struct AnalyticProblem {
  Model model;
  double ln_z = NAN;
  std::function<torch::Tensor(int64_t)> sample_posterior;  ///< n exact draws [n, d]
};

AnalyticProblem gaussian_problem(const torch::Tensor& cov, double prior_sigma);
/// A d x d covariance with scales 1, 2, 3, 1, ... and correlations ±0.5^|i-j| (signs
/// (-1)^(i/2 + j/2)): non-diagonal, positive definite, the same for each d.
torch::Tensor example_covariance(int64_t d);

AnalyticProblem normal_gamma_problem(const torch::Tensor& x, double mu0, double tau0, double alpha0,
                                     double beta0);

AnalyticProblem linear_gaussian_problem(const torch::Tensor& t, const torch::Tensor& r, double sigma,
                                        const torch::Tensor& phi);
/// The Fourier design matrix [n, 2K] of linear_gaussian_problem.
torch::Tensor fourier_design(const torch::Tensor& t, int64_t K);

}  // namespace nfkit
