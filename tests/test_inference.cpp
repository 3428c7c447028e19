// Tests of nfkit::inference: priors (normalisation by quadrature), models, chain files,
// diagnostics against AR(1) truths, samplers against known moments, and evidence estimators
// against exact evidences.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "helpers.h"
#include "nfkit/core/files.h"
#include "nfkit/inference/analytic_models.h"
#include "nfkit/inference/chains.h"
#include "nfkit/inference/evidence.h"
#include "nfkit/inference/model.h"
#include "nfkit/inference/samplers.h"

using namespace nfkit;
using Catch::Matchers::Contains;

namespace {

/// ∫ exp(log_prob) over [lo, hi] by the trapezoid rule on n points.
double integrate_1d(const Prior& p, double lo, double hi, int64_t n = 200001) {
  auto x = torch::linspace(lo, hi, n, torch::kFloat64).unsqueeze(1);
  auto f = torch::exp(p.log_prob(x));
  return torch::trapezoid(f, (hi - lo) / (n - 1)).item<double>();
}

/// Chains of C independent AR(1) processes x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t.
Chains ar1_chains(int64_t C, int64_t S, double phi, double offset_per_chain = 0.0) {
  auto e = torch::randn({C, S}, torch::kFloat64);
  auto x = torch::empty({C, S}, torch::kFloat64);
  x.select(1, 0).copy_(e.select(1, 0));
  const double s = std::sqrt(1 - phi * phi);
  for (int64_t t = 1; t < S; ++t) x.select(1, t).copy_(phi * x.select(1, t - 1) + s * e.select(1, t));
  x = x + offset_per_chain * torch::arange(C, torch::kFloat64).unsqueeze(1);
  return Chains{x.unsqueeze(2), -0.5 * x.pow(2), {"x"}};
}

Chains iid_chains(const AnalyticProblem& p, int64_t C, int64_t S) {
  auto x = p.sample_posterior(C * S);
  auto lp = p.model.log_posterior(x);
  return Chains{x.view({C, S, -1}), lp.view({C, S}), p.model.names()};
}

}  // namespace

