// boltzmann/ais.h and fab.h: annealed importance sampling with HMC against Gaussian normalising
// constants (alpha = 1 and FAB's alpha = 2 target), truncated targets with infinite energies,
// FAB from the energy alone on a 2-D double well (log Z against quadrature), checkpoint resume
// bit for bit, bad options. Slow: Many-Well-32 and the 40-mode mixture from the energy alone.
#include <catch2/catch.hpp>

#include <cmath>

#include "helpers.h"
#include "nfkit/boltzmann/ais.h"
#include "nfkit/boltzmann/fab.h"
#include "nfkit/boltzmann/reweight.h"
#include "nfkit/core/files.h"
#include "nfkit/flows/builder.h"
#include "nfkit/physics/analytic.h"

using namespace nfkit;
using namespace nfkit::test;

namespace {

// u(x) = sum (x - m)^2 / (2 s^2), optionally +inf where x_0 > cut.
class GaussianEnergy : public TorchEnergy {
 public:
  GaussianEnergy(int64_t dim, double m, double s, double cut = INFINITY)
      : dim_(dim), m_(m), s_(s), cut_(cut) {}
  int64_t dim() const override { return dim_; }
  std::string name() const override { return "gaussian"; }
  // log of int exp(-u): (2 pi s^2)^(D/2), times Phi((cut - m) / s) for the cut.
  double log_z() const {
    double lz = 0.5 * static_cast<double>(dim_) * std::log(2 * M_PI * s_ * s_);
    if (std::isfinite(cut_)) lz += std::log(0.5 * std::erfc(-(cut_ - m_) / (s_ * std::sqrt(2.0))));
    return lz;
  }

 protected:
  torch::Tensor u(const torch::Tensor& x) const override {
    auto u = ((x - m_) * (x - m_)).sum(1) / (2 * s_ * s_);
    if (std::isfinite(cut_)) u = torch::where(x.select(1, 0) > cut_, torch::full_like(u, INFINITY), u);
    return u;
  }

 private:
  int64_t dim_;
  double m_, s_, cut_;
};

// Standard error of log mean exp(log_w): std(w) / mean(w) / sqrt(n).
double log_mean_exp_error(const torch::Tensor& log_w) {
  const auto w = (log_w - log_w.max()).exp();
  return (w.std() / w.mean()).item<double>() / std::sqrt(static_cast<double>(log_w.numel()));
}

}  // namespace

TEST_CASE("ais: spacings of the inverse temperatures", "[boltzmann][fab]") {
  const auto lin = ais_betas(4, "linear");
  REQUIRE(lin.size() == 6);
  for (int i = 0; i < 6; ++i) CHECK(lin[i] == Approx(i / 5.0));
  // Geometric, K = 8: linspace(0, 0.01, 4) without its end, then geomspace(0.01, 1, 7).
  const auto geo = ais_betas(8, "geometric");
  REQUIRE(geo.size() == 10);
  CHECK(geo[0] == 0.0);
  CHECK(geo[1] == Approx(0.01 / 3));
  CHECK(geo[2] == Approx(0.02 / 3));
  CHECK(geo[3] == Approx(0.01));
  CHECK(geo[4] == Approx(std::pow(10.0, -2.0 + 2.0 / 6)));
  CHECK(geo[9] == 1.0);
}

