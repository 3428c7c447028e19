// Longer science checks ([slow], run by scripts/test-slow) and device checks ([cuda], which
// return at once without a GPU).
#include <catch2/catch.hpp>

#include "helpers.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/fit_settings.h"
#include "nfkit/flows/toy_densities.h"
#include "nfkit/flows/trainer.h"
#include "nfkit/boltzmann/reweight.h"
#include "nfkit/physics/analytic.h"

using namespace nfkit;
using namespace nfkit::test;

namespace {

// Held-out NLL minus the true entropy after training `kind` on `density` in a fixed budget.
double learning_gap(const std::string& density, const std::string& kind, int64_t steps,
                    int64_t layers, int64_t hidden, int64_t bins, double bound) {
  torch::manual_seed(31);
  auto p = make_toy_density(density);
  const auto x = p->sample(30000), val = p->sample(3000);
  FlowRecipe r;
  r.kind = kind;
  r.dim = p->dim();
  r.layers = layers;
  r.hidden = hidden;
  r.bins = bins;
  r.bound = bound;
  auto flow = build_flow(r, x);
  flow->to(torch::kFloat64);
  Objective obj;
  obj.train = x;
  obj.val = val;
  Trainer t(flow, TrainerOptions().steps(steps).warmup_steps(200).batch_size(512).eval_every(250)
                      .quiet(true).seed(5), obj);
  t.train();
  torch::manual_seed(32);
  torch::NoGradGuard ng;
  return (-flow->log_prob(p->sample(30000))).mean().item<double>() - p->entropy();
}

}  // namespace

TEST_CASE("learning: flows reach the entropy of rings, spirals and banana:8", "[slow]") {
  // Monte-Carlo standard error of the held-out NLL (30000 samples) is ~0.006 nats.
  // Budgets: about a minute each on 2 cores. Not here yet: nsf-ar on banana:8 stopped at
  // 0.10-0.12 nats above the entropy (3000-5000 steps, bound 6; MAF reaches 0.04): the
  // warped coordinates' conditional shifts push mass to the spline interval's edge, where
  // spline-only recipes struggle; interleaving affine or LU layers is the usual remedy.
  struct Job {
    std::string density, kind;
    int64_t steps, layers, hidden, bins;
    double bound, tol;
  };
  for (const auto& j : {Job{"rings", "nsf", 6000, 6, 128, 16, 4.0, 0.05},
                        Job{"spirals", "nsf", 4000, 6, 128, 8, 4.0, 0.05},
                        Job{"banana:8", "maf", 3000, 6, 128, 8, 4.0, 0.1}}) {
    const double gap = learning_gap(j.density, j.kind, j.steps, j.layers, j.hidden, j.bins, j.bound);
    INFO(j.kind << " on " << j.density << ": held-out NLL - entropy = " << gap << " nats");
    CHECK(gap < j.tol);
    CHECK(gap > -0.03);
  }
}

TEST_CASE("cuda: a flow gives the same log-density on the GPU as on the CPU", "[cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: skipped");
    return;
  }
  FlowRecipe r;
  r.kind = "nsf";
  r.dim = 4;
  torch::manual_seed(1);
  auto train = torch::randn({256, 4}, torch::kFloat64);
  auto flow = build_flow(r, train);
  flow->to(torch::kFloat64);
  perturb_parameters(*flow, 0.2, 4);
  const auto x = torch::randn({128, 4}, torch::kFloat64);
  torch::NoGradGuard ng;
  const auto cpu = flow->log_prob(x);
  flow->to(torch::Device(torch::kCUDA));
  const auto gpu = flow->log_prob(x.cuda()).cpu();
  CHECK((gpu - cpu).abs().max().item<double>() < 1e-9);
  auto [xs, lq] = flow->sample_and_log_prob(64);
  CHECK(xs.device().is_cuda());
  CHECK((flow->log_prob(xs) - lq).abs().max().item<double>() < 1e-6);
}

