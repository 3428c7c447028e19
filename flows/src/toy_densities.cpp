#include "nfkit/flows/toy_densities.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <regex>

#include "nfkit/core/checks.h"

namespace nfkit {
namespace {

const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
constexpr double kLog2Pi = 1.8378770664093453;  // log(2 pi)

// Equal-weight isotropic Gaussian mixture in 2-D.
class Mixture2D : public ToyDensity {
 public:
  Mixture2D(std::string name, torch::Tensor centers, double sigma, double box)
      : name_(std::move(name)), c_(std::move(centers)), s_(sigma), box_(box) {}
  std::string name() const override { return name_; }
  int64_t dim() const override { return 2; }
  double box() const override { return box_; }
  torch::Tensor sample(int64_t n) const override {
    const auto k = torch::randint(c_.size(0), {n}, torch::kInt64);
    return c_.index_select(0, k) + s_ * torch::randn({n, 2}, f64);
  }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    const auto d2 = (x.unsqueeze(1) - c_.unsqueeze(0)).pow(2).sum(-1);  // [B, K]
    return torch::logsumexp(-0.5 * d2 / (s_ * s_), 1) - std::log(double(c_.size(0))) - kLog2Pi -
           2.0 * std::log(s_);
  }
  double entropy() const override { return entropy_by_quadrature(*this); }

 private:
  std::string name_;
  torch::Tensor c_;
  double s_, box_;
};

class Rings : public ToyDensity {
 public:
  std::string name() const override { return "rings"; }
  int64_t dim() const override { return 2; }
  double box() const override { return 4.0; }
  torch::Tensor sample(int64_t n) const override {
    const auto w = torch::tensor({1.0, 2.0, 3.0}, f64);
    const auto k = torch::multinomial(w, n, /*replacement=*/true);
    const auto r = (radii().index_select(0, k) + kSigma * torch::randn({n}, f64)).abs();
    const auto phi = 2.0 * M_PI * torch::rand({n}, f64);
    return torch::stack({r * torch::cos(phi), r * torch::sin(phi)}, 1);
  }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    const auto r = x.pow(2).sum(1).sqrt().clamp_min(1e-300);
    const auto logw = torch::log(torch::tensor({1.0, 2.0, 3.0}, f64) / 6.0);
    const auto z = (r.unsqueeze(1) - radii().unsqueeze(0)) / kSigma;
    const auto lr = torch::logsumexp(logw - 0.5 * z * z, 1) - 0.5 * kLog2Pi - std::log(kSigma);
    return lr - std::log(2.0 * M_PI) - torch::log(r);
  }
  double entropy() const override { return entropy_by_quadrature(*this); }

 private:
  static constexpr double kSigma = 0.1;
  static torch::Tensor radii() { return torch::tensor({1.0, 2.0, 3.0}, f64); }
};

// A curve blurred by isotropic Gaussian noise: x = c(u) + s e, u ~ U(0, 1), e ~ N(0, I), with
// c of constant speed (uniform arc length). The log-density is the midpoint rule over u with
// K nodes, i.e. a K-component mixture; with the node spacing h ~ s/20 used here the relative
// error is ~1e-4 at the curve's ends (the midpoint rule's end term, (h/s)^2/24) and far smaller
// elsewhere (the integrand is smooth on the scale s).
class NoisyCurve : public ToyDensity {
 public:
  using Curve = torch::Tensor (*)(const torch::Tensor& u);  // u [n] -> points [n, 2]
  NoisyCurve(std::string name, Curve c, double s, double box, int64_t nodes)
      : name_(std::move(name)), c_(c), s_(s), box_(box),
        nodes_(c((torch::arange(nodes, f64) + 0.5) / static_cast<double>(nodes))) {}
  std::string name() const override { return name_; }
  int64_t dim() const override { return 2; }
  double box() const override { return box_; }
  torch::Tensor sample(int64_t n) const override {
    return c_(torch::rand({n}, f64)) + s_ * torch::randn({n, 2}, f64);
  }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    std::vector<torch::Tensor> out;
    for (int64_t i = 0; i < x.size(0); i += 4096) {  // [chunk, K] at a time
      const auto xc = x.narrow(0, i, std::min<int64_t>(4096, x.size(0) - i));
      const auto d2 = (xc.unsqueeze(1) - nodes_.unsqueeze(0)).pow(2).sum(-1);
      out.push_back(torch::logsumexp(-0.5 * d2 / (s_ * s_), 1));
    }
    return torch::cat(out) - std::log(double(nodes_.size(0))) - kLog2Pi - 2.0 * std::log(s_);
  }
  double entropy() const override {
    if (std::isnan(entropy_)) entropy_ = entropy_by_quadrature(*this, 500);
    return entropy_;
  }

 private:
  std::string name_;
  Curve c_;
  double s_, box_;
  torch::Tensor nodes_;
  mutable double entropy_ = NAN;
};

