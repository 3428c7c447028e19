#include "nfkit/inference/model.h"

#include <torch/torch.h>

#include <cmath>
#include <sstream>

#include "nfkit/core/checks.h"

namespace nfkit {
namespace {

constexpr double kLog2Pi = 1.8378770664093453;

std::string num(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

torch::Tensor in_box(const torch::Tensor& x, double lo, double hi) {
  return (x >= lo) & (x <= hi);
}

torch::Tensor where_inside(const torch::Tensor& inside, const torch::Tensor& v) {
  return torch::where(inside, v, torch::full_like(v, -INFINITY));
}

class Uniform : public Prior {
 public:
  Uniform(double lo, double hi) : lo_(lo), hi_(hi) {
    check_finite("uniform prior", "lo", lo);
    check_finite("uniform prior", "hi", hi);
    if (!(hi > lo)) usage_error("uniform prior", "hi = " + num(hi) + ", but must exceed lo = " + num(lo));
  }
  int64_t dim() const override { return 1; }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    auto v = x.select(1, 0);
    return where_inside(in_box(v, lo_, hi_), torch::full_like(v, -std::log(hi_ - lo_)));
  }
  torch::Tensor sample(int64_t n) const override {
    return lo_ + (hi_ - lo_) * torch::rand({n, 1}, torch::kFloat64);
  }
  std::vector<std::pair<double, double>> support() const override { return {{lo_, hi_}}; }
  nlohmann::json config() const override { return {{"kind", "uniform"}, {"lo", lo_}, {"hi", hi_}}; }
  std::string describe() const override { return "U[" + num(lo_) + ", " + num(hi_) + "]"; }

 private:
  double lo_, hi_;
};

class LogUniform : public Prior {
 public:
  LogUniform(double lo, double hi) : lo_(lo), hi_(hi) {
    check_finite("log-uniform prior", "hi", hi);
    if (!(lo > 0)) usage_error("log-uniform prior", "lo = " + num(lo) + ", but must be > 0");
    if (!(hi > lo)) usage_error("log-uniform prior", "hi = " + num(hi) + ", but must exceed lo = " + num(lo));
  }
  int64_t dim() const override { return 1; }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    auto v = x.select(1, 0);
    auto inside = in_box(v, lo_, hi_);
    auto safe = torch::where(inside, v, torch::full_like(v, lo_));
    return where_inside(inside, -torch::log(safe) - std::log(std::log(hi_ / lo_)));
  }
  torch::Tensor sample(int64_t n) const override {
    return torch::exp(std::log(lo_) + std::log(hi_ / lo_) * torch::rand({n, 1}, torch::kFloat64));
  }
  std::vector<std::pair<double, double>> support() const override { return {{lo_, hi_}}; }
  nlohmann::json config() const override {
    return {{"kind", "log_uniform"}, {"lo", lo_}, {"hi", hi_}};
  }
  std::string describe() const override { return "LogU[" + num(lo_) + ", " + num(hi_) + "]"; }

 private:
  double lo_, hi_;
};

double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

class NormalP : public Prior {
 public:
  NormalP(double mu, double sigma, double lo, double hi) : mu_(mu), sigma_(sigma), lo_(lo), hi_(hi) {
    check_finite("normal prior", "mu", mu);
    check_finite("normal prior", "sigma", sigma);
    check_positive("normal prior", "sigma", sigma);
    if (std::isnan(lo) || std::isnan(hi) || !(hi > lo))
      usage_error("normal prior", "bounds [" + num(lo) + ", " + num(hi) + "] must satisfy lo < hi");
    mass_ = normal_cdf((hi - mu) / sigma) - normal_cdf((lo - mu) / sigma);
    if (!(mass_ > 1e-300))
      usage_error("normal prior", "bounds [" + num(lo) + ", " + num(hi) +
                                      "] hold no probability of N(" + num(mu) + ", " + num(sigma) + "^2)");
  }
  int64_t dim() const override { return 1; }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    auto v = x.select(1, 0);
    auto z = (v - mu_) / sigma_;
    auto lp = -0.5 * z * z - std::log(sigma_) - 0.5 * kLog2Pi - std::log(mass_);
    return where_inside(in_box(v, lo_, hi_), lp);
  }
  torch::Tensor sample(int64_t n) const override {
    // Inverse-CDF sampling of the truncated normal (exact for any bounds with mass).
    double a = normal_cdf((lo_ - mu_) / sigma_), b = normal_cdf((hi_ - mu_) / sigma_);
    auto u = a + (b - a) * torch::rand({n, 1}, torch::kFloat64);
    u = u.clamp(1e-300, 1.0 - 1e-16);
    return (mu_ + sigma_ * std::sqrt(2.0) * torch::erfinv(2.0 * u - 1.0)).clamp(lo_, hi_);
  }
  std::vector<std::pair<double, double>> support() const override { return {{lo_, hi_}}; }
  nlohmann::json config() const override {
    nlohmann::json j = {{"kind", "normal"}, {"mu", mu_}, {"sigma", sigma_}};
    if (std::isfinite(lo_)) j["lo"] = lo_;
    if (std::isfinite(hi_)) j["hi"] = hi_;
    return j;
  }
  std::string describe() const override {
    std::string s = "N(" + num(mu_) + ", " + num(sigma_) + "^2)";
    if (std::isfinite(lo_) || std::isfinite(hi_)) s += " on [" + num(lo_) + ", " + num(hi_) + "]";
    return s;
  }

