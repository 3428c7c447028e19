// Distributions and flows: temperature convention, normalisation, sampling consistency,
// model files, built-in densities, and learning to the true entropy.
#include <catch2/catch.hpp>

#include "helpers.h"
#include "nfkit/core/h5.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/coupling.h"
#include "nfkit/flows/losses.h"
#include "nfkit/flows/toy_densities.h"
#include "nfkit/flows/trainer.h"

using namespace nfkit;
using namespace nfkit::test;

namespace {
const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);

// Integral of exp(log_prob) over [-L, L]^2 by the midpoint rule on an n x n grid.
double integrate_2d(Distribution& q, double L, int64_t n) {
  torch::NoGradGuard ng;
  const double h = 2.0 * L / n;
  const auto g = -L + h * (torch::arange(n, f64) + 0.5);
  auto mesh = torch::meshgrid({g, g}, "ij");
  const auto pts = torch::stack({mesh[0].reshape({-1}), mesh[1].reshape({-1})}, 1);
  return torch::exp(q.log_prob(pts)).sum().item<double>() * h * h;
}

// Integral over the box plus the mass outside it, the latter estimated from 1e5 samples
// (Monte-Carlo error <= 0.0016): equals 1 for a normalised density.
double total_mass_2d(Distribution& q, double L, int64_t n) {
  torch::NoGradGuard ng;
  torch::manual_seed(77);
  const auto s = q.sample(100000);
  const double outside = (s.abs().amax(1) > L).to(torch::kFloat64).mean().item<double>();
  return integrate_2d(q, L, n) + outside;
}
}  // namespace

TEST_CASE("temperature: log q at the base mode is analytic for T in {1, 0.5, 0.1}", "[flows]") {
  const int64_t d = 3;
  auto base = std::make_shared<StandardNormal>(d);
  base->to(torch::kFloat64);
  auto diag = std::make_shared<DiagonalNormal>(d);
  diag->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    diag->named_parameters()["loc"].copy_(torch::tensor({1.0, -2.0, 0.5}, f64));
    diag->named_parameters()["log_scale"].copy_(torch::tensor({0.1, -0.3, 0.7}, f64));
  }
  for (double T : {1.0, 0.5, 0.1}) {
    base->set_temperature(T);
    diag->set_temperature(T);
    const double expect = -0.5 * d * std::log(2.0 * M_PI * T);
    CHECK(base->log_prob(torch::zeros({1, d}, f64)).item<double>() == Approx(expect).epsilon(1e-14));
    CHECK(diag->log_prob(torch::tensor({{1.0, -2.0, 0.5}}, f64)).item<double>() ==
          Approx(expect - (0.1 - 0.3 + 0.7)).epsilon(1e-14));
    // Sample variance is T (Monte-Carlo error of 2e5 samples: sd of the variance ~ 0.003 T).
    torch::manual_seed(1);
    auto s = base->sample(200000);
    CHECK(s.var(0).mean().item<double>() == Approx(T).epsilon(0.01));
    // A flow's log q at the image of the base mode: base term + log|det| there.
    auto t = std::make_shared<AffineCoupling>(CouplingOptions(d));
    t->to(torch::kFloat64);
    perturb_parameters(*t, 0.3, 2);
    auto flow = std::make_shared<Flow>(base, t);
    auto [x0, ladj_inv] = t->inverse(torch::zeros({1, d}, f64));
    CHECK(flow->log_prob(x0).item<double>() == Approx(expect - ladj_inv.item<double>()).epsilon(1e-12));
  }
  CHECK_THROWS_AS(base->set_temperature(0.0), UsageError);
  CHECK_THROWS_AS(base->set_temperature(1.5), UsageError);
  // A uniform base is unchanged by the temperature.
  auto torus = torus_uniform(2);
  torus->to(torch::kFloat64);
  torus->set_temperature(0.3);
  CHECK(torus->log_prob(torch::zeros({1, 2}, f64)).item<double>() == Approx(-2.0 * std::log(2.0 * M_PI)));
  CHECK(std::isinf(torus->log_prob(torch::full({1, 2}, 4.0, f64)).item<double>()));
}