// Two moons (sklearn's make_moons with Gaussian noise 0.2), scaled by 3 and shifted by -1 as
// in torchcfm: the upper arc (cos a, sin a) and the lower (1 - cos a, 1/2 - sin a), a in [0, pi].
torch::Tensor moons_curve(const torch::Tensor& u) {
  const auto lower = u >= 0.5;
  const auto a = M_PI * torch::where(lower, 2 * u - 1, 2 * u);
  const auto x = torch::where(lower, 1 - torch::cos(a), torch::cos(a));
  const auto y = torch::where(lower, 0.5 - torch::sin(a), torch::sin(a));
  return torch::stack({3 * x - 1, 3 * y - 1}, 1);
}

// sklearn's S curve in its (x, z) plane: (sin t, sign(t) (cos t - 1)), t in [-3 pi/2, 3 pi/2],
// scaled by 2.
torch::Tensor scurve_curve(const torch::Tensor& u) {
  const auto t = 3 * M_PI * (u - 0.5);
  return torch::stack({2 * torch::sin(t), 2 * torch::sign(t) * (torch::cos(t) - 1)}, 1);
}

class Checkerboard : public ToyDensity {
 public:
  std::string name() const override { return "checkerboard"; }
  int64_t dim() const override { return 2; }
  double box() const override { return 4.5; }
  torch::Tensor sample(int64_t n) const override {
    // Column c in 0..3, row chosen so that (row + col) is even: 8 dark squares of side 2.
    const auto col = torch::randint(4, {n}, torch::kInt64);
    const auto row = 2 * torch::randint(2, {n}, torch::kInt64) + col.remainder(2);
    const auto u = torch::rand({n, 2}, f64);
    return torch::stack({-4.0 + 2.0 * col.to(torch::kFloat64) + 2.0 * u.select(1, 0),
                         -4.0 + 2.0 * row.to(torch::kFloat64) + 2.0 * u.select(1, 1)}, 1);
  }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    const auto cell = torch::floor((x + 4.0) / 2.0);
    const auto inside = ((x >= -4.0) & (x <= 4.0)).all(1);
    const auto dark = (cell.sum(1).remainder(2) == 0);
    return torch::where(inside & dark, torch::full({x.size(0)}, -std::log(32.0), f64),
                        torch::full({x.size(0)}, -INFINITY, f64));
  }
  double entropy() const override { return std::log(32.0); }
};

class Banana : public ToyDensity {
 public:
  explicit Banana(int64_t d) : d_(d) {
    auto i = torch::arange(d, f64);
    cov_ = torch::pow(0.5, (i.unsqueeze(0) - i.unsqueeze(1)).abs());
    chol_ = torch::linalg_cholesky(cov_);
  }
  std::string name() const override { return "banana:" + std::to_string(d_); }
  int64_t dim() const override { return d_; }
  double box() const override { return 4.0; }
  torch::Tensor sample(int64_t n) const override {
    auto x = torch::randn({n, d_}, f64).matmul(chol_.t());
    return warp(x, +1.0);
  }
  torch::Tensor log_prob(const torch::Tensor& y) const override {
    const auto x = warp(y, -1.0);
    const auto u = torch::linalg_solve_triangular(chol_, x.t(), /*upper=*/false).t();
    return -0.5 * u.pow(2).sum(1) - torch::log(torch::diagonal(chol_)).sum() - 0.5 * d_ * kLog2Pi;
  }
  double entropy() const override {
    return 0.5 * d_ * (1.0 + kLog2Pi) + torch::log(torch::diagonal(chol_)).sum().item<double>();
  }

 private:
  // y_{2k+1} = x_{2k+1} + sign * b (x_{2k}^2 - 1); x_{2k} unchanged (unit Jacobian).
  torch::Tensor warp(const torch::Tensor& x, double sign) const {
    auto y = x.clone();
    for (int64_t k = 0; k + 1 < d_; k += 2)
      y.select(1, k + 1).add_(sign * 0.5 * (x.select(1, k).pow(2) - 1.0));
    return y;
  }
  int64_t d_;
  torch::Tensor cov_, chol_;
};

