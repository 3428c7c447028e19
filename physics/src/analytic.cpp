#include "nfkit/physics/analytic.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <random>
#include <sstream>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"

namespace nfkit {

double log_integral_1d(const std::function<double(double)>& f, double lo, double hi,
                       int64_t n) {
  if (n % 2 == 1) ++n;
  const double h = (hi - lo) / static_cast<double>(n);
  std::vector<double> v(n + 1);
  double fmin = INFINITY;
  for (int64_t i = 0; i <= n; ++i) {
    v[i] = f(lo + h * static_cast<double>(i));
    fmin = std::min(fmin, v[i]);
  }
  double s = 0.0;
  for (int64_t i = 0; i <= n; ++i) {
    const double w = (i == 0 || i == n) ? 1.0 : (i % 2 == 1 ? 4.0 : 2.0);
    s += w * std::exp(-(v[i] - fmin));
  }
  return std::log(s * h / 3.0) - fmin;
}

// ---- DoubleWell ---------------------------------------------------------------------------

DoubleWell::DoubleWell(int64_t dim, double a, double b, double c, double d)
    : dim_(dim), a_(a), b_(b), c_(c), d_(d) {
  check_positive_int("DoubleWell", "dim", dim);
  check_positive("DoubleWell", "c", c);
  if (dim > 1) check_positive("DoubleWell", "d", d);
}

std::string DoubleWell::name() const { return "double-well-" + std::to_string(dim_); }

torch::Tensor DoubleWell::u(const torch::Tensor& x) const {
  const auto x0 = x.select(1, 0);
  auto e = a_ * x0 + b_ * x0.pow(2) + c_ * x0.pow(4);
  if (dim_ > 1) e = e + 0.5 * d_ * x.slice(1, 1).pow(2).sum(1);
  return e;
}

double DoubleWell::log_z() const {
  const double lz =
      log_integral_1d([&](double t) { return a_ * t + b_ * t * t + c_ * t * t * t * t; },
                      -12.0, 12.0);
  return lz + 0.5 * static_cast<double>(dim_ - 1) * std::log(2.0 * M_PI / d_);
}

// ---- ManyWell -----------------------------------------------------------------------------

namespace {
double many_well_1d(double t) { return t * t * t * t - 6.0 * t * t - 0.5 * t; }
}  // namespace

ManyWell::ManyWell(int64_t dim) : dim_(dim) {
  if (dim < 2 || dim % 2 != 0) usage_error("ManyWell", "dim is " + std::to_string(dim) +
                                                           ", but must be even and >= 2");
}

std::string ManyWell::name() const { return "many-well-" + std::to_string(dim_); }

torch::Tensor ManyWell::u(const torch::Tensor& x) const {
  const auto x1 = x.slice(1, 0, dim_, 2);
  const auto x2 = x.slice(1, 1, dim_, 2);
  return (x1.pow(4) - 6.0 * x1.pow(2) - 0.5 * x1 + 0.5 * x2.pow(2)).sum(1);
}

double ManyWell::log_z() const {
  const double lz1 = log_integral_1d(many_well_1d, -8.0, 8.0);
  return 0.5 * static_cast<double>(dim_) * (lz1 + 0.5 * std::log(2.0 * M_PI));
}

torch::Tensor ManyWell::sample(int64_t n, uint64_t seed) const {
  check_positive_int("ManyWell::sample", "n", n);
  // Tabulated CDF of exp(-f) on [-4, 4] (mass outside < 1e-30), linear interpolation.
  constexpr int64_t kGrid = 200001;
  const double lo = -4.0, hi = 4.0, h = (hi - lo) / (kGrid - 1);
  std::vector<double> cdf(kGrid, 0.0);
  double fmin = INFINITY;
  for (int64_t i = 0; i < kGrid; ++i) fmin = std::min(fmin, many_well_1d(lo + h * i));
  double prev = std::exp(-(many_well_1d(lo) - fmin));
  for (int64_t i = 1; i < kGrid; ++i) {
    const double cur = std::exp(-(many_well_1d(lo + h * i) - fmin));
    cdf[i] = cdf[i - 1] + 0.5 * (prev + cur) * h;
    prev = cur;
  }
  for (auto& c : cdf) c /= cdf.back();
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto out = torch::empty({n, dim_}, torch::kFloat64);
  auto a = out.accessor<double, 2>();
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < dim_; j += 2) {
      const double p = uni(rng);
      const auto it = std::lower_bound(cdf.begin(), cdf.end(), p);
      const int64_t i = std::clamp<int64_t>(it - cdf.begin(), 1, kGrid - 1);
      const double f = (p - cdf[i - 1]) / std::max(cdf[i] - cdf[i - 1], 1e-300);
      a[r][j] = lo + h * (static_cast<double>(i - 1) + f);
      a[r][j + 1] = normal(rng);
    }
  }
  return out;
}