 private:
  double mu_, sigma_, lo_, hi_, mass_ = 1.0;
};

class MVNormal : public Prior {
 public:
  MVNormal(const torch::Tensor& mean, const torch::Tensor& cov) {
    const char* fn = "multivariate normal prior";
    check_dim(fn, "mean", mean, 1);
    check_dim(fn, "cov", cov, 2);
    int64_t k = mean.size(0);
    if (k < 1) usage_error(fn, "mean is empty, but must have at least one entry");
    check_size(fn, "cov", cov, 0, k);
    check_size(fn, "cov", cov, 1, k);
    mean_ = mean.to(torch::kFloat64).contiguous();
    cov_ = cov.to(torch::kFloat64).contiguous();
    check_finite(fn, "mean", mean_, Kind::usage);
    check_finite(fn, "cov", cov_, Kind::usage);
    if (!torch::allclose(cov_, cov_.t(), 1e-10, 1e-12)) usage_error(fn, "cov is not symmetric");
    auto [L, info] = torch::linalg_cholesky_ex(cov_);
    if (info.item<int64_t>() != 0) usage_error(fn, "cov is not positive definite");
    chol_ = L;
    log_norm_ = -0.5 * k * kLog2Pi - torch::log(torch::diagonal(L)).sum().item<double>();
  }
  int64_t dim() const override { return mean_.size(0); }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    auto d = (x - mean_).t();  // [k, B]
    auto y = torch::linalg_solve_triangular(chol_, d, /*upper=*/false);
    return log_norm_ - 0.5 * y.pow(2).sum(0);
  }
  torch::Tensor sample(int64_t n) const override {
    return mean_ + torch::randn({n, dim()}, torch::kFloat64).matmul(chol_.t());
  }
  std::vector<std::pair<double, double>> support() const override {
    return std::vector<std::pair<double, double>>(dim(), {-INFINITY, INFINITY});
  }
  nlohmann::json config() const override {
    auto m = std::vector<double>(mean_.data_ptr<double>(), mean_.data_ptr<double>() + dim());
    std::vector<std::vector<double>> c;
    for (int64_t i = 0; i < dim(); ++i) {
      auto row = cov_[i].contiguous();
      c.emplace_back(row.data_ptr<double>(), row.data_ptr<double>() + dim());
    }
    return {{"kind", "multivariate_normal"}, {"mean", m}, {"cov", c}};
  }
  std::string describe() const override { return "N_" + std::to_string(dim()) + "(mean, cov)"; }

 private:
  torch::Tensor mean_, cov_, chol_;
  double log_norm_ = 0.0;
};

