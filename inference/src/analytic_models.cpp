#include "nfkit/inference/analytic_models.h"

#include <torch/torch.h>

#include <cmath>

#include "nfkit/core/checks.h"

namespace nfkit {
namespace {

constexpr double kLog2Pi = 1.8378770664093453;

double logdet_spd(const torch::Tensor& a) {
  return 2.0 * torch::log(torch::diagonal(torch::linalg_cholesky(a))).sum().item<double>();
}

/// Draws from N(mean, cov) [n, d].
torch::Tensor mvn_draw(const torch::Tensor& mean, const torch::Tensor& chol, int64_t n) {
  return mean + torch::randn({n, mean.size(0)}, torch::kFloat64).matmul(chol.t());
}

}  // namespace

torch::Tensor example_covariance(int64_t d) {
  check_positive_int("example_covariance", "d", d);
  auto cov = torch::empty({d, d}, torch::kFloat64);
  auto acc = cov.accessor<double, 2>();
  // cov = S D R D S with R the AR(1) correlation 0.5^|i-j| (positive definite), scales D in
  // {1, 2, 3} and signs S = (-1)^(i/2): positive definite and non-diagonal.
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) {
      const double si = 1.0 + (i % 3), sj = 1.0 + (j % 3);
      const double sign = ((i / 2 + j / 2) % 2 == 0) ? 1.0 : -1.0;
      acc[i][j] = sign * si * sj * std::pow(0.5, static_cast<double>(std::abs(i - j)));
    }
  return cov;
}

AnalyticProblem gaussian_problem(const torch::Tensor& cov_in, double s) {
  const char* fn = "gaussian_problem";
  check_dim(fn, "cov", cov_in, 2);
  check_positive(fn, "prior_sigma", s);
  auto cov = cov_in.to(torch::kFloat64).contiguous();
  const int64_t d = cov.size(0);
  auto prec = torch::linalg_inv(cov);
  AnalyticProblem p;
  auto eye = torch::eye(d, torch::kFloat64);
  for (int64_t i = 0; i < d; ++i) p.model.add("x" + std::to_string(i), normal_prior(0.0, s));
  p.model.set_log_likelihood([prec](const torch::Tensor& th) {
    return -0.5 * (th.matmul(prec) * th).sum(1);
  });
  p.ln_z = 0.5 * logdet_spd(cov) - 0.5 * logdet_spd(cov + s * s * eye);
  auto post_cov = torch::linalg_inv(prec + eye / (s * s));
  post_cov = 0.5 * (post_cov + post_cov.t());
  auto chol = torch::linalg_cholesky(post_cov);
  auto mean = torch::zeros({d}, torch::kFloat64);
  p.sample_posterior = [mean, chol](int64_t n) { return mvn_draw(mean, chol, n); };
  return p;
}

AnalyticProblem normal_gamma_problem(const torch::Tensor& x_in, double mu0, double tau0, double alpha0,
                                     double beta0) {
  const char* fn = "normal_gamma_problem";
  check_dim(fn, "x", x_in, 1);
  auto x = x_in.to(torch::kFloat64);
  const double n = static_cast<double>(x.size(0));
  if (n < 1) usage_error(fn, "x is empty");
  const double xbar = x.mean().item<double>();
  const double ss = (x - xbar).pow(2).sum().item<double>();
  const double tau_n = tau0 + n, alpha_n = alpha0 + n / 2.0;
  const double beta_n = beta0 + 0.5 * ss + tau0 * n * (xbar - mu0) * (xbar - mu0) / (2.0 * (tau0 + n));
  const double mu_n = (tau0 * mu0 + n * xbar) / (tau0 + n);
  AnalyticProblem p;
  p.model.add(std::vector<std::string>{"mu", "tau"}, normal_gamma_prior(mu0, tau0, alpha0, beta0));
  p.model.set_log_likelihood([n, xbar, ss](const torch::Tensor& th) {
    auto mu = th.select(1, 0), tau = th.select(1, 1);
    return 0.5 * n * torch::log(tau) - 0.5 * n * kLog2Pi - 0.5 * tau * (ss + n * (xbar - mu).pow(2));
  });
  p.ln_z = std::lgamma(alpha_n) - std::lgamma(alpha0) + alpha0 * std::log(beta0) - alpha_n * std::log(beta_n) +
           0.5 * (std::log(tau0) - std::log(tau_n)) - 0.5 * n * kLog2Pi;
  auto post = normal_gamma_prior(mu_n, tau_n, alpha_n, beta_n);
  p.sample_posterior = [post](int64_t k) { return post->sample(k); };
  return p;
}

torch::Tensor fourier_design(const torch::Tensor& t_in, int64_t K) {
  auto t = t_in.to(torch::kFloat64);
  const double T = (t.max() - t.min()).item<double>();
  if (!(T > 0)) usage_error("fourier_design", "t must span a positive interval");
  std::vector<torch::Tensor> cols;
  for (int64_t k = 1; k <= K; ++k) {
    auto arg = 2.0 * M_PI * k * t / T;
    cols.push_back(torch::sin(arg));
    cols.push_back(torch::cos(arg));
  }
  return torch::stack(cols, 1);
}

AnalyticProblem linear_gaussian_problem(const torch::Tensor& t, const torch::Tensor& r_in, double sigma,
                                        const torch::Tensor& phi_in) {
  const char* fn = "linear_gaussian_problem";
  check_dim(fn, "t", t, 1);
  check_dim(fn, "r", r_in, 1);
  check_dim(fn, "phi", phi_in, 1);
  check_positive(fn, "sigma", sigma);
  if (phi_in.size(0) % 2 != 0 || phi_in.size(0) < 2) usage_error(fn, "phi must hold 2K > 0 variances");
  auto r = r_in.to(torch::kFloat64), phi = phi_in.to(torch::kFloat64);
  const int64_t K = phi.size(0) / 2, n = r.size(0);
  auto F = fourier_design(t, K);
  AnalyticProblem p;
  for (int64_t k = 0; k < 2 * K; ++k)
    p.model.add("c" + std::to_string(k), normal_prior(0.0, std::sqrt(phi[k].item<double>())));
  const double s2 = sigma * sigma;
  p.model.set_log_likelihood([F, r, s2, n](const torch::Tensor& c) {
    auto res = r.unsqueeze(0) - c.matmul(F.t());
    return -0.5 * res.pow(2).sum(1) / s2 - 0.5 * n * (kLog2Pi + std::log(s2));
  });
  auto Cz = s2 * torch::eye(n, torch::kFloat64) + F.matmul(torch::diag(phi)).matmul(F.t());
  auto L = torch::linalg_cholesky(Cz);
  auto y = torch::linalg_solve_triangular(L, r.unsqueeze(1), false);
  p.ln_z = -0.5 * y.pow(2).sum().item<double>() - torch::log(torch::diagonal(L)).sum().item<double>() -
           0.5 * n * kLog2Pi;
  auto post_prec = F.t().matmul(F) / s2 + torch::diag(1.0 / phi);
  auto post_cov = torch::linalg_inv(post_prec);
  post_cov = 0.5 * (post_cov + post_cov.t());
  auto mean = post_cov.matmul(F.t().matmul(r)) / s2;
  auto chol = torch::linalg_cholesky(post_cov);
  p.sample_posterior = [mean, chol](int64_t k) { return mvn_draw(mean, chol, k); };
  return p;
}

}  // namespace nfkit