// ---- MuellerBrown -------------------------------------------------------------------------

MuellerBrown::MuellerBrown(double temperature) : temperature_(temperature) {
  check_positive("MuellerBrown", "temperature", temperature);
}

torch::Tensor MuellerBrown::u(const torch::Tensor& x) const {
  static const double A[4] = {-200, -100, -170, 15};
  static const double a[4] = {-1, -1, -6.5, 0.7};
  static const double b[4] = {0, 0, 11, 0.6};
  static const double c[4] = {-10, -10, -6.5, 0.7};
  static const double X0[4] = {1, 0, -0.5, -1};
  static const double Y0[4] = {0, 0.5, 1.5, 1};
  const auto px = x.select(1, 0), py = x.select(1, 1);
  torch::Tensor e = torch::zeros_like(px);
  for (int k = 0; k < 4; ++k) {
    const auto dx = px - X0[k], dy = py - Y0[k];
    e = e + A[k] * torch::exp(a[k] * dx * dx + b[k] * dx * dy + c[k] * dy * dy);
  }
  return e / temperature_;
}

// ---- GaussianMixture40 --------------------------------------------------------------------

GaussianMixture40::GaussianMixture40(uint64_t seed, int64_t modes, double extent) {
  check_positive_int("GaussianMixture40", "modes", modes);
  check_positive("GaussianMixture40", "extent", extent);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uni(-extent, extent);
  means_ = torch::empty({modes, 2}, torch::kFloat64);
  auto m = means_.accessor<double, 2>();
  for (int64_t k = 0; k < modes; ++k) {
    m[k][0] = uni(rng);
    m[k][1] = uni(rng);
  }
}

torch::Tensor GaussianMixture40::u(const torch::Tensor& x) const {
  const auto mu = means_.to(x.options());
  const auto d2 = (x.unsqueeze(1) - mu.unsqueeze(0)).pow(2).sum(2);  // [B, K]
  const double k = static_cast<double>(mu.size(0));
  const auto log_p = torch::logsumexp(-0.5 * d2, 1) - std::log(k) - std::log(2.0 * M_PI);
  return -log_p;
}

torch::Tensor GaussianMixture40::sample(int64_t n, uint64_t seed) const {
  check_positive_int("GaussianMixture40::sample", "n", n);
  auto gen = at::detail::createCPUGenerator(seed);
  const auto k = torch::randint(means_.size(0), {n}, gen, torch::kInt64);
  return means_.index_select(0, k) + torch::randn({n, 2}, gen, torch::kFloat64);
}

// ---- targets by name ----------------------------------------------------------------------

