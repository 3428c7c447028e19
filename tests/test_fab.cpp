// boltzmann/ais.h and fab.h: annealed importance sampling with HMC against Gaussian normalising
// constants (alpha = 1 and FAB's alpha = 2 target), truncated targets with infinite energies,
// FAB from the energy alone on a 2-D double well (log Z against quadrature), checkpoint resume
// bit for bit, bad options. Slow: Many-Well-32 and the 40-mode mixture from the energy alone.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "helpers.h"
#include "nfkit/boltzmann/ais.h"
#include "nfkit/boltzmann/fab.h"
#include "nfkit/boltzmann/pipeline.h"
#include "nfkit/boltzmann/reweight.h"
#include "nfkit/core/files.h"
#include "nfkit/flows/builder.h"
#include "nfkit/physics/analytic.h"
#include "nfkit/physics/molecule.h"
#include "nfkit/physics/openmm_energy.h"

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

// The proposal of the sampler tests: N(0, I_2) in float64.
std::shared_ptr<StandardNormal> standard_normal_2d() {
  auto q = std::make_shared<StandardNormal>(2);
  q->to(torch::kFloat64);
  return q;
}

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
  auto q = standard_normal_2d();
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

TEST_CASE("ais: particles with infinite energies are dropped and counted, and the truncated log Z is right", "[boltzmann][fab]") {
  // u = +inf where x_0 > 1: about Phi(-1) = 15.9% of q's samples fail at the start, and HMC
  // rejects every proposal that crosses the cut.
  GaussianEnergy target(2, 0.5, 1.0, 1.0);
  auto q = standard_normal_2d();
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

TEST_CASE("smc: resampling with MALA moves keeps log Z and the mean, with ULA and the energy cut", "[boltzmann][fab]") {
  // Sequential Monte Carlo (SBG's refinement) from q = N(0, I_2) to N(1.5, 0.7^2 I): with
  // resampling the log Z estimate is the product of the epochs' mean weights.
  const double m = 1.5, s = 0.7;
  GaussianEnergy target(2, m, s);
  auto q = standard_normal_2d();
  torch::manual_seed(7);
  AisOptions o;
  o.intermediate = 20;
  o.kernel = "mala";
  o.hmc.step_size = 0.5;
  o.resample_threshold = 0.5;
  AnnealedImportanceSampler smc(*q, target, o);
  smc.run(512);  // adapt the step sizes
  const auto r = smc.run(20000);
  CHECK(r.resamplings >= 1);
  CHECK(r.ess.size() == 20);
  CHECK(r.energy_evaluations == 20000 * 21);
  INFO("log Z " << r.log_z << " vs " << target.log_z());
  CHECK(r.log_z == Approx(target.log_z()).margin(0.03));
  const auto w = torch::softmax(r.log_w, 0);
  CHECK((w.unsqueeze(1) * r.x).sum(0).sub(m).abs().max().item<double>() < 0.03);
  // Variance of the reweighted population: s^2 per coordinate.
  const auto mean = (w.unsqueeze(1) * r.x).sum(0);
  const auto var = (w.unsqueeze(1) * (r.x - mean).pow(2)).sum(0);
  CHECK(var.sub(s * s).abs().max().item<double>() < 0.03);

  // ULA: every finite proposal is taken; small steps keep its bias small.
  AisOptions u = o;
  u.kernel = "ula";
  u.hmc.step_size = 0.2;
  AnnealedImportanceSampler ula(*q, target, u);
  const auto ru = ula.run(20000);
  for (double a : ru.accept) CHECK(a == 1.0);
  CHECK(ru.log_z == Approx(target.log_z()).margin(0.1));

  // The energy cut drops initial particles above it (counted, zero weight in log Z).
  AisOptions c = o;
  c.energy_cut = 2.0;
  AnnealedImportanceSampler cut(*q, target, c);
  const auto rc = cut.run(4000);
  CHECK(rc.cut > 1000);
  CHECK(rc.x.size(0) + rc.cut == 4000);
}

TEST_CASE("ais: an energy that throws for a batch is asked row by row, failures get zero weight", "[boltzmann][fab]") {
  // Rows with x_0 > 2 cannot be evaluated: a batch containing one throws.
  class Throwing : public TorchEnergy {
   public:
    int64_t dim() const override { return 2; }
    std::string name() const override { return "throwing"; }
    torch::Tensor evaluate(const torch::Tensor& x, torch::Tensor* forces = nullptr) override {
      if ((x.select(1, 0) > 2.0).any().item<bool>()) throw std::runtime_error("cannot evaluate");
      return TorchEnergy::evaluate(x, forces);
    }

   protected:
    torch::Tensor u(const torch::Tensor& x) const override { return 0.5 * (x * x).sum(1); }
  } energy;
  auto q = standard_normal_2d();
  torch::manual_seed(2);
  AisOptions o;
  o.intermediate = 3;
  AnnealedImportanceSampler ais(*q, energy, o);
  const auto r = ais.run(20000);
  CHECK(static_cast<double>(r.failed) / 20000 == Approx(0.5 * std::erfc(2 / std::sqrt(2.0))).margin(0.004));
  CHECK((r.x.select(1, 0) <= 2.0).all().item<bool>());
  // The target is q itself truncated at x_0 <= 2: log Z = log(2 pi Phi(2)).
  CHECK(r.log_z == Approx(std::log(2 * M_PI * (1 - 0.5 * std::erfc(2 / std::sqrt(2.0))))).margin(0.01));
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

// ---- the command line ------------------------------------------------------------------------

namespace {

std::vector<std::string> fab_args(const std::string& out, std::vector<std::string> extra = {},
                                  const std::string& target = "double-well") {
  std::vector<std::string> a{"fab",          "train",        "--target",      target,        "--out",
                             out,            "--steps",      "300",           "--batch",     "256",
                             "--buffer-min", "1024",         "--buffer-size", "8192",        "--ais-steps",
                             "2",            "--leapfrog",   "3",             "--step-size", "0.3",
                             "--layers",     "4",            "--hidden",      "32",          "--eval-samples",
                             "20000",        "--threads",    "1",             "--seed",      "3"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

}  // namespace

TEST_CASE("cli: fab train and eval on the double well, figures, log Z against quadrature", "[cli][fab]") {
  const auto out = temp_path("fab_dw.h5"), fig = temp_path("fab_dw_samples");
  auto r = run_nfkit(fab_args(out, {"--json", "--quiet", "--figure", fig}));
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto j = last_json(r.out);
  CHECK(j["steps"] == 300);
  CHECK(j["target"] == "double-well:2");
  const double exact = DoubleWell(2).log_z();
  CHECK(j["evaluation"]["log_z_exact"].get<double>() == Approx(exact));
  CHECK(std::abs(j["evaluation"]["log_z_error"].get<double>()) < 0.02);
  CHECK(j["evaluation"]["ess_fraction"].get<double>() > 0.8);
  CHECK(file_exists(out));
  CHECK_FALSE(file_exists(out + ".ckpt"));
  CHECK(file_exists(fig + ".png"));
  CHECK(file_exists(j["training_figure"].get<std::string>()));
  // eval takes the target from the model and repeats train's estimate exactly (same seed).
  auto e = run_nfkit({"fab", "eval", "--model", out, "--samples", "20000", "--seed", "3", "--json", "--threads", "1"});
  INFO(e.err);
  REQUIRE(e.code == 0);
  const auto je = last_json(e.out);
  CHECK(je["target"] == "double-well:2");
  CHECK(je["evaluation"]["log_z"] == j["evaluation"]["log_z"]);
  // gmm40's mode report on an untrained flow of the right dimension: few of 40 modes covered.
  auto g = run_nfkit({"fab", "eval", "--model", out, "--target", "gmm40", "--samples", "2000", "--json"});
  REQUIRE(g.code == 0);
  const auto jg = last_json(g.out);
  CHECK(jg["evaluation"]["modes"] == 40);
  CHECK(jg["evaluation"]["modes_covered"].get<int64_t>() < 10);
}

TEST_CASE("resume: fab train killed with SIGKILL resumes from its checkpoint to the same model", "[cli][fab]") {
  auto args = [](const std::string& out) {
    std::vector<std::string> a{NFKIT_BINARY};
    for (const auto& s : fab_args(out, {"--checkpoint-every", "20", "--quiet"})) a.push_back(s);
    return a;
  };
  const auto killed = temp_path("fab-killed.h5"), whole = temp_path("fab-whole.h5");
  REQUIRE(run_and_sigkill(args(killed), killed + ".ckpt", 3));
  CHECK_FALSE(file_exists(killed));
  CHECK(std::system((shell_command(args(killed)) + " > /dev/null").c_str()) == 0);
  CHECK_FALSE(file_exists(killed + ".ckpt"));
  CHECK(std::system((shell_command(args(whole)) + " > /dev/null").c_str()) == 0);
  std::string what;
  CHECK(same_datasets(killed, whole, &what));
  INFO(what);
}

TEST_CASE("cli: fab bad input gets one line, the right exit code and no file", "[cli][fab]") {
  const auto out = temp_path("fab_bad.h5");
  auto check_fails = [&](const std::vector<std::string>& args, int code, const std::string& needle) {
    check_cli_fails(args, code, needle, out);
  };
  check_fails(fab_args(out, {}, "nope"), 2, "--target");
  check_fails({"fab", "train", "--target", "many-well:3", "--out", out}, 2, "even");
  check_fails({"fab", "train", "--target", "gmm40:x", "--out", out}, 2, "integer");
  check_fails(fab_args(out, {"--ais-spacing", "cubic"}), 2, "--ais-spacing");
  check_fails(fab_args(out, {"--buffer-min", "100"}), 2, "--buffer-min");
  check_fails(fab_args(out, {"--scale", "0"}), 2, "--scale");
  check_fails(fab_args(out, {"--flow", "glow"}), 2, "--flow");
  check_fails({"fab", "eval", "--model", temp_path("missing.h5")}, 1, "missing.h5");
  {
    // A checkpoint (replay buffer included) of another model is refused, naming the file.
    const auto other = temp_path("fab_other.h5");
    auto o = small_fab(50, 1);
    o.trainer.checkpoint_path(other + ".ckpt");
    DoubleWell dw(2);
    int64_t polls = 0;
    REQUIRE(train_fab(small_flow(2), dw, o, {}, true, [&] { return ++polls > 5; }).train.interrupted);
    check_cli_fails(fab_args(other, {"--quiet"}), 1, "different model configuration", other);
  }
  // A model of another target's dimension, and one that does not name its target.
  const auto flow = temp_path("fab_plain_flow.h5");
  REQUIRE(run_nfkit({"flow", "train", "--data", "rings", "--steps", "5", "--n-samples", "300", "--layers", "1",
                     "--hidden", "8", "--quiet", "--out", flow}).code == 0);
  check_fails({"fab", "eval", "--model", flow}, 2, "--target");
  check_fails({"fab", "eval", "--model", flow, "--target", "many-well:4"}, 1, "dimensions");
}

// ---- science checks against FAB's published targets ([slow]) -------------------------------

TEST_CASE("fab: many-well-32 from the energy alone, log Z within 0.05 of the exact value", "[slow][fab]") {
  // FAB (Midgley et al. 2023, Table 2) reports |log Z error| 0.03 with 10^7-scale flow passes;
  // the bound is 0.05. The command's defaults (nsf 8 x [64 x 2], batch 1024, AIS with 4
  // intermediate densities x 5 leapfrog steps, replay buffer), 2000 steps: about 6 minutes on
  // one core. Measured 2026-12-07 at 3000 steps: error 0.0000 +- 0.0008, ESS 93.3%.
  const auto out = temp_path("fab_mw32.h5");
  auto r = run_nfkit({"fab", "train", "--target", "many-well:32", "--steps", "2000", "--out", out, "--threads", "1",
                      "--seed", "1", "--quiet", "--json"});
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto ev = last_json(r.out)["evaluation"];
  WARN("many-well-32 by FAB: log Z error " << ev["log_z_error"] << " +- " << ev["log_z_se"] << ", ESS "
                                           << ev["ess_fraction"]);
  CHECK(std::abs(ev["log_z_error"].get<double>()) <= 0.05);
  CHECK(ev["ess_fraction"].get<double>() > 0.5);
}

TEST_CASE("fab: the 40-mode Gaussian mixture from the energy alone, every mode covered", "[slow][fab]") {
  // FAB's GMM (40 unit-variance modes in [-40, 40]^2): every mode must carry its 1/40 of the
  // reweighted mass, and the flow's own samples must reach each. About 2 minutes on one core.
  const auto out = temp_path("fab_gmm40.h5");
  auto r = run_nfkit({"fab", "train", "--target", "gmm40", "--bins", "16", "--bound", "3", "--steps", "3000",
                      "--out", out, "--threads", "1", "--seed", "1", "--quiet", "--json"});
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto ev = last_json(r.out)["evaluation"];
  WARN("gmm40 by FAB: modes covered " << ev["modes_covered"] << ", max mass error " << ev["max_mode_mass_error"]
                                      << ", log Z error " << ev["log_z_error"] << ", ESS " << ev["ess_fraction"]);
  CHECK(ev["modes_covered"] == 40);
  CHECK(ev["max_mode_mass_error"].get<double>() < 0.005);
  CHECK(std::abs(ev["log_z_error"].get<double>()) < 0.02);
}

// ---- moves with scales, periodic energies, FAB in a molecule's flow coordinates -------------

namespace {

// u(theta) = -kappa cos(theta) on the circle (a von Mises density), wrapped into (-pi, pi]:
// Z = 2 pi I_0(kappa).
class VonMisesEnergy : public TorchEnergy {
 public:
  explicit VonMisesEnergy(double kappa) : kappa_(kappa) {}
  int64_t dim() const override { return 1; }
  std::string name() const override { return "von-mises"; }
  torch::Tensor wrap(const torch::Tensor& x) const override {
    return M_PI - torch::remainder(M_PI - x, 2.0 * M_PI);
  }

 protected:
  torch::Tensor u(const torch::Tensor& x) const override { return -kappa_ * torch::cos(x.select(1, 0)); }

 private:
  double kappa_;
};

// u(x) = sum_i x_i^2 / (2 s_i^2).
class DiagonalGaussianEnergy : public TorchEnergy {
 public:
  explicit DiagonalGaussianEnergy(std::vector<double> s) : s_(torch::tensor(s, torch::kFloat64)) {}
  int64_t dim() const override { return s_.size(0); }
  std::string name() const override { return "diagonal-gaussian"; }
  double log_z() const { return (0.5 * torch::log(2 * M_PI * s_ * s_)).sum().item<double>(); }

 protected:
  torch::Tensor u(const torch::Tensor& x) const override { return (x * x / (2 * s_ * s_)).sum(1); }

 private:
  torch::Tensor s_;
};

}  // namespace

TEST_CASE("ais: moves scaled per coordinate, and on the circle for a periodic energy", "[boltzmann][fab]") {
  SECTION("scales: widths 0.01 and 1 from a proposal three times wider") {
    // Unit-scale moves would need a step below 0.01 for the narrow coordinate and would not
    // move the wide one; with the widths as scales both mix and log Z comes out right.
    const std::vector<double> s = {0.01, 1.0};
    DiagonalGaussianEnergy target(s);
    const auto sq = torch::tensor({0.03, 3.0}, torch::kFloat64);
    auto sample = [&](int64_t n) { return torch::randn({n, 2}, torch::kFloat64) * sq; };
    auto log_prob = [&](const torch::Tensor& x) {
      return (-0.5 * (x / sq).pow(2) - torch::log(sq) - 0.5 * std::log(2 * M_PI)).sum(1);
    };
    AisOptions o;
    o.intermediate = 8;
    o.hmc.step_size = 0.5;
    o.hmc.scales = s;
    torch::manual_seed(11);
    AnnealedImportanceSampler ais(2, sample, log_prob, target, o);
    for (int warm = 0; warm < 10; ++warm) ais.run(512);
    const auto r = ais.run(20000);
    const double est = log_mean_exp(r.log_w), err = log_mean_exp_error(r.log_w);
    INFO("log Z " << est << " +- " << err << " vs " << target.log_z());
    CHECK(std::abs(est - target.log_z()) < 5 * err + 1e-3);
    for (double a : r.accept) CHECK(a > 0.3);
    // The step sizes adapted in scaled units: of order one, not of order 0.01.
    for (double e : ais.step_sizes()) CHECK(e > 0.1);
    AisOptions bad = o;
    bad.hmc.scales = {1.0, 0.0};
    CHECK_THROWS_WITH(AnnealedImportanceSampler(2, sample, log_prob, target, bad),
                      Catch::Contains("scales must be finite and > 0"));
    bad.hmc.scales = {1.0};
    CHECK_THROWS_WITH(AnnealedImportanceSampler(2, sample, log_prob, target, bad),
                      Catch::Contains("1 move scales for 2 dimensions"));
  }
  SECTION("wrap: a von Mises target on the circle from the uniform proposal") {
    const double kappa = 3.0;
    VonMisesEnergy target(kappa);
    auto sample = [](int64_t n) { return (torch::rand({n, 1}, torch::kFloat64) * 2 - 1) * M_PI; };
    // log q of the uniform density on (-pi, pi]; -inf outside, so an unwrapped particle fails.
    auto log_prob = [](const torch::Tensor& x) {
      const auto in = (x.select(1, 0).abs() <= M_PI);
      return torch::where(in, torch::full({x.size(0)}, -std::log(2 * M_PI), x.options()),
                          torch::full({x.size(0)}, -INFINITY, x.options())) + 0.0 * x.select(1, 0);
    };
    AisOptions o;
    o.intermediate = 6;
    o.hmc.step_size = 1.5;  // long moves that cross +-pi
    torch::manual_seed(12);
    AnnealedImportanceSampler ais(1, sample, log_prob, target, o);
    for (int warm = 0; warm < 10; ++warm) ais.run(512);
    const auto r = ais.run(20000);
    CHECK((r.x.abs() <= M_PI).all().item<bool>());
    const double log_z = std::log(2 * M_PI * std::cyl_bessel_i(0.0, kappa));
    // AIS estimates Z / Z_q with Z_q = 1 (q normalised): log Z itself.
    const double est = log_mean_exp(r.log_w), err = log_mean_exp_error(r.log_w);
    INFO("log Z " << est << " +- " << err << " vs " << log_z);
    CHECK(std::abs(est - log_z) < 5 * err + 1e-3);
    for (double a : r.accept) CHECK(a > 0.3);
    // Reweighted E[cos theta] = I_1(kappa) / I_0(kappa).
    const auto w = torch::softmax(r.log_w, 0);
    CHECK((w * torch::cos(r.x.select(1, 0))).sum().item<double>() ==
          Approx(std::cyl_bessel_i(1.0, kappa) / std::cyl_bessel_i(0.0, kappa)).margin(0.02));
  }
}

TEST_CASE("energy: ScaledEnergy is the energy at another temperature, forces and wrap included", "[boltzmann][fab]") {
  VonMisesEnergy vm(2.0);
  ScaledEnergy hot(vm, 0.5);
  const auto x = torch::tensor({{0.3}, {2.0}, {7.0}}, torch::kFloat64);
  torch::Tensor f, fh;
  const auto u = vm.evaluate(x, &f);
  CHECK(torch::allclose(hot.evaluate(x, &fh), 0.5 * u));
  CHECK(torch::allclose(fh, 0.5 * f));
  CHECK(torch::allclose(reduced_energy(hot, x), 0.5 * u));
  CHECK(hot.wrap(x)[2][0].item<double>() == Approx(7.0 - 2 * M_PI));
  CHECK_THROWS_WITH(ScaledEnergy(vm, 0.0), Catch::Contains("factor must be finite and > 0"));
}

TEST_CASE("boltzmann: alanine dipeptide's energy over internal coordinates: periodic, forces, minimum, widths", "[boltzmann][fab]") {
  const auto mol = read_pdb(ala2_pdb());
  const auto z = zmatrix_for(mol);
  const auto map = make_coordinate_map("internal", z);
  OpenMMEnergy openmm(ala2_system(), 300.0, OpenMMOptions{"Reference", 1});
  FlowCoordinateEnergy fe(map, openmm);
  REQUIRE(fe.dim() == 60);
  const auto x = ala2_batch(3, 0.003, 21);
  const auto c = map->to_flow(x).value;
  const int64_t t0 = z.torsions_begin();

  // The density over c: u(X(c)) + logdet, the same as the map's flow energy.
  const auto u = fe.evaluate(c);
  const auto ref = map->flow_energy(c, [&](const torch::Tensor& xx) { return openmm.evaluate(xx); });
  CHECK(torch::allclose(u, ref, 1e-10, 1e-9));
  // Periodic in every torsion, and wrap() maps torsions into (-pi, pi] and nothing else.
  auto shifted = c.clone();
  shifted.narrow(1, t0, 60 - t0).add_(2 * M_PI);
  shifted.narrow(1, t0, 3).sub_(6 * M_PI);
  CHECK(torch::allclose(fe.evaluate(shifted), u, 1e-9, 1e-7));
  const auto w = fe.wrap(shifted);
  CHECK(torch::allclose(w, c, 0, 1e-12));
  CHECK(torch::equal(w.narrow(1, 0, t0), shifted.narrow(1, 0, t0)));

  // Forces against central differences of the energy (a bond, an angle, torsions).
  torch::Tensor f;
  fe.evaluate(c, &f);
  for (int64_t j : {int64_t{0}, int64_t{5}, z.angles_begin() + 3, t0, t0 + 7, int64_t{59}}) {
    const double h = 1e-6;
    auto cp = c.clone(), cm = c.clone();
    cp.select(1, j).add_(h);
    cm.select(1, j).sub_(h);
    const auto fd = -(fe.evaluate(cp) - fe.evaluate(cm)) / (2 * h);
    INFO("coordinate " << j << ": " << f.select(1, j) << " vs " << fd);
    CHECK(torch::allclose(f.select(1, j), fd, 1e-5, 1e-3 * (1 + fd.abs().max().item<double>())));
  }
  // Mirror images have the same energy; keeping the PDB's stereocentre gives them +inf.
  const auto c_mirror = map->to_flow(mirror_image(x)).value;
  CHECK(torch::allclose(fe.evaluate(c_mirror), u, 1e-9, 1e-7));
  FlowCoordinateEnergy l_only(map, openmm, stereocentres(mol));
  CHECK(torch::isinf(l_only.evaluate(c_mirror)).all().item<bool>());
  CHECK(torch::equal(l_only.evaluate(c), u));
  // Outside the map's range (a negative bond): +inf and zero force.
  auto outside = c.narrow(0, 0, 1).clone();
  outside[0][0] = -0.1;
  torch::Tensor fo;
  CHECK(std::isinf(fe.evaluate(outside, &fo)[0].item<double>()));
  CHECK(fo.abs().max().item<double>() == 0.0);

  // The energy-only start: a minimum below the PDB structure's energy with small forces, and
  // widths equal to 1 / sqrt of second differences of the energy itself.
  const auto start = energy_only_start(*map, openmm, mol.positions().reshape({-1}));
  const double u_pdb = openmm.evaluate(mol.positions().reshape({1, -1}))[0].item<double>();
  CHECK(start.u_min < u_pdb - 1.0);
  torch::Tensor fx;
  openmm.evaluate(start.x_min.unsqueeze(0), &fx);
  CHECK(fx.abs().max().item<double>() < 1.0);  // 1/nm, reduced; the PDB's are ~1e3
  REQUIRE(start.scales.size(0) == 60);
  const double h = 1e-3;
  const auto c0 = start.c_min.unsqueeze(0);
  const double u0 = fe.evaluate(c0)[0].item<double>();
  for (int64_t j : {int64_t{0}, int64_t{8}, z.angles_begin(), z.angles_begin() + 10, t0 + 2}) {
    auto cp = c0.clone(), cm = c0.clone();
    cp[0][j] += h;
    cm[0][j] -= h;
    const double curv = (fe.evaluate(cp)[0].item<double>() - 2 * u0 + fe.evaluate(cm)[0].item<double>()) / (h * h);
    const double expected = std::clamp(1 / std::sqrt(curv), 1e-4, 1.0);
    INFO("coordinate " << j << ": curvature " << curv);
    CHECK(start.scales[j].item<double>() == Approx(expected).epsilon(0.03));
  }
  // Bond widths of a few thousandths of a nm, angle widths of a few hundredths of a radian.
  CHECK(start.scales.narrow(0, 0, z.angles_begin()).max().item<double>() < 0.01);
  const auto angles = start.scales.narrow(0, z.angles_begin(), t0 - z.angles_begin());
  CHECK(angles.min().item<double>() > 0.01);
  CHECK(angles.max().item<double>() < 0.3);
  // Stand-in coordinates: the minimum's bonds and angles with these widths, uniform torsions.
  torch::manual_seed(2);
  const auto si = start.stand_in(20000, 1.0);
  CHECK(torch::allclose(si.narrow(1, 0, t0).mean(0), start.c_min.narrow(0, 0, t0), 0,
                        4 * start.scales.narrow(0, 0, t0).max().item<double>() / std::sqrt(20000.0)));
  CHECK(torch::allclose(si.narrow(1, 0, t0).std(0), start.scales.narrow(0, 0, t0), 0.03, 0));
  CHECK((si.narrow(1, t0, 60 - t0).abs() <= M_PI).all().item<bool>());
  CHECK(si.narrow(1, t0, 60 - t0).std().item<double>() == Approx(M_PI / std::sqrt(3.0)).epsilon(0.02));
  // Torsion scans: 19 torsions x 72 points; the grid point nearest the minimum lies within
  // the harmonic estimate of it, and without the uniform part the stand-in torsions follow
  // each scan's Boltzmann factor.
  REQUIRE(start.scans.sizes() == torch::IntArrayRef({19, 72}));
  REQUIRE(start.periodic.size() == 19);
  const double cell = 2 * M_PI / 72;
  for (int64_t k = 0; k < 19; ++k) {
    const double t = start.c_min[t0 + k].item<double>();
    const auto g = std::clamp<int64_t>(static_cast<int64_t>(std::floor((t + M_PI) / cell)), 0, 71);
    const double dt = -M_PI + (g + 0.5) * cell - t;
    const double s2 = std::pow(start.scales[t0 + k].item<double>(), 2);
    INFO("torsion " << k << " at " << t << ": scan " << start.scans[k][g].item<double>());
    CHECK(start.scans[k][g].item<double>() == Approx(dt * dt / (2 * s2)).margin(0.05 + 0.2 * dt * dt / (2 * s2)));
  }
  torch::manual_seed(3);
  const auto sc = start.stand_in(40000, 0.0);
  for (int64_t k : {int64_t{0}, int64_t{9}, int64_t{18}}) {
    const auto cells = ((sc.select(1, t0 + k) + M_PI) / cell).floor().clamp(0, 71).to(torch::kInt64);
    const auto hist = torch::bincount(cells, {}, 72).to(torch::kFloat64) / 40000.0;
    const auto p = torch::softmax(-start.scans[k], 0);
    INFO("torsion " << k);
    CHECK((hist - p).abs().max().item<double>() < 0.01);
  }
}

TEST_CASE("cli: bg train --objective fab trains alanine dipeptide from the energy alone, with temperature annealing and bad input", "[cli][fab][boltzmann]") {
  const auto model = temp_path("fab-ala.h5");
  const std::vector<std::string> base = {"bg", "train", "--objective", "fab", "--out", model, "--threads", "2",
                                         "--pdb", ala2_pdb(), "--system", ala2_system(),
                                         "--layers", "1", "--hidden", "16", "--steps", "6", "--batch-size", "64",
                                         "--buffer-min", "128", "--buffer-size", "1024", "--buffer-batches", "2",
                                         "--val-samples", "128", "--eval-every", "3", "--warmup", "1",
                                         "--pretrain-steps", "20"};
  auto args = base;
  args.push_back("--json");
  const auto r = run_nfkit(args);
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto j = last_json(r.out);
  CHECK(j.at("steps") == 6);
  CHECK(j.at("fab").at("ais_runs").get<int64_t>() >= 3);
  CHECK(j.at("fab").at("u_min").get<double>() < 0);
  // A generator like any other: bg sample reads it.
  const auto samples = temp_path("fab-ala-samples.h5");
  const auto s = run_nfkit({"bg", "sample", "--model", model, "--out", samples, "-n", "200", "--json",
                            "--pdb", ala2_pdb(), "--system", ala2_system()});
  INFO(s.err);
  REQUIRE(s.code == 0);
  CHECK(read_samples(samples, 22).x.size(0) == 200);

  auto with = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const auto none = temp_path("fab-ala-none.h5");
  check_cli_fails({"bg", "train", "--objective", "fbb", "--out", none, "--pdb", ala2_pdb(), "--system", ala2_system()},
                  2, "--objective", none);
  check_cli_fails({"bg", "train", "--out", none, "--pdb", ala2_pdb(), "--system", ala2_system()}, 2, "--md", none);
  check_cli_fails({"bg", "train", "--out", none, "--pdb", ala2_pdb(), "--system", ala2_system(), "--anneal-from", "600"},
                  2, "applies to --objective fab only", none);
  auto a = with({"--reverse-weight", "0.5"});
  a[5] = none;
  check_cli_fails(a, 2, "--reverse-weight", none);
  a = with({"--buffer-min", "16"});
  a[5] = none;
  check_cli_fails(a, 2, "--buffer-min", none);
  a = with({"--pretrain-steps", "-1"});
  a[5] = none;
  check_cli_fails(a, 2, "--pretrain-steps", none);
  a = with({"--anneal-from", "250"});
  a[5] = none;
  check_cli_fails(a, 2, "--anneal-from", none);
  a = with({"--anneal-from", "600", "--anneal-stages", "1"});
  a[5] = none;
  check_cli_fails(a, 2, "--anneal-stages", none);

  // Temperature annealing: two stages, 600 K then 300 K, three steps each; the stage's flow
  // beside the checkpoint is gone at the end.
  const auto annealed = temp_path("fab-ala-annealed.h5");
  a = with({"--anneal-from", "600", "--anneal-stages", "2", "--json"});
  a[5] = annealed;
  const auto ra = run_nfkit(a);
  INFO(ra.err);
  REQUIRE(ra.code == 0);
  const auto ja = last_json(ra.out).at("fab").at("anneal");
  REQUIRE(ja.size() == 2);
  CHECK(ja[0].at("temperature_factor").get<double>() == Approx(2.0));
  CHECK(ja[1].at("temperature_factor").get<double>() == Approx(1.0));
  CHECK(ja[0].at("steps") == 3);
  CHECK(ja[1].at("steps") == 3);
  CHECK(file_exists(annealed));
  CHECK_FALSE(file_exists(annealed + ".ckpt.stage0.h5"));
  CHECK_FALSE(file_exists(annealed + ".ckpt.stage0"));
}

TEST_CASE("resume: bg train --objective fab killed in its last annealing stage resumes to the same model", "[cli][fab][boltzmann]") {
  auto args = [](const std::string& out) {
    return std::vector<std::string>{NFKIT_BINARY, "bg", "train", "--objective", "fab", "--out", out, "--quiet",
                                    "--threads", "1", "--pdb", ala2_pdb(), "--system", ala2_system(),
                                    "--layers", "1", "--hidden", "16", "--steps", "12", "--batch-size", "64",
                                    "--buffer-min", "128", "--buffer-size", "1024", "--buffer-batches", "2",
                                    "--val-samples", "128", "--eval-every", "3", "--warmup", "1",
                                    "--pretrain-steps", "10", "--checkpoint-every", "2",
                                    "--anneal-from", "450", "--anneal-stages", "2"};
  };
  const auto killed = temp_path("fab-ala-killed.h5"), whole = temp_path("fab-ala-whole.h5");
  // Stage 1 (300 K) writes <out>.ckpt; stage 0 (450 K) left its flow beside it.
  REQUIRE(run_and_sigkill(args(killed), killed + ".ckpt", 2));
  CHECK_FALSE(file_exists(killed));
  CHECK(file_exists(killed + ".ckpt.stage0.h5"));
  CHECK(std::system((shell_command(args(killed)) + " > /dev/null").c_str()) == 0);
  CHECK_FALSE(file_exists(killed + ".ckpt"));
  CHECK_FALSE(file_exists(killed + ".ckpt.stage0.h5"));
  CHECK(std::system((shell_command(args(whole)) + " > /dev/null").c_str()) == 0);
  std::string what;
  CHECK(same_datasets(killed, whole, &what));
  INFO(what);
}