TEST_CASE("ais: HMC annealing estimates Gaussian normalising constants (alpha 1 and 2)", "[boltzmann][fab]") {
  // q = N(0, I_2); p~ = exp(-|x - m|^2 / (2 s^2)).
  const double m = 1.5, s = 0.7;
  GaussianEnergy target(2, m, s);
  auto q = std::make_shared<StandardNormal>(2);
  q->to(torch::kFloat64);
  torch::manual_seed(3);
  AisOptions o;
  o.intermediate = 8;
  o.hmc.step_size = 0.5;
  AnnealedImportanceSampler ais(*q, target, o);
  for (int warm = 0; warm < 10; ++warm) ais.run(512);  // adapt the step sizes
  const auto r = ais.run(20000);
  CHECK(r.failed == 0);
  CHECK(r.energy_evaluations == 20000 * (1 + 8 * 5));
  const double est = log_mean_exp(r.log_w), err = log_mean_exp_error(r.log_w);
  INFO("log Z " << est << " +- " << err << " vs " << target.log_z());
  CHECK(std::abs(est - target.log_z()) < 5 * err + 1e-3);
  // AIS beats plain importance sampling from q on the same particles.
  CHECK(ess_fraction(r.log_w) > 2 * ess_fraction(r.flow_log_w));
  // Reweighted mean of the final points: m in each coordinate.
  const auto w = torch::softmax(r.log_w, 0);
  CHECK((w.unsqueeze(1) * r.x).sum(0).sub(m).abs().max().item<double>() < 0.03);
  for (double a : r.accept) CHECK(a > 0.3);

  // FAB's target g = p~^2 / q: int p~^2 / q = prod over dims of sqrt(2 pi) sqrt(pi / a)
  // exp(b^2 / (4 a) - c), a = 1 / s^2 - 1/2, b = 2 m / s^2, c = m^2 / s^2.
  const double a = 1 / (s * s) - 0.5, b = 2 * m / (s * s), c = m * m / (s * s);
  const double log_zg = 2 * (0.5 * std::log(2 * M_PI) + 0.5 * std::log(M_PI / a) + b * b / (4 * a) - c);
  AisOptions o2 = o;
  o2.alpha = 2.0;
  AnnealedImportanceSampler ais2(*q, target, o2);
  for (int warm = 0; warm < 10; ++warm) ais2.run(512);
  const auto r2 = ais2.run(20000);
  const double est2 = log_mean_exp(r2.log_w), err2 = log_mean_exp_error(r2.log_w);
  INFO("log Z_g " << est2 << " +- " << err2 << " vs " << log_zg);
  CHECK(std::abs(est2 - log_zg) < 5 * err2 + 1e-3);
}

TEST_CASE("ais: particles with infinite energies are dropped and counted; the truncated log Z is right", "[boltzmann][fab]") {
  // u = +inf where x_0 > 1: about Phi(-1) = 15.9% of q's samples fail at the start, and HMC
  // rejects every proposal that crosses the cut.
  GaussianEnergy target(2, 0.5, 1.0, 1.0);
  auto q = std::make_shared<StandardNormal>(2);
  q->to(torch::kFloat64);
  torch::manual_seed(5);
  AisOptions o;
  o.intermediate = 6;
  o.hmc.step_size = 0.4;
  AnnealedImportanceSampler ais(*q, target, o);
  for (int warm = 0; warm < 10; ++warm) ais.run(512);
  const int64_t n = 20000;
  const auto r = ais.run(n);
  CHECK(static_cast<double>(r.failed) / n == Approx(0.5 * std::erfc(1 / std::sqrt(2.0))).margin(0.01));
  CHECK(r.x.size(0) == n - r.failed);
  CHECK((r.x.select(1, 0) <= 1.0).all().item<bool>());
  CHECK(torch::isfinite(r.log_w).all().item<bool>());
  // Dropped particles carry zero weight: the estimate over all n divides by n.
  const double est = log_mean_exp(r.log_w) + std::log(static_cast<double>(r.x.size(0)) / n);
  const double err = log_mean_exp_error(r.log_w);
  INFO("log Z " << est << " +- " << err << " vs " << target.log_z());
  CHECK(std::abs(est - target.log_z()) < 5 * err + 2e-3);
}

namespace {

FabOptions small_fab(int64_t steps, uint64_t seed) {
  FabOptions o;
  o.batch = 256;
  o.buffer_min = 1024;
  o.buffer_size = 8192;
  o.buffer_batches = 4;
  o.ais.intermediate = 2;
  o.ais.hmc.leapfrog = 3;
  o.ais.hmc.step_size = 0.3;
  o.val_samples = 4096;
  o.trainer.steps(steps).lr(3e-3).warmup_steps(20).eval_every(steps / 4).quiet(true).seed(seed);
  return o;
}

std::shared_ptr<Flow> small_flow(uint64_t seed) {
  FlowRecipe r;
  r.kind = "nsf";
  r.dim = 2;
  r.layers = 4;
  r.hidden = 32;
  r.bins = 8;
  r.bound = 5.0;
  r.identity_at_zero = true;
  r.seed = seed;
  torch::manual_seed(seed);
  auto flow = build_flow(r);
  flow->to(torch::kFloat64);
  return flow;
}

}  // namespace