// Many-Well-32 (FAB, Midgley et al. 2023): log Z by importance sampling with a flow trained by
// maximum likelihood on exact samples, against the exact value from 1-D quadrature. FAB
// reports |error| = 0.03; the bound is 0.05.
TEST_CASE("many-well-32: importance-sampling log Z within 0.05 of the exact value", "[slow][boltzmann]") {
  ManyWell mw(32);
  const auto x = mw.sample(60000, 1), val = mw.sample(5000, 2);
  torch::manual_seed(41);
  FlowRecipe r;
  r.kind = "nsf";
  r.dim = 32;
  r.layers = 8;
  r.hidden = 128;
  r.bins = 10;
  r.bound = 5.0;
  auto flow = build_flow(r, x);
  flow->to(torch::kFloat64);
  Objective obj;
  obj.train = x;
  obj.val = val;
  Trainer t(flow, TrainerOptions().steps(3000).warmup_steps(100).batch_size(1024).eval_every(250)
                      .quiet(true).seed(7), obj);
  t.train();
  torch::manual_seed(43);
  torch::NoGradGuard ng;
  const int64_t n = 200000;
  auto [s, log_q] = flow->sample_and_log_prob(n);
  const auto log_w = -mw.evaluate(s) - log_q;
  const double log_z = (torch::logsumexp(log_w, 0) - std::log(static_cast<double>(n))).item<double>();
  const double ess = ess_fraction(log_w);
  WARN("many-well-32: log Z estimate " << log_z << ", exact " << mw.log_z() << ", ESS " << ess);
  CHECK(std::abs(log_z - mw.log_z()) <= 0.05);
}

TEST_CASE("fit defaults: default_fit_settings on each benchmark family, no option set", "[slow]") {
  // What `nfkit flow train` does with only --data: 20000 rows (10% held out), the settings
  // default_fit_settings chooses, held-out gap mean(log p - log q) on 20000 fresh rows (Monte
  // Carlo error ~0.005 nats; funnel ~0.02). Bounds: zuko's NSF with its usual settings on the
  // same data kinds (docs/benchmarks.md "Fit quality", 3 seeds): banana:6 0.089 ± 0.010,
  // mixture:6:16 0.152 ± 0.021, funnel:6 1.86 ± 0.27, rings 0.23 ± 0.06, spirals 0.040 ± 0.002.
  // The 2-D sets get 16 bins (default since 2026-12-07): rings 0.19 -> 0.05 on the bench seeds.
  // The funnel's bound is tighter than zuko's: with two affine autoregressive blocks before the
  // splines (the default for data beyond 4 standardised units since 2026-12-07) nfkit reaches
  // 0.08 ± 0.03 on the bench seeds and 0.07 here; before them it ended at 3.3 with these rows.
  // Measured 2026-12-07: banana:6 0.035, mixture 0.165, funnel 0.073, rings 0.044 (0.232 with
  // 8 bins), spirals 0.018.
  struct Job {
    std::string density;
    double tol;
  };
  for (const auto& j : {Job{"banana:6", 0.08}, Job{"mixture:6:16", 0.2}, Job{"funnel:6", 0.5},
                        Job{"rings", 0.1}, Job{"spirals", 0.04}}) {
    INFO(j.density);
    torch::manual_seed(41);
    auto p = make_toy_density(j.density);
    const auto x = p->sample(20000);
    const auto train = x.narrow(0, 0, 18000), val = x.narrow(0, 18000, 2000);
    auto s = default_fit_settings(train);
    auto flow = build_flow(s.recipe, train);
    flow->to(s.dtype);
    Objective obj;
    obj.train = train.to(s.dtype);
    obj.val = val.to(s.dtype);
    Trainer(flow, TrainerOptions(s.trainer).quiet(true).seed(7), obj).train();
    torch::manual_seed(42);
    const auto test = p->sample(20000);
    torch::NoGradGuard ng;
    const double gap = (p->log_prob(test) - flow->log_prob(test.to(s.dtype)).to(torch::kFloat64))
                           .mean().item<double>();
    INFO("gap " << gap << " nats with " << s.summary());
    CHECK(gap < j.tol);
    CHECK(gap > -0.03);
  }
}