// K equal-weight isotropic Gaussians (sigma 0.5) in D dimensions, centred on the first K
// points of the Halton sequence (bases: the first D primes) scaled to [-4, 4]^D: fixed
// centres that need no random generator, spread evenly (low discrepancy).
class MixtureND : public ToyDensity {
 public:
  MixtureND(int64_t d, int64_t k) : d_(d), k_(k) {
    static const int64_t primes[] = {2,  3,  5,  7,  11, 13, 17, 19, 23, 29, 31, 37, 41,
                                     43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101,
                                     103, 107, 109, 113, 127, 131};
    c_ = torch::empty({k, d}, f64);
    auto a = c_.accessor<double, 2>();
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < d; ++j) {
        // Radical inverse of i + 1 in base primes[j].
        double f = 1, r = 0;
        for (int64_t n = i + 1; n > 0; n /= primes[j]) {
          f /= static_cast<double>(primes[j]);
          r += f * static_cast<double>(n % primes[j]);
        }
        a[i][j] = 8.0 * r - 4.0;
      }
  }
  std::string name() const override {
    return "mixture:" + std::to_string(d_) + ":" + std::to_string(k_);
  }
  int64_t dim() const override { return d_; }
  double box() const override { return 5.5; }
  torch::Tensor sample(int64_t n) const override {
    const auto k = torch::randint(k_, {n}, torch::kInt64);
    return c_.index_select(0, k) + kSigma * torch::randn({n, d_}, f64);
  }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    const auto d2 = (x.unsqueeze(1) - c_.unsqueeze(0)).pow(2).sum(-1);  // [B, K]
    return torch::logsumexp(-0.5 * d2 / (kSigma * kSigma), 1) - std::log(double(k_)) -
           0.5 * double(d_) * kLog2Pi - double(d_) * std::log(kSigma);
  }
  // No closed form: -E[log p] by Monte Carlo over 10^6 samples of a fixed generator
  // (standard error ~1e-3 nats), or quadrature in 2-D.
  double entropy() const override {
    if (d_ == 2) return entropy_by_quadrature(*this);
    torch::NoGradGuard ng;
    auto gen = at::detail::createCPUGenerator(12345);
    double total = 0;
    const int64_t chunk = 100000, chunks = 10;
    for (int64_t c = 0; c < chunks; ++c) {
      const auto k = torch::randint(k_, {chunk}, gen, torch::TensorOptions().dtype(torch::kInt64));
      const auto x = c_.index_select(0, k) + kSigma * torch::randn({chunk, d_}, gen, f64);
      total -= log_prob(x).sum().item<double>();
    }
    return total / static_cast<double>(chunk * chunks);
  }

 private:
  static constexpr double kSigma = 0.5;
  int64_t d_, k_;
  torch::Tensor c_;
};

// Neal's funnel (Neal 2003, "Slice sampling", Ann. Statist. 31, 705): x_0 ~ N(0, 3^2),
// x_i | x_0 ~ N(0, e^{x_0}) for i = 1..D-1. Entropy
// H = 0.5 log(2 pi e 9) + (D - 1) (0.5 log(2 pi e) + E[x_0] / 2), with E[x_0] = 0.
class Funnel : public ToyDensity {
 public:
  explicit Funnel(int64_t d) : d_(d) {}
  std::string name() const override { return "funnel:" + std::to_string(d_); }
  int64_t dim() const override { return d_; }
  double box() const override { return 9.0; }
  torch::Tensor sample(int64_t n) const override {
    const auto z = torch::randn({n, d_}, f64);
    const auto v = 3.0 * z.narrow(1, 0, 1);
    return torch::cat({v, z.narrow(1, 1, d_ - 1) * torch::exp(0.5 * v)}, 1);
  }
  torch::Tensor log_prob(const torch::Tensor& x) const override {
    const auto v = x.select(1, 0);
    const auto rest = x.narrow(1, 1, d_ - 1);
    const double m = static_cast<double>(d_ - 1);
    return -0.5 * (v / 3.0).pow(2) - std::log(3.0) - 0.5 * kLog2Pi -
           0.5 * rest.pow(2).sum(1) * torch::exp(-v) - 0.5 * m * v - 0.5 * m * kLog2Pi;
  }
  double entropy() const override {
    return 0.5 * (1.0 + kLog2Pi) + std::log(3.0) + 0.5 * double(d_ - 1) * (1.0 + kLog2Pi);
  }

 private:
  int64_t d_;
};