TEST_CASE("a 2-D flow integrates to 1, untrained and trained, at T = 1 and T = 0.5", "[flows]") {
  for (const std::string kind : {"realnvp", "maf", "nsf", "nsf-ar"}) {
    INFO(kind);
    FlowRecipe r;
    r.kind = kind;
    r.layers = 3;
    r.hidden = 32;
    torch::manual_seed(3);
    auto flow = build_flow(r);
    flow->to(torch::kFloat64);
    perturb_parameters(*flow, 0.2, 7);  // "untrained": a generic random flow
    // Grid [-10, 10]^2, h = 0.04 (midpoint error << 1e-2), plus the sampled mass outside.
    CHECK(total_mass_2d(*flow, 10.0, 500) == Approx(1.0).margin(1e-2));
    flow->set_temperature(0.5);
    CHECK(total_mass_2d(*flow, 10.0, 500) == Approx(1.0).margin(1e-2));
  }
  // Trained on the 8-Gaussian mixture.
  torch::manual_seed(4);
  auto p = make_toy_density("gmm");
  auto x = p->sample(4000);
  FlowRecipe r;
  r.layers = 3;
  r.hidden = 32;
  auto flow = build_flow(r, x);
  flow->to(torch::kFloat64);
  Objective obj;
  obj.train = x;
  Trainer trainer(flow, TrainerOptions().steps(300).eval_every(300).quiet(true).seed(1), obj);
  trainer.train();
  CHECK(total_mass_2d(*flow, 10.0, 500) == Approx(1.0).margin(1e-2));
}

TEST_CASE("sample_and_log_prob agrees with log_prob of the samples", "[flows]") {
  for (const std::string kind : {"realnvp", "maf", "nsf", "nsf-ar"}) {
    INFO(kind);
    FlowRecipe r;
    r.kind = kind;
    r.dim = 4;
    r.layers = 2;
    r.hidden = 16;
    torch::manual_seed(8);
    auto flow = build_flow(r);
    flow->to(torch::kFloat64);
    perturb_parameters(*flow, 0.2, 9);
    torch::NoGradGuard ng;
    auto [x, lq] = flow->sample_and_log_prob(256);
    CHECK((flow->log_prob(x) - lq).abs().max().item<double>() < 1e-6);
    // The chunked evaluation (37-row chunks) gives the same per-sample values.
    CHECK((negative_log_likelihood(*flow, x, {}, 37) + flow->log_prob(x)).abs().max().item<double>() < 1e-12);
  }
}

TEST_CASE("affine blocks before the splines: structure, normalised, invertible, restored from files", "[flows]") {
  for (const std::string kind : {"nsf", "nsf-ar"}) {
    INFO(kind);
    FlowRecipe r;
    r.kind = kind;
    r.dim = 2;
    r.layers = 2;
    r.hidden = 16;
    r.affine_layers = 2;
    torch::manual_seed(3);
    auto flow = build_flow(r, torch::randn({200, 2}, f64) * 3.0);
    flow->to(torch::kFloat64);
    perturb_parameters(*flow, 0.3, 5);
    // standardisation, 2 x [affine, permutation], 2 spline blocks with one permutation between.
    const auto cfg = flow->config().dump();
    const std::string affine = kind == "nsf" ? "\"affine_coupling\"" : "\"affine_autoregressive\"";
    size_t n_affine = 0;
    for (size_t at = cfg.find(affine); at != std::string::npos; at = cfg.find(affine, at + 1)) ++n_affine;
    CHECK(n_affine == 2);
    CHECK(std::abs(total_mass_2d(*flow, 12.0, 600) - 1.0) < 0.01);
    torch::NoGradGuard ng;
    auto [x, lq] = flow->sample_and_log_prob(256);
    CHECK((flow->log_prob(x) - lq).abs().max().item<double>() < 1e-8);
    const auto path = test::temp_path("affine_first.h5");
    save_flow(path, *flow, {});
    CHECK(torch::equal(load_flow(path).flow->log_prob(x), flow->log_prob(x)));
  }
  FlowRecipe bad;
  bad.affine_layers = -1;
  CHECK_THROWS_WITH(build_flow(bad), Catch::Contains("--affine-layers"));
}

TEST_CASE("model files: save_flow/load_flow rebuild the model exactly, bad files are rejected", "[flows]") {
  FlowRecipe r;
  r.kind = "nsf";
  r.dim = 3;
  r.layers = 2;
  r.hidden = 16;
  torch::manual_seed(1);
  auto train = torch::randn({100, 3}, f64) * 2.0 + 1.0;
  auto flow = build_flow(r, train);
  flow->to(torch::kFloat64);
  perturb_parameters(*flow, 0.2, 3);
  const auto path = test::temp_path("model.h5");
  save_flow(path, *flow, {{"data", "unit test"}});
  auto loaded = load_flow(path);
  CHECK(loaded.metadata["data"] == "unit test");
  const auto x = torch::randn({50, 3}, f64);
  torch::NoGradGuard ng;
  CHECK(torch::equal(loaded.flow->log_prob(x), flow->log_prob(x)));

  // h5py reads the file: attributes and a parameter.
  const int rc = test::run_python(
      "import h5py, json, sys\n"
      "f = h5py.File('" + path + "', 'r')\n"
      "assert f.attrs['nfkit_format'] == 'checkpoint' and int(f.attrs['format_version']) == 1\n"
      "cfg = json.loads(f.attrs['model_config'])\n"
      "assert cfg['type'] == 'flow'\n"
      "assert f['model'][list(f['model'].keys())[0]].shape is not None\n");
  if (rc >= 0) CHECK(rc == 0);

  // Wrong kind, newer version, not HDF5.
  {
    H5Writer w(test::temp_path("samples.h5"), "samples", 1);
    w.commit();
  }
  const auto other = test::temp_path("other.h5");
  {
    H5Writer w(other, "samples", 1);
    w.commit();
  }
  CHECK_THROWS_WITH(load_flow(other), Catch::Contains("'samples' file, but a 'checkpoint' file is expected"));
  const auto newer = test::temp_path("newer.h5");
  {
    H5Writer w(newer, "checkpoint", 99);
    w.commit();
  }
  CHECK_THROWS_WITH(load_flow(newer), Catch::Contains("format_version 99"));
  CHECK_THROWS_AS(load_flow(test::temp_path("missing.h5")), RuntimeError);
}