class NormalGamma : public Prior {
 public:
  NormalGamma(double mu0, double tau0, double alpha0, double beta0)
      : mu0_(mu0), tau0_(tau0), alpha0_(alpha0), beta0_(beta0) {
    const char* fn = "normal-gamma prior";
    check_finite(fn, "mu0", mu0);
    check_positive(fn, "tau0", tau0);
    check_positive(fn, "alpha0", alpha0);
    check_positive(fn, "beta0", beta0);
  }
  int64_t dim() const override { return 2; }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    auto mu = x.select(1, 0), tau = x.select(1, 1);
    auto inside = tau > 0;
    auto t = torch::where(inside, tau, torch::ones_like(tau));
    auto lp = alpha0_ * std::log(beta0_) - std::lgamma(alpha0_) + (alpha0_ - 1.0) * torch::log(t) -
              beta0_ * t + 0.5 * std::log(tau0_) + 0.5 * torch::log(t) - 0.5 * kLog2Pi -
              0.5 * tau0_ * t * (mu - mu0_).pow(2);
    return where_inside(inside, lp);
  }
  torch::Tensor sample(int64_t n) const override {
    auto tau = torch::_standard_gamma(torch::full({n}, alpha0_, torch::kFloat64)) / beta0_;
    auto mu = mu0_ + torch::randn({n}, torch::kFloat64) / torch::sqrt(tau0_ * tau);
    return torch::stack({mu, tau}, 1);
  }
  std::vector<std::pair<double, double>> support() const override {
    return {{-INFINITY, INFINITY}, {0.0, INFINITY}};
  }
  nlohmann::json config() const override {
    return {{"kind", "normal_gamma"}, {"mu0", mu0_}, {"tau0", tau0_}, {"alpha0", alpha0_}, {"beta0", beta0_}};
  }
  std::string describe() const override {
    return "NormalGamma(" + num(mu0_) + ", " + num(tau0_) + ", " + num(alpha0_) + ", " + num(beta0_) + ")";
  }

 private:
  double mu0_, tau0_, alpha0_, beta0_;
};

double get(const nlohmann::json& j, const char* key, double fallback = NAN) {
  if (!j.contains(key)) {
    if (std::isnan(fallback)) usage_error("prior", std::string("missing field '") + key + "'");
    return fallback;
  }
  if (!j.at(key).is_number()) usage_error("prior", std::string("field '") + key + "' must be a number");
  return j.at(key).get<double>();
}

}  // namespace

PriorPtr uniform_prior(double lo, double hi) { return std::make_shared<Uniform>(lo, hi); }
PriorPtr log_uniform_prior(double lo, double hi) { return std::make_shared<LogUniform>(lo, hi); }
PriorPtr normal_prior(double mu, double sigma, double lo, double hi) {
  return std::make_shared<NormalP>(mu, sigma, lo, hi);
}
PriorPtr multivariate_normal_prior(const torch::Tensor& mean, const torch::Tensor& cov) {
  return std::make_shared<MVNormal>(mean, cov);
}
PriorPtr normal_gamma_prior(double mu0, double tau0, double alpha0, double beta0) {
  return std::make_shared<NormalGamma>(mu0, tau0, alpha0, beta0);
}

PriorPtr make_prior(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("kind") || !j.at("kind").is_string())
    usage_error("prior", "expected an object with a string field 'kind'");
  auto kind = j.at("kind").get<std::string>();
  if (kind == "uniform") return uniform_prior(get(j, "lo"), get(j, "hi"));
  if (kind == "log_uniform") return log_uniform_prior(get(j, "lo"), get(j, "hi"));
  if (kind == "normal")
    return normal_prior(get(j, "mu"), get(j, "sigma"), get(j, "lo", -INFINITY), get(j, "hi", INFINITY));
  if (kind == "normal_gamma")
    return normal_gamma_prior(get(j, "mu0"), get(j, "tau0"), get(j, "alpha0"), get(j, "beta0"));
  if (kind == "multivariate_normal") {
    try {
      auto m = j.at("mean").get<std::vector<double>>();
      auto c = j.at("cov").get<std::vector<std::vector<double>>>();
      auto mean = torch::tensor(m, torch::kFloat64);
      auto cov = torch::empty({static_cast<int64_t>(c.size()), mean.size(0)}, torch::kFloat64);
      for (size_t i = 0; i < c.size(); ++i) {
        if (static_cast<int64_t>(c[i].size()) != mean.size(0))
          usage_error("prior", "cov row " + std::to_string(i) + " has the wrong length");
        cov[i] = torch::tensor(c[i], torch::kFloat64);
      }
      return multivariate_normal_prior(mean, cov);
    } catch (const nlohmann::json::exception&) {
      usage_error("prior", "multivariate_normal needs numeric 'mean' [k] and 'cov' [k][k]");
    }
  }
  usage_error("prior", "unknown kind '" + kind +
                           "', expected uniform, log_uniform, normal, multivariate_normal or normal_gamma");
}