TEST_CASE("fab: a 2-D double well from the energy alone, log Z within 0.02 of quadrature", "[boltzmann][fab]") {
  // bgflow's double well u = x0^4 - 4 x0^2 + x1^2 / 2: two modes at x0 = +-1.41 that a flow
  // started at N(0, I) must both find; log Z by 1-D quadrature.
  DoubleWell target(2);
  auto flow = small_flow(11);
  const auto rep = train_fab(flow, target, small_fab(400, 2));
  CHECK(rep.train.steps_done == 400);
  CHECK(rep.ais_runs >= 100);
  CHECK(rep.failed == 0);
  torch::manual_seed(9);
  const auto e = importance_estimate(*flow, target, 50000);
  INFO("log Z " << e.log_z << " vs " << target.log_z() << ", ESS " << e.ess_fraction);
  CHECK(std::abs(e.log_z - target.log_z()) < 0.02);
  CHECK(e.ess_fraction > 0.8);
  // Both modes carry their mass (equal by symmetry) in the flow's own samples.
  const double right = (e.x.select(1, 0) > 0).to(torch::kFloat64).mean().item<double>();
  CHECK(right == Approx(0.5).margin(0.05));
}

TEST_CASE("fab: an interrupted run resumes bit for bit (buffer and step sizes in the checkpoint)", "[boltzmann][fab]") {
  DoubleWell target(2);
  const std::string ckpt = temp_path("fab_ckpt.h5");
  auto o = small_fab(24, 4);
  o.buffer_batches = 5;  // the interruption falls between two AIS runs
  o.trainer.checkpoint_path(ckpt).eval_every(6);
  auto full = small_flow(3);
  const auto rep_full = train_fab(full, target, o, {}, true);

  auto part = small_flow(3);
  int64_t polls = 0;
  const auto rep1 = train_fab(part, target, o, {}, true, [&] { return ++polls > 13; });
  CHECK(rep1.train.interrupted);
  REQUIRE(file_exists(ckpt));
  auto resumed = small_flow(3);
  int64_t resumed_at = -1;
  const auto rep2 = train_fab(resumed, target, o, {}, false, {}, [&](int64_t s) { resumed_at = s; });
  CHECK(resumed_at == 13);
  CHECK(rep2.train.steps_done == 24);
  CHECK(rep2.step_sizes == rep_full.step_sizes);
  auto pa = full->parameters(), pb = resumed->parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) CHECK(torch::equal(pa[i], pb[i]));
}

TEST_CASE("fab: options out of range are usage errors naming the option", "[boltzmann][fab]") {
  DoubleWell target(2);
  auto flow = small_flow(1);
  auto bad = [&](auto edit, const std::string& what) {
    auto o = small_fab(10, 1);
    edit(o);
    CHECK_THROWS_WITH(train_fab(flow, target, o), Catch::Contains(what));
  };
  bad([](FabOptions& o) { o.buffer_min = 100; }, "--buffer-min");
  bad([](FabOptions& o) { o.buffer_size = 1100; }, "--buffer-size");
  bad([](FabOptions& o) { o.ais.intermediate = 0; }, "--ais-steps");
  bad([](FabOptions& o) { o.ais.spacing = "cubic"; }, "--ais-spacing");
  bad([](FabOptions& o) { o.ais.hmc.leapfrog = 0; }, "--leapfrog");
  bad([](FabOptions& o) { o.ais.hmc.step_size = -1; }, "--step-size");
  ManyWell wrong(4);
  CHECK_THROWS_WITH(train_fab(flow, wrong, small_fab(10, 1)), Catch::Contains("2 dimensions but the energy"));
}