TEST_CASE("built-in densities: exact log-density normalised, entropy matches Monte Carlo", "[flows]") {
  for (const std::string name : {"gmm", "rings", "spirals", "checkerboard", "banana", "banana:6",
                                 "mixture:2:5", "mixture:6:16", "funnel", "funnel:6", "8gaussians",
                                 "moons", "scurve"}) {
    INFO(name);
    auto p = make_toy_density(name);
    torch::manual_seed(11);
    // The curve densities cost ~1000 Gaussians per point: fewer samples.
    const int64_t n = (name == std::string("moons") || name == std::string("scurve")) ? 40000 : 200000;
    const auto x = p->sample(n);
    REQUIRE(x.size(1) == p->dim());
    const auto nll = -p->log_prob(x);
    REQUIRE(torch::isfinite(nll).all().item<bool>());
    // H = E[-log p]: Monte-Carlo estimate within 5 standard errors of the stated entropy.
    const double se = nll.std().item<double>() / std::sqrt(static_cast<double>(n));
    CHECK(std::abs(nll.mean().item<double>() - p->entropy()) < 5 * se + 1e-4);
  }
  CHECK(make_toy_density("checkerboard")->entropy() == Approx(std::log(32.0)));
  CHECK_THROWS_AS(make_toy_density("swissroll"), UsageError);
  CHECK_THROWS_AS(make_toy_density("banana:1"), UsageError);
  CHECK_THROWS_AS(make_toy_density("mixture:0:4"), UsageError);
  CHECK_THROWS_AS(make_toy_density("mixture:4"), UsageError);
  CHECK_THROWS_AS(make_toy_density("funnel:1"), UsageError);
  CHECK_THROWS_AS(make_toy_density("funnel:99999999999999999999"), UsageError);
  // Neal's funnel: the analytic entropy at D = 10, 0.5 log(2 pi e 9) + 4.5 log(2 pi e).
  CHECK(make_toy_density("funnel:10")->entropy() ==
        Approx(0.5 * std::log(2 * M_PI * M_E * 9) + 4.5 * std::log(2 * M_PI * M_E)));
  // The mixture's centres are Halton points: the first in 2-D is (8 * 1/2 - 4, 8 * 1/3 - 4).
  torch::manual_seed(3);
  const auto one = make_toy_density("mixture:2:1")->sample(100000);
  CHECK(one.mean(0)[0].item<double>() == Approx(0.0).margin(0.01));
  CHECK(one.mean(0)[1].item<double>() == Approx(8.0 / 3.0 - 4.0).margin(0.01));
  CHECK(one.std(0)[1].item<double>() == Approx(0.5).margin(0.01));
}

TEST_CASE("learning: an NSF reaches the true entropy of the 8-Gaussian mixture within 0.05 nats", "[flows][learning]") {
  // Fixed budget: 20000 samples, 1500 steps of batch 256 (about 10 s on 2 cores).
  torch::manual_seed(21);
  auto p = make_toy_density("gmm");
  auto x = p->sample(20000);
  auto val = p->sample(2000);
  FlowRecipe r;
  r.kind = "nsf";
  auto flow = build_flow(r, x);
  flow->to(torch::kFloat64);
  Objective obj;
  obj.train = x;
  obj.val = val;
  Trainer trainer(flow, TrainerOptions().steps(1500).warmup_steps(100).eval_every(100).quiet(true).seed(2), obj);
  trainer.train();
  torch::manual_seed(22);
  const auto test = p->sample(20000);
  torch::NoGradGuard ng;
  const auto nll = -flow->log_prob(test);
  const double gap = nll.mean().item<double>() - p->entropy();
  INFO("held-out NLL - entropy = " << gap << " nats (SE " << nll.std().item<double>() / std::sqrt(20000.0) << ")");
  CHECK(gap < 0.05);
  CHECK(gap > -0.05);  // an NLL below the entropy by more than noise would be a bug
}