TEST_CASE("priors: normalised densities, supports, samples and config round trip", "[inference]") {
  // Trapezoid rule on 2e5 points: error far below 1e-5 for these smooth densities.
  CHECK(integrate_1d(*uniform_prior(-18, -14), -19, -13) == Approx(1.0).margin(1e-4));
  CHECK(integrate_1d(*log_uniform_prior(0.1, 10), 0.05, 11) == Approx(1.0).margin(1e-4));
  CHECK(integrate_1d(*normal_prior(1.0, 0.5), -5, 7) == Approx(1.0).margin(1e-6));
  CHECK(integrate_1d(*normal_prior(0.0, 1.0, 0.5, 3.0), 0.0, 4.0) == Approx(1.0).margin(1e-4));
  // Normal-gamma over (mu, tau): 2-D trapezoid.
  {
    auto ng = normal_gamma_prior(0.3, 2.0, 3.0, 1.5);
    auto mu = torch::linspace(-6, 6, 1201, torch::kFloat64), tau = torch::linspace(1e-6, 12, 1201, torch::kFloat64);
    auto g = torch::meshgrid({mu, tau}, "ij");
    auto f = torch::exp(ng->log_prob(torch::stack({g[0].reshape(-1), g[1].reshape(-1)}, 1))).view({1201, 1201});
    double I = torch::trapezoid(torch::trapezoid(f, 12.0 / 1200, 1), (12.0 - 1e-6) / 1200).item<double>();
    CHECK(I == Approx(1.0).margin(2e-3));
  }
  // MVN log density against the explicit formula.
  auto cov = torch::tensor({{2.0, 0.6}, {0.6, 1.0}}, torch::kFloat64);
  auto mean = torch::tensor({0.5, -1.0}, torch::kFloat64);
  auto mvn = multivariate_normal_prior(mean, cov);
  auto x = torch::tensor({{0.1, 0.2}, {3.0, -2.0}}, torch::kFloat64);
  auto d = x - mean;
  auto want = -0.5 * (d.matmul(torch::linalg_inv(cov)) * d).sum(1) - std::log(2 * M_PI) -
              0.5 * std::log(torch::det(cov).item<double>());
  CHECK(torch::allclose(mvn->log_prob(x), want, 1e-12, 1e-12));
  // Outside the support: -inf.
  CHECK(std::isinf(uniform_prior(0, 1)->log_prob(torch::tensor({{1.5}}, torch::kFloat64)).item<double>()));
  CHECK(std::isinf(log_uniform_prior(1, 2)->log_prob(torch::tensor({{-1.0}}, torch::kFloat64)).item<double>()));
  CHECK(std::isinf(normal_gamma_prior(0, 1, 1, 1)->log_prob(torch::tensor({{0.0, -1.0}}, torch::kFloat64)).item<double>()));
  // Samples: moments within Monte-Carlo error (n = 2e5: 5 sigma bounds).
  torch::manual_seed(3);
  auto s = normal_prior(0.0, 1.0, 0.0, INFINITY)->sample(200000);
  CHECK(s.min().item<double>() >= 0.0);
  CHECK(s.mean().item<double>() == Approx(std::sqrt(2 / M_PI)).margin(5 * 0.6 / std::sqrt(2e5)));
  auto sm = mvn->sample(200000);
  CHECK(torch::allclose(sm.mean(0), mean, 0, 0.02));
  auto lu = log_uniform_prior(1e-3, 1e3)->sample(200000);
  CHECK(torch::log10(lu).mean().item<double>() == Approx(0.0).margin(0.02));
  // Round trip of every kind through config().
  for (auto p : {uniform_prior(-1, 2), log_uniform_prior(0.5, 4), normal_prior(1, 2, -1, 5), mvn,
                 normal_gamma_prior(0.3, 2.0, 3.0, 1.5)}) {
    auto q = make_prior(p->config());
    auto pts = p->sample(16);
    CHECK(torch::allclose(p->log_prob(pts), q->log_prob(pts), 1e-12, 1e-12));
  }
  CHECK_THROWS_WITH(uniform_prior(2, 1), Contains("must exceed lo"));
  CHECK_THROWS_WITH(log_uniform_prior(0, 1), Contains("must be > 0"));
  CHECK_THROWS_WITH(make_prior({{"kind", "cauchy"}}), Contains("unknown kind 'cauchy'"));
  CHECK_THROWS_WITH(multivariate_normal_prior(mean, torch::tensor({{1.0, 2.0}, {2.0, 1.0}}, torch::kFloat64)),
                    Contains("positive definite"));
}

TEST_CASE("model: posterior = likelihood + prior, likelihood never called outside the prior", "[inference]") {
  Model m;
  m.add("a", uniform_prior(0, 1)).add("b", normal_prior(0, 2));
  int64_t rows_seen = 0;
  m.set_log_likelihood([&](const torch::Tensor& th) {
    rows_seen += th.size(0);
    CHECK((th.select(1, 0) >= 0).all().item<bool>());
    return -th.pow(2).sum(1);
  });
  auto th = torch::tensor({{0.5, 1.0}, {-0.5, 1.0}, {0.2, -3.0}}, torch::kFloat64);
  auto [ll, lp] = m.log_terms(th);
  CHECK(rows_seen == 2);
  CHECK(std::isinf(ll[1].item<double>()));
  CHECK(ll[0].item<double>() == Approx(-1.25));
  CHECK(lp[2].item<double>() == Approx(-std::log(2.0) - 0.5 * std::log(2 * M_PI) - 9.0 / 8.0));
  CHECK(torch::allclose(m.log_posterior(th).narrow(0, 0, 1), (ll + lp).narrow(0, 0, 1)));
  CHECK_THROWS_WITH(m.add("a", uniform_prior(0, 1)), Contains("already defined"));
  CHECK_THROWS_WITH(m.log_prior(torch::zeros({2, 3}, torch::kFloat64)), Contains("theta"));
}