// The unit vectors at multiples of 45 degrees (torchcfm's 8gaussians centres).
torch::Tensor eight_centers() {
  const auto a = torch::arange(8, f64) * (M_PI / 4);
  return torch::stack({torch::cos(a), torch::sin(a)}, 1);
}

torch::Tensor circle_centers() {
  auto a = torch::arange(8, f64) * (2.0 * M_PI / 8.0);
  return torch::stack({3.0 * torch::cos(a), 3.0 * torch::sin(a)}, 1);
}

torch::Tensor spiral_centers() {
  const auto t = (torch::arange(100, f64) + 0.5) / 100.0;
  const auto r = 0.5 + 3.5 * t, phi = 3.0 * M_PI * t;
  const auto arm = torch::stack({r * torch::cos(phi), r * torch::sin(phi)}, 1);
  return torch::cat({arm, -arm}, 0);
}

}  // namespace

double entropy_by_quadrature(const ToyDensity& p, int64_t n) {
  torch::NoGradGuard ng;
  const double L = p.box(), h = 2.0 * L / static_cast<double>(n);
  const auto g = -L + h * (torch::arange(n, f64) + 0.5);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {  // one grid row at a time keeps memory small
    const auto x = torch::stack({torch::full({n}, g[i].item<double>(), f64), g}, 1);
    const auto lp = p.log_prob(x);
    total -= torch::where(torch::isfinite(lp), torch::exp(lp) * lp, torch::zeros_like(lp)).sum().item<double>();
  }
  return total * h * h;
}

const std::vector<std::string>& toy_density_names() {
  static const std::vector<std::string> names{"gmm", "rings", "spirals", "checkerboard", "banana",
                                              "mixture", "funnel", "8gaussians", "moons", "scurve"};
  return names;
}

bool is_toy_density(const std::string& spec) {
  static const std::regex re(
      "^(gmm|rings|spirals|checkerboard|banana(:[0-9]+)?|mixture:[0-9]+:[0-9]+|funnel(:[0-9]+)?|"
      "8gaussians|moons|scurve)$");
  return std::regex_match(spec, re);
}

std::unique_ptr<ToyDensity> make_toy_density(const std::string& spec) {
  if (!is_toy_density(spec))
    usage_error("--data", "'" + spec + "' is not a built-in dataset, a .csv file or file.h5:/dataset; "
                          "built-ins are gmm, rings, spirals, checkerboard, banana[:D], "
                          "mixture:D:K, funnel[:D], 8gaussians, moons, scurve");
  if (spec == "gmm") return std::make_unique<Mixture2D>("gmm", circle_centers(), 0.5, 6.0);
  if (spec == "spirals") return std::make_unique<Mixture2D>("spirals", spiral_centers(), 0.25, 5.5);
  if (spec == "rings") return std::make_unique<Rings>();
  if (spec == "8gaussians")  // torchcfm: radius 5, covariance sqrt(0.1) I (std 0.1^(1/4))
    return std::make_unique<Mixture2D>("8gaussians", 5.0 * eight_centers(), std::pow(0.1, 0.25), 9.0);
  if (spec == "moons") return std::make_unique<NoisyCurve>("moons", moons_curve, 0.6, 9.0, 640);
  if (spec == "scurve") return std::make_unique<NoisyCurve>("scurve", scurve_curve, 0.2, 6.0, 1900);
  if (spec == "checkerboard") return std::make_unique<Checkerboard>();
  auto dim_arg = [&](const std::string& what, const std::string& v, int64_t lo, int64_t hi) {
    const int64_t d = v.size() > 9 ? hi + 1 : std::stoll(v);  // more than 9 digits: too large
    if (d < lo || d > hi)
      usage_error("--data", what + " is " + v + ", but must be in " + std::to_string(lo) + ".." +
                                std::to_string(hi));
    return d;
  };
  if (spec.rfind("mixture:", 0) == 0) {
    const auto colon = spec.find(':', 8);
    const int64_t d = dim_arg("mixture dimension", spec.substr(8, colon - 8), 1, 32);
    const int64_t k = dim_arg("mixture component count", spec.substr(colon + 1), 1, 4096);
    return std::make_unique<MixtureND>(d, k);
  }
  if (spec.rfind("funnel", 0) == 0)
    return std::make_unique<Funnel>(spec.size() > 6 ? dim_arg("funnel dimension", spec.substr(7), 2, 1024) : 4);
  const int64_t d = spec.size() > 7 ? dim_arg("banana dimension", spec.substr(7), 2, 1024) : 4;
  return std::make_unique<Banana>(d);
}

}  // namespace nfkit