Model& Model::add(const std::string& name, PriorPtr prior) {
  return add(std::vector<std::string>{name}, std::move(prior));
}

Model& Model::add(const std::vector<std::string>& names, PriorPtr prior) {
  if (!prior) usage_error("Model::add", "prior is null");
  if (static_cast<int64_t>(names.size()) != prior->dim())
    usage_error("Model::add", std::to_string(names.size()) + " names for a prior over " +
                                  std::to_string(prior->dim()) + " parameters");
  for (const auto& n : names) {
    if (n.empty()) usage_error("Model::add", "parameter name is empty");
    for (const auto& m : names_)
      if (m == n) usage_error("Model::add", "parameter '" + n + "' is already defined");
  }
  priors_.emplace_back(dim(), std::move(prior));
  names_.insert(names_.end(), names.begin(), names.end());
  return *this;
}

Model& Model::set_log_likelihood(LogDensityFn fn) {
  log_likelihood_ = std::move(fn);
  return *this;
}

void Model::check_theta(const char* fn, const torch::Tensor& theta) const {
  check_defined(fn, "theta", theta);
  check_dim(fn, "theta", theta, 2);
  check_size(fn, "theta", theta, 1, dim());
  check_dtype(fn, "theta", theta, torch::kFloat64);
}

torch::Tensor Model::log_prior(const torch::Tensor& theta) const {
  check_theta("Model::log_prior", theta);
  auto lp = torch::zeros({theta.size(0)}, theta.options());
  for (const auto& [first, prior] : priors_)
    lp = lp + prior->log_prob(theta.narrow(1, first, prior->dim()));
  // NaN parameters are outside every support.
  return torch::where(torch::isnan(lp), torch::full_like(lp, -INFINITY), lp);
}

std::pair<torch::Tensor, torch::Tensor> Model::log_terms(const torch::Tensor& theta) const {
  if (!log_likelihood_) usage_error("Model::log_likelihood", "the model has no likelihood");
  auto lp = log_prior(theta);
  auto ok = torch::isfinite(lp);
  auto ll = torch::full_like(lp, -INFINITY);
  if (ok.all().item<bool>()) {
    ll = log_likelihood_(theta).to(torch::kFloat64);
  } else if (ok.any().item<bool>()) {
    auto idx = ok.nonzero().squeeze(1);
    ll.index_put_({idx}, log_likelihood_(theta.index_select(0, idx)).to(torch::kFloat64));
  }
  NFKIT_ASSERT(ll.dim() == 1 && ll.size(0) == theta.size(0),
               "log-likelihood must return one value per row");
  // A NaN likelihood is treated as zero likelihood (-inf), never passed on.
  ll = torch::where(torch::isnan(ll), torch::full_like(ll, -INFINITY), ll);
  return {ll, lp};
}

torch::Tensor Model::log_likelihood(const torch::Tensor& theta) const { return log_terms(theta).first; }

torch::Tensor Model::log_posterior(const torch::Tensor& theta) const {
  auto [ll, lp] = log_terms(theta);
  return ll + lp;
}

torch::Tensor Model::sample_prior(int64_t n) const {
  check_positive_int("Model::sample_prior", "n", n);
  std::vector<torch::Tensor> cols;
  for (const auto& p : priors_) cols.push_back(p.second->sample(n));
  if (cols.empty()) usage_error("Model::sample_prior", "the model has no parameters");
  return torch::cat(cols, 1);
}

std::vector<std::pair<double, double>> Model::support() const {
  std::vector<std::pair<double, double>> s;
  for (const auto& p : priors_) {
    auto ps = p.second->support();
    s.insert(s.end(), ps.begin(), ps.end());
  }
  return s;
}

nlohmann::json Model::config() const {
  nlohmann::json j = {{"names", names_}, {"priors", nlohmann::json::array()}};
  for (const auto& [first, prior] : priors_) {
    auto c = prior->config();
    c["first"] = first;
    j["priors"].push_back(c);
  }
  return j;
}

}  // namespace nfkit