TEST_CASE("chains: HDF5 and CSV round trips, and clear errors on bad files", "[inference]") {
  torch::manual_seed(1);
  Chains ch{torch::randn({3, 5, 2}, torch::kFloat64), torch::randn({3, 5}, torch::kFloat64), {"log10_A", "gamma"}};
  for (const char* ext : {".h5", ".csv"}) {
    auto path = test::temp_path(std::string("chains") + ext);
    write_chains(path, ch);
    auto back = read_chains(path);
    CHECK(back.names == ch.names);
    CHECK(torch::equal(back.samples, ch.samples));
    CHECK(torch::equal(back.ln_posterior, ch.ln_posterior));
  }
  auto bad = ch;
  bad.samples = ch.samples.clone();
  bad.samples[1][2][1] = NAN;
  auto p = test::temp_path("nan.h5");
  CHECK_THROWS_WITH(write_chains(p, bad), Contains("samples[chain 1, step 2] parameter 'gamma' is nan"));
  bad = ch;
  bad.ln_posterior = ch.ln_posterior.clone();
  bad.ln_posterior[2][4] = -INFINITY;
  CHECK_THROWS_WITH(bad.validate("x.h5"), Contains("outside the prior's support"));
  CHECK_THROWS_WITH(read_chains(test::temp_path("missing.h5")), Contains("missing.h5"));
  auto csv = test::temp_path("ragged.csv");
  write_file_atomic(csv, "chain,a,ln_posterior\n0,1,2\n0,1,2\n1,1,2\n");
  CHECK_THROWS_WITH(read_chains(csv), Contains("equal lengths"));
  write_file_atomic(csv, "chain,a,ln_posterior\n0,1,oops\n");
  CHECK_THROWS_WITH(read_chains(csv), Contains("ragged.csv:2: field 'ln_posterior' is 'oops'"));
  write_file_atomic(csv, "a,b\n1,2\n");
  CHECK_THROWS_WITH(read_chains(csv), Contains("header must be"));
  CHECK_THROWS_WITH(read_chains("chains.txt"), Contains("must end in .h5 or .csv"));
}

TEST_CASE("diagnostics: ESS of AR(1) chains and split R-hat of disagreeing chains", "[inference]") {
  torch::manual_seed(7);
  // Independent draws: ESS ≈ C S. AR(1) with phi: integrated autocorrelation time
  // (1 + phi)/(1 - phi); the estimate's relative error over 8 x 20000 steps is ~5%.
  auto iid = diagnose(ar1_chains(8, 20000, 0.0));
  CHECK(iid.ess[0] == Approx(160000).epsilon(0.1));
  CHECK(iid.rhat[0] == Approx(1.0).margin(0.01));
  auto ar = diagnose(ar1_chains(8, 20000, 0.9));
  CHECK(ar.ess[0] == Approx(160000 * 0.1 / 1.9).epsilon(0.15));
  CHECK(ar.rhat[0] < 1.01);
  auto off = diagnose(ar1_chains(8, 2000, 0.5, 1.0));  // chain means 0, 1, ..., 7
  CHECK(off.rhat[0] > 1.5);
}

