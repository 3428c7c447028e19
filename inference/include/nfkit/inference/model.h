#pragma once
// Bayesian models: named parameters with normalised priors, and a log-likelihood.
//
// A Prior covers one or more consecutive parameters and gives the *normalised* log density
// (evidences need normalised priors), -inf outside its support. Priors of a Model are
// independent blocks; the Model's log prior is their sum. The unnormalised log posterior is
// log L(theta) + log pi(theta); the likelihood is evaluated only where the prior is finite.
//
// Shapes: parameters theta [B, D] (float64), log densities [B].
//
// Priors (densities on the parameter itself):
//   uniform(lo, hi)        1/(hi - lo) on [lo, hi]
//   log_uniform(lo, hi)    1/(x log(hi/lo)) on [lo, hi], 0 < lo < hi (uniform in log x)
//   normal(mu, sigma)      N(mu, sigma^2); with bounds, truncated to [lo, hi] and
//                          renormalised by Phi((hi-mu)/sigma) - Phi((lo-mu)/sigma)
//   multivariate_normal(mean [k], cov [k, k])   N(mean, cov) over k parameters
//   normal_gamma(mu0, tau0, alpha0, beta0)      over (mu, tau): tau ~ Gamma(alpha0, rate beta0),
//                          mu | tau ~ N(mu0, 1/(tau0 tau)) (Bernardo & Smith 1994)
//
//   nfkit::Model m;
//   m.add("log10_A", nfkit::uniform_prior(-18, -14)).add("gamma", nfkit::uniform_prior(0, 7));
//   m.set_log_likelihood([](const torch::Tensor& th) { return -0.5 * th.pow(2).sum(1); });
//   auto lp = m.log_posterior(theta);   // [B]
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace nfkit {

using LogDensityFn = std::function<torch::Tensor(const torch::Tensor& theta)>;

class Prior {
 public:
  virtual ~Prior() = default;
  /// Number of parameters this prior covers.
  virtual int64_t dim() const = 0;
  /// Normalised log density of x [B, dim()] (float64), -inf outside the support.
  virtual torch::Tensor log_prob(const torch::Tensor& x) const = 0;
  /// n independent draws [n, dim()] (float64) from the global torch generator.
  virtual torch::Tensor sample(int64_t n) const = 0;
  /// Lower and upper ends of the support per parameter (+-inf where unbounded).
  virtual std::vector<std::pair<double, double>> support() const = 0;
  /// {"kind": ..., parameters}.
  virtual nlohmann::json config() const = 0;
  /// Short text for tables and help: "U[-18, -14]".
  virtual std::string describe() const = 0;
};
using PriorPtr = std::shared_ptr<const Prior>;

PriorPtr uniform_prior(double lo, double hi);
PriorPtr log_uniform_prior(double lo, double hi);
PriorPtr normal_prior(double mu, double sigma, double lo = -INFINITY, double hi = INFINITY);
PriorPtr multivariate_normal_prior(const torch::Tensor& mean, const torch::Tensor& cov);
PriorPtr normal_gamma_prior(double mu0, double tau0, double alpha0, double beta0);
/// A prior from config() (round trip); UsageError for an unknown kind or bad values.
PriorPtr make_prior(const nlohmann::json& config);

class Model {
 public:
  Model() = default;
  /// Adds one parameter with a one-dimensional prior.
  Model& add(const std::string& name, PriorPtr prior);
  /// Adds prior->dim() parameters sharing one (joint) prior.
  Model& add(const std::vector<std::string>& names, PriorPtr prior);
  Model& set_log_likelihood(LogDensityFn fn);

  int64_t dim() const { return static_cast<int64_t>(names_.size()); }
  const std::vector<std::string>& names() const { return names_; }
  const std::vector<std::pair<int64_t, PriorPtr>>& priors() const { return priors_; }
  bool has_likelihood() const { return static_cast<bool>(log_likelihood_); }

  torch::Tensor log_prior(const torch::Tensor& theta) const;
  /// log L where the prior is finite, -inf elsewhere (the likelihood is not called there).
  torch::Tensor log_likelihood(const torch::Tensor& theta) const;
  /// log L + log pi, -inf outside the prior's support.
  torch::Tensor log_posterior(const torch::Tensor& theta) const;
  /// Both at once: {log L, log pi}.
  std::pair<torch::Tensor, torch::Tensor> log_terms(const torch::Tensor& theta) const;
  /// n draws from the prior [n, dim].
  torch::Tensor sample_prior(int64_t n) const;
  /// Support per parameter.
  std::vector<std::pair<double, double>> support() const;
  /// Names and priors (not the likelihood).
  nlohmann::json config() const;

 private:
  void check_theta(const char* fn, const torch::Tensor& theta) const;
  std::vector<std::string> names_;
  std::vector<std::pair<int64_t, PriorPtr>> priors_;  // (first column, prior)
  LogDensityFn log_likelihood_;
};

}  // namespace nfkit