AnalyticTarget make_analytic_target(const std::string& spec) {
  const auto colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const bool has_arg = colon != std::string::npos;
  const std::string arg = has_arg ? spec.substr(colon + 1) : "";
  auto bad = [&](const std::string& why) -> void {
    usage_error("--target", "'" + spec + "': " + why);
  };
  auto int_arg = [&](int64_t dflt) -> int64_t {
    if (!has_arg) return dflt;
    try {
      size_t used = 0;
      const long long v = std::stoll(arg, &used);
      if (used != arg.size()) throw std::invalid_argument(arg);
      return v;
    } catch (const std::exception&) {
      bad("expected an integer after ':', got '" + arg + "'");
    }
    return dflt;
  };
  AnalyticTarget t;
  if (name == "many-well") {
    const int64_t d = int_arg(32);
    if (d < 2 || d % 2 != 0 || d > 4096) bad("the dimension must be even, 2..4096");
    auto mw = std::make_shared<ManyWell>(d);
    t.energy = mw;
    t.spec = "many-well:" + std::to_string(d);
    t.log_z = mw->log_z();
    t.sample = [mw](int64_t n, uint64_t seed) { return mw->sample(n, seed); };
  } else if (name == "double-well") {
    const int64_t d = int_arg(2);
    if (d < 1 || d > 4096) bad("the dimension must be in 1..4096");
    auto dw = std::make_shared<DoubleWell>(d);
    t.energy = dw;
    t.spec = "double-well:" + std::to_string(d);
    t.log_z = dw->log_z();
  } else if (name == "gmm40") {
    const int64_t seed = int_arg(0);
    if (seed < 0) bad("the seed must be >= 0");
    auto g = std::make_shared<GaussianMixture40>(static_cast<uint64_t>(seed));
    t.energy = g;
    t.spec = "gmm40:" + std::to_string(seed);
    t.log_z = 0.0;
    t.extent = 20.0;
    t.sample = [g](int64_t n, uint64_t s) { return g->sample(n, s); };
  } else if (name == "mueller-brown") {
    double temp = 10.0;
    if (has_arg) {
      try {
        size_t used = 0;
        temp = std::stod(arg, &used);
        if (used != arg.size()) throw std::invalid_argument(arg);
      } catch (const std::exception&) {
        bad("expected a temperature after ':', got '" + arg + "'");
      }
      if (!(temp > 0)) bad("the temperature must be > 0");
    }
    t.energy = std::make_shared<MuellerBrown>(temp);
    std::ostringstream os;
    os << "mueller-brown:" << temp;
    t.spec = os.str();
  } else if (name == "dw4" && !has_arg) {
    t.energy = std::make_shared<PairDoubleWell>();
    t.spec = "dw4";
    t.extent = 2.0;
  } else if (name == "lj13" && !has_arg) {
    t.energy = std::make_shared<LennardJones>();
    t.spec = "lj13";
  } else {
    usage_error("--target", "'" + spec + "' is not a target; expected many-well[:D], double-well[:D], "
                            "gmm40[:SEED], mueller-brown[:T], dw4 or lj13");
  }
  return t;
}

// ---- particle systems ---------------------------------------------------------------------

torch::Tensor pair_distances(const torch::Tensor& x, int64_t particles, int64_t spatial_dim) {
  const auto X = x.reshape({x.size(0), particles, spatial_dim});
  const auto iu = torch::triu_indices(particles, particles, 1, torch::TensorOptions().dtype(torch::kInt64).device(x.device()));
  const auto d = X.index_select(1, iu[0]) - X.index_select(1, iu[1]);  // [B, pairs, s]
  return torch::sqrt(d.pow(2).sum(2));
}

PairDoubleWell::PairDoubleWell(int64_t particles, int64_t spatial_dim, double a, double b,
                               double c, double d0)
    : particles_(particles), spatial_(spatial_dim), a_(a), b_(b), c_(c), d0_(d0) {
  if (particles < 2) usage_error("PairDoubleWell", "needs at least 2 particles");
  check_positive_int("PairDoubleWell", "spatial_dim", spatial_dim);
}

std::string PairDoubleWell::name() const { return "dw-" + std::to_string(particles_); }

torch::Tensor PairDoubleWell::u(const torch::Tensor& x) const {
  const auto r = pair_distances(x, particles_, spatial_) - d0_;
  return (a_ * r.pow(4) + b_ * r.pow(2) + c_).sum(1);
}

LennardJones::LennardJones(int64_t particles, int64_t spatial_dim, double eps, double rm,
                           double oscillator_scale, double pair_factor)
    : particles_(particles), spatial_(spatial_dim), eps_(eps), rm_(rm), osc_(oscillator_scale),
      pair_factor_(pair_factor) {
  if (particles < 2) usage_error("LennardJones", "needs at least 2 particles");
  check_positive("LennardJones", "rm", rm);
}

std::string LennardJones::name() const { return "lj-" + std::to_string(particles_); }

torch::Tensor LennardJones::u(const torch::Tensor& x) const {
  const auto q = (rm_ / pair_distances(x, particles_, spatial_)).pow(6);
  auto e = pair_factor_ * eps_ * (q.pow(2) - 2.0 * q).sum(1);
  if (osc_ != 0.0) {
    const auto X = x.reshape({x.size(0), particles_, spatial_});
    e = e + 0.5 * osc_ * (X - X.mean(1, true)).pow(2).sum({1, 2});
  }
  return e;
}

}  // namespace nfkit