TEST_CASE("samplers: ensemble and HMC reproduce the moments of a correlated Gaussian", "[inference]") {
  auto cov = example_covariance(3);
  auto prec = torch::linalg_inv(cov);
  LogDensityFn lp = [prec](const torch::Tensor& x) { return -0.5 * (x.matmul(prec) * x).sum(1); };
  std::vector<std::string> names{"a", "b", "c"};
  torch::manual_seed(2);
  auto init = torch::randn({32, 3}, torch::kFloat64);
  EnsembleOptions eo;
  eo.steps = 3000;
  eo.burn_in = 500;
  eo.seed = 4;
  auto run = sample_ensemble(lp, init, eo, names);
  auto x = run.chains.samples.reshape({-1, 3});
  auto d = diagnose(run.chains);
  INFO("ensemble: min ESS " << d.min_ess << ", max R-hat " << d.max_rhat);
  CHECK(d.max_rhat < 1.05);
  // Tolerances: 5 standard errors of the mean with the measured ESS.
  for (int64_t k = 0; k < 3; ++k) {
    const double se = std::sqrt(cov[k][k].item<double>() / d.ess[k]);
    CHECK(std::abs(x.select(1, k).mean().item<double>()) < 5 * se);
  }
  CHECK(torch::allclose(torch::cov(x.t()), cov, 0.1, 0.15));
  CHECK(run.acceptance.mean().item<double>() > 0.3);
  // Same seed, same chains.
  auto again = sample_ensemble(lp, init, eo, names);
  CHECK(torch::equal(again.chains.samples, run.chains.samples));

  HMCOptions ho;
  ho.steps = 600;
  ho.warmup = 300;
  ho.seed = 5;
  auto h = sample_hmc(lp, init.narrow(0, 0, 16), ho, names);
  auto hx = h.chains.samples.reshape({-1, 3});
  auto hd = diagnose(h.chains);
  INFO("hmc: min ESS " << hd.min_ess << ", step " << h.step_size << ", acceptance "
                        << h.acceptance.mean().item<double>());
  CHECK(hd.max_rhat < 1.05);
  for (int64_t k = 0; k < 3; ++k) {
    const double se = std::sqrt(cov[k][k].item<double>() / hd.ess[k]);
    CHECK(std::abs(hx.select(1, k).mean().item<double>()) < 5 * se);
  }
  CHECK(torch::allclose(torch::cov(hx.t()), cov, 0.1, 0.15));
  CHECK(h.acceptance.mean().item<double>() == Approx(0.8).margin(0.15));
  CHECK_THROWS_WITH(sample_ensemble(lp, torch::zeros({5, 3}, torch::kFloat64), eo, names),
                    Contains("must be even"));
}

TEST_CASE("harmonic mean: estimator algebra on hand-made log ratios", "[inference]") {
  // Every ratio equal to r: rho = r exactly, zero variance.
  auto lr = torch::full({6, 50}, -3.0, torch::kFloat64);
  auto e = harmonic_from_log_ratios(lr);
  CHECK(e.ln_z == Approx(3.0).margin(1e-12));
  CHECK(e.ln_z_error == Approx(0.0).margin(1e-12));
  // Two chains with per-chain means 1 and 3 (times e^-1000, testing the log-space shift):
  // rho = 2, N_eff = 2, sigma^2 = (1/(2-1)) * ((1-2)^2 + (3-2)^2)/2 = 1.
  auto two = torch::tensor({{std::log(1.0), std::log(1.0)}, {std::log(3.0), std::log(3.0)}}, torch::kFloat64) - 1000.0;
  auto t = harmonic_from_log_ratios(two);
  CHECK(t.ln_rho == Approx(std::log(2.0) - 1000.0).epsilon(1e-14));
  CHECK(t.ln_z_error == Approx(0.5).margin(1e-12));
  CHECK(t.ln_z == Approx(1000.0 - std::log(2.0) - 0.125).epsilon(1e-14));
  CHECK(t.n_eff == Approx(2.0));
  CHECK(!t.warnings.empty());  // 2 chains, 2 samples each
  CHECK_THROWS_WITH(harmonic_from_log_ratios(torch::zeros({1, 10}, torch::kFloat64)), Contains("at least 2"));
}

TEST_CASE("learned harmonic mean and importance sampling on Gaussians (d = 2, 5)", "[inference]") {
  // Exact posterior draws as chains (the MCMC path is tested on d = 2 through the sampler
  // below). Target |Δ ln z| <= 0.05.
  for (int64_t d : {2, 5}) {
    torch::manual_seed(100 + d);
    auto p = gaussian_problem(example_covariance(d), 5.0);
    auto ch = iid_chains(p, 40, 500);
    HarmonicOptions o;
    o.training.steps(d == 2 ? 600 : 1000).seed(3);
    auto r = learned_harmonic_mean(ch, o);
    auto is = importance_evidence(*r.flow, p.model, 20000, 9);
    INFO("d = " << d << ": exact " << p.ln_z << ", harmonic " << r.estimate.ln_z << " ± "
                << r.estimate.ln_z_error << ", IS " << is.ln_z << " ± " << is.ln_z_error << " (ESS "
                << is.ess_fraction << "), kurtosis " << r.estimate.kurtosis << ", " << r.seconds << " s");
    CHECK(std::abs(r.estimate.ln_z - p.ln_z) <= 0.05);
    CHECK(std::abs(is.ln_z - p.ln_z) <= 0.05);
    CHECK(r.estimate.ln_z_error < 0.05);
    CHECK(compare_estimates(r.estimate, is).agree);
  }
}

TEST_CASE("evidence pipeline: ensemble chains of a 2-D Gaussian give the exact ln z", "[inference]") {
  torch::manual_seed(11);
  auto p = gaussian_problem(example_covariance(2), 5.0);
  EnsembleOptions eo;
  eo.steps = 1500;
  eo.burn_in = 500;
  eo.seed = 12;
  auto run = sample_ensemble([&](const torch::Tensor& x) { return p.model.log_posterior(x); },
                             initial_points(p.model, 64), eo, p.model.names());
  HarmonicOptions o;
  o.training.steps(600).seed(2);
  auto r = learned_harmonic_mean(run.chains, o);
  INFO("exact " << p.ln_z << ", harmonic " << r.estimate.ln_z << " ± " << r.estimate.ln_z_error);
  CHECK(std::abs(r.estimate.ln_z - p.ln_z) <= 0.05);
  CHECK(r.training_chains == 32);
  CHECK(r.estimate.chains == 32);
}

TEST_CASE("analytic problems: exact evidences agree with brute-force quadrature", "[inference]") {
  // Normal-gamma: 2-D trapezoid of L pi over (mu, tau).
  torch::manual_seed(5);
  auto x = 0.7 + torch::randn({20}, torch::kFloat64) / std::sqrt(2.0);
  auto ng = normal_gamma_problem(x, 0.0, 1.0, 2.0, 1.0);
  auto mu = torch::linspace(-1.5, 3.0, 901, torch::kFloat64), tau = torch::linspace(1e-4, 8, 1601, torch::kFloat64);
  auto g = torch::meshgrid({mu, tau}, "ij");
  auto th = torch::stack({g[0].reshape(-1), g[1].reshape(-1)}, 1);
  auto f = torch::exp(ng.model.log_posterior(th)).view({901, 1601});
  double I = torch::trapezoid(torch::trapezoid(f, (8 - 1e-4) / 1600, 1), 4.5 / 900).item<double>();
  CHECK(std::log(I) == Approx(ng.ln_z).margin(1e-3));
  // Gaussian: 2-D trapezoid.
  auto gp = gaussian_problem(example_covariance(2), 3.0);
  auto a = torch::linspace(-15, 15, 1501, torch::kFloat64);
  auto gg = torch::meshgrid({a, a}, "ij");
  auto fg = torch::exp(gp.model.log_posterior(torch::stack({gg[0].reshape(-1), gg[1].reshape(-1)}, 1))).view({1501, 1501});
  double Ig = torch::trapezoid(torch::trapezoid(fg, 0.02, 1), 0.02).item<double>();
  CHECK(std::log(Ig) == Approx(gp.ln_z).margin(1e-6));
  // Linear-Gaussian: ln z from the marginal equals ln L + ln pi - ln post at any point
  // (Bayes' rule with the exact Gaussian posterior).
  auto t = torch::linspace(0, 10, 60, torch::kFloat64);
  auto phi = torch::full({4}, 2.0, torch::kFloat64);
  auto r = fourier_design(t, 2).matmul(torch::tensor({1.0, -0.5, 0.3, 0.8}, torch::kFloat64)) +
           0.3 * torch::randn({60}, torch::kFloat64);
  auto lg = linear_gaussian_problem(t, r, 0.3, phi);
  auto draws = lg.sample_posterior(200000);
  auto mean = draws.mean(0), cov = torch::cov(draws.t());
  auto c0 = mean.unsqueeze(0);
  auto dd = (c0 - mean);
  double ln_post_at_mean = -0.5 * 4 * std::log(2 * M_PI) - 0.5 * torch::logdet(cov).item<double>() -
                           0.5 * (dd.matmul(torch::linalg_inv(cov)) * dd).sum().item<double>();
  // Monte-Carlo covariance from 2e5 draws: log-det error ~ sqrt(2 * 4 * 4 / 2e5) ~ 0.01.
  CHECK(lg.model.log_posterior(c0).item<double>() - ln_post_at_mean == Approx(lg.ln_z).margin(0.03));
}
