#include "nfkit/inference/samplers.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>

#include "nfkit/core/checks.h"
#include "nfkit/core/progress.h"
#include "nfkit/core/runtime.h"

namespace nfkit {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

torch::Tensor eval_lp(const LogDensityFn& f, const torch::Tensor& x) {
  auto lp = f(x).to(torch::kFloat64).reshape({x.size(0)});
  return torch::where(torch::isnan(lp), torch::full_like(lp, -INFINITY), lp);
}

void check_start(const char* fn, const torch::Tensor& init, const torch::Tensor& lp) {
  auto bad = (~torch::isfinite(lp)).nonzero();
  if (bad.size(0) > 0)
    usage_error(fn, "init row " + std::to_string(bad[0][0].item<int64_t>()) +
                        " has a log posterior of " + std::to_string(lp[bad[0][0]].item<double>()) +
                        ", but every start must be finite");
  check_finite(fn, "init", init, Kind::usage);
}

// The walkers [W, D] as float64, after checking them and the ensemble options.
torch::Tensor checked_walkers(const char* fn, const torch::Tensor& init_in, const EnsembleOptions& o,
                              const std::vector<std::string>& names) {
  check_dim(fn, "init", init_in, 2);
  auto init = init_in.to(torch::kFloat64).contiguous();
  const int64_t W = init.size(0), D = init.size(1);
  if (W < 4 || W % 2 != 0)
    usage_error(fn, "walkers = " + std::to_string(W) + ", but must be even and at least 4");
  check_nonnegative(fn, "burn_in", static_cast<double>(o.burn_in));
  check_positive_int(fn, "steps", o.steps);
  check_positive_int(fn, "thin", o.thin);
  if (!(o.stretch > 1.0)) usage_error(fn, "stretch must be > 1");
  if (static_cast<int64_t>(names.size()) != D) usage_error(fn, "one name per parameter needed");
  return init;
}

}  // namespace

torch::Tensor initial_points(const Model& model, int64_t n) {
  check_positive_int("initial_points", "n", n);
  std::vector<torch::Tensor> got;
  int64_t have = 0;
  for (int round = 0; round < 100 && have < n; ++round) {
    auto x = model.sample_prior(std::max<int64_t>(n, 64));
    auto ok = torch::isfinite(model.log_posterior(x));
    auto keep = x.index({ok});
    have += keep.size(0);
    got.push_back(keep);
  }
  if (have < n)
    runtime_error("initial_points", "the log posterior is -inf at nearly every prior draw; "
                                    "check that the prior covers the likelihood");
  return torch::cat(got, 0).narrow(0, 0, n).contiguous();
}

SamplerRun sample_ensemble(const LogDensityFn& log_post, const torch::Tensor& init_in,
                           const EnsembleOptions& o, const std::vector<std::string>& names) {
  const char* fn = "sample_ensemble";
  auto init = checked_walkers(fn, init_in, o, names);
  const int64_t W = init.size(0), D = init.size(1);

  auto t0 = std::chrono::steady_clock::now();
  auto x = init.clone();
  auto lp = eval_lp(log_post, x);
  check_start(fn, x, lp);
  SamplerRun run;
  run.evaluations = W;
  const int64_t kept = o.steps / o.thin;
  auto out_x = torch::empty({W, kept, D}, torch::kFloat64);
  auto out_lp = torch::empty({W, kept}, torch::kFloat64);
  auto accepted = torch::zeros({W}, torch::kFloat64);
  auto window_acc = torch::zeros({W}, torch::kFloat64);  // accepted moves since the last reset check
  const int64_t total = o.burn_in + o.steps;
  const int64_t half = W / 2;
  const double a = o.stretch;
  // Coordinate groups moved together: all of them, or the given blocks (masks [G, D]).
  std::vector<torch::Tensor> masks;
  if (o.blocks.empty()) {
    masks.push_back(torch::ones({D}, torch::kFloat64));
  } else {
    auto covered = torch::zeros({D}, torch::kFloat64);
    for (const auto& b : o.blocks) {
      if (b.empty()) usage_error(fn, "blocks holds an empty group");
      auto m = torch::zeros({D}, torch::kFloat64);
      for (auto i : b) {
        if (i < 0 || i >= D) usage_error(fn, "blocks names parameter " + std::to_string(i) + " of " + std::to_string(D));
        m[i] = 1.0;
      }
      covered += m;
      masks.push_back(m);
    }
    if ((covered == 0).any().item<bool>())
      usage_error(fn, "blocks leave parameter " + std::to_string((covered == 0).nonzero()[0][0].item<int64_t>()) +
                          " out; every parameter must be in a group");
  }
  Progress progress("ensemble", total, {.quiet = o.quiet});
  for (int64_t t = 0; t < total; ++t) {
    torch::manual_seed(derive_seed(o.seed, 11, static_cast<uint64_t>(t)));
    for (size_t g = 0; g < masks.size(); ++g)
    for (int s = 0; s < 2; ++s) {
      const auto& mask = masks[g];
      const double dg = mask.sum().item<double>();
      auto idx = torch::arange(s * half, (s + 1) * half, torch::kLong);
      auto other = torch::arange((1 - s) * half, (2 - s) * half, torch::kLong);
      auto xk = x.index_select(0, idx);
      auto partner = other.index_select(0, torch::randint(half, {half}, torch::kLong));
      auto xj = x.index_select(0, partner);
      auto u = torch::rand({half}, torch::kFloat64);
      auto z = ((a - 1.0) * u + 1.0).pow(2) / a;
      auto y = masks.size() == 1 && o.blocks.empty() ? xj + z.unsqueeze(1) * (xk - xj)
                                                      : xk + mask * ((z.unsqueeze(1) - 1.0) * (xk - xj));
      auto lpy = eval_lp(log_post, y);
      run.evaluations += half;
      auto lpk = lp.index_select(0, idx);
      auto log_acc = (dg - 1.0) * torch::log(z) + lpy - lpk;
      auto acc = torch::log(torch::rand({half}, torch::kFloat64)) < log_acc;
      acc = acc & torch::isfinite(lpy);
      x.index_put_({idx}, torch::where(acc.unsqueeze(1), y, xk));
      lp.index_put_({idx}, torch::where(acc, lpy, lpk));
      if (t >= o.burn_in) accepted.index_add_(0, idx, acc.to(torch::kFloat64));
      else window_acc.index_add_(0, idx, acc.to(torch::kFloat64));
    }
    if (o.reset_stuck && o.burn_in >= 8 &&
        (t + 1 == o.burn_in / 4 || t + 1 == o.burn_in / 2 || t + 1 == (3 * o.burn_in) / 4)) {
      const double best = lp.max().item<double>();
      const double med_lp = lp.median().item<double>();
      const double med_acc = window_acc.median().item<double>();
      auto stuck = (lp < best - (20.0 + 2.5 * D)) | ((window_acc < 0.2 * med_acc) & (lp < med_lp));
      const int64_t n_stuck = stuck.sum().item<int64_t>();
      if (n_stuck > 0 && n_stuck < W) {
        auto good = (~stuck).nonzero().squeeze(1);
        auto spread = good.size(0) > 1 ? x.index_select(0, good).std(0) : torch::ones({D}, torch::kFloat64);
        auto bad = stuck.nonzero().squeeze(1);
        auto pick = good.index_select(0, torch::randint(good.size(0), {n_stuck}, torch::kLong));
        auto nx = x.index_select(0, pick) + 1e-3 * spread * torch::randn({n_stuck, D}, torch::kFloat64);
        auto nlp = eval_lp(log_post, nx);
        run.evaluations += n_stuck;
        // Keep the copy's exact position where the jittered point fell outside the support.
        auto ok = torch::isfinite(nlp);
        nx = torch::where(ok.unsqueeze(1), nx, x.index_select(0, pick));
        nlp = torch::where(ok, nlp, lp.index_select(0, pick));
        x.index_put_({bad}, nx);
        lp.index_put_({bad}, nlp);
        run.reset_walkers += n_stuck;
      }
      window_acc.zero_();
    }
    if (t >= o.burn_in && (t - o.burn_in) % o.thin == 0) {
      int64_t k = (t - o.burn_in) / o.thin;
      if (k < kept) {
        out_x.select(1, k).copy_(x);
        out_lp.select(1, k).copy_(lp);
      }
    }
    if ((t + 1) % 50 == 0 || t + 1 == total) progress.update(t + 1);
  }
  progress.finish();
  run.chains = Chains{out_x, out_lp, names};
  run.acceptance = accepted / static_cast<double>(o.steps * static_cast<int64_t>(masks.size()));
  run.seconds = seconds_since(t0);
  return run;
}

SamplerRun sample_tempered(const LogDensityFn& log_prior, const LogDensityFn& log_like,
                           const torch::Tensor& init_in, const TemperedOptions& to,
                           const std::vector<std::string>& names, TemperedInfo* info) {
  const char* fn = "sample_tempered";
  const EnsembleOptions& o = to.ensemble;
  auto init = checked_walkers(fn, init_in, o, names);
  const int64_t W = init.size(0), D = init.size(1), K = to.temperatures;
  if (K < 2) usage_error(fn, "temperatures must be >= 2");
  if (!(to.max_temperature > 1.0)) usage_error(fn, "max_temperature must be > 1");

  auto t0 = std::chrono::steady_clock::now();
  SamplerRun run;
  // ln prior and ln L of rows x [N, D]; ln L = -inf (not evaluated) outside the prior.
  auto evaluate = [&](const torch::Tensor& x) {
    auto lpr = eval_lp(log_prior, x);
    auto ll = torch::full_like(lpr, -INFINITY);
    auto in = torch::isfinite(lpr).nonzero().squeeze(1);
    if (in.size(0) > 0) ll.index_put_({in}, eval_lp(log_like, x.index_select(0, in)));
    run.evaluations += in.size(0);
    return std::make_pair(lpr, ll);
  };
  auto betas = torch::pow(torch::full({K}, 1.0 / to.max_temperature, torch::kFloat64),
                          torch::arange(K, torch::kFloat64) / static_cast<double>(K - 1));
  auto x = init.unsqueeze(0).repeat({K, 1, 1});  // [K, W, D]
  auto [lpr0, ll0] = evaluate(init);
  check_start(fn, init, lpr0 + ll0);
  auto lpr = lpr0.unsqueeze(0).repeat({K, 1}), ll = ll0.unsqueeze(0).repeat({K, 1});  // [K, W]
  const auto bcol = betas.unsqueeze(1);                                                  // [K, 1]

  const int64_t kept = o.steps / o.thin;
  auto out_x = torch::empty({W, kept, D}, torch::kFloat64);
  auto out_lp = torch::empty({W, kept}, torch::kFloat64);
  auto accepted = torch::zeros({W}, torch::kFloat64);
  auto swaps = torch::zeros({K - 1}, torch::kFloat64);
  auto sum_ll = torch::zeros({K}, torch::kFloat64);
  const int64_t total = o.burn_in + o.steps, half = W / 2;
  const double a = o.stretch;
  Progress progress("tempered", total, {.quiet = o.quiet});
  for (int64_t t = 0; t < total; ++t) {
    torch::manual_seed(derive_seed(o.seed, 12, static_cast<uint64_t>(t)));
    for (int s = 0; s < 2; ++s) {
      auto idx = torch::arange(s * half, (s + 1) * half, torch::kLong);
      auto other = torch::arange((1 - s) * half, (2 - s) * half, torch::kLong);
      auto xk = x.index_select(1, idx);                                          // [K, h, D]
      auto partner = other.index_select(0, torch::randint(half, {K * half}, torch::kLong)).view({K, half});
      auto xj = torch::gather(x, 1, partner.unsqueeze(2).expand({K, half, D}));  // [K, h, D]
      auto z = ((a - 1.0) * torch::rand({K, half}, torch::kFloat64) + 1.0).pow(2) / a;
      auto y = xj + z.unsqueeze(2) * (xk - xj);
      auto [lpr_y, ll_y] = evaluate(y.reshape({K * half, D}));
      lpr_y = lpr_y.view({K, half});
      ll_y = ll_y.view({K, half});
      auto lpr_k = lpr.index_select(1, idx), ll_k = ll.index_select(1, idx);
      // beta * ln L with beta * (-inf) = -inf; a finite prior with ln L = -inf is rejected.
      auto cur = lpr_k + bcol * ll_k, prop = lpr_y + bcol * ll_y;
      auto log_acc = (D - 1.0) * torch::log(z) + prop - cur;
      auto acc = (torch::log(torch::rand({K, half}, torch::kFloat64)) < log_acc) & torch::isfinite(prop);
      x.index_copy_(1, idx, torch::where(acc.unsqueeze(2), y, xk));
      lpr.index_copy_(1, idx, torch::where(acc, lpr_y, lpr_k));
      ll.index_copy_(1, idx, torch::where(acc, ll_y, ll_k));
      if (t >= o.burn_in) accepted.index_add_(0, idx, acc[0].to(torch::kFloat64));
    }
    // Swaps between neighbouring rungs, hot to cold.
    for (int64_t k = K - 1; k >= 1; --k) {
      auto perm = torch::randperm(W, torch::kLong);
      auto ll_hot = ll[k].index_select(0, perm), ll_cold = ll[k - 1].clone();
      const double db = betas[k - 1].item<double>() - betas[k].item<double>();
      auto log_acc = db * (ll_hot - ll_cold);
      auto acc = (torch::log(torch::rand({W}, torch::kFloat64)) < log_acc) & torch::isfinite(ll_hot);
      auto x_hot = x[k].index_select(0, perm), x_cold = x[k - 1].clone();
      auto lpr_hot = lpr[k].index_select(0, perm), lpr_cold = lpr[k - 1].clone();
      x[k - 1].copy_(torch::where(acc.unsqueeze(1), x_hot, x_cold));
      lpr[k - 1].copy_(torch::where(acc, lpr_hot, lpr_cold));
      ll[k - 1].copy_(torch::where(acc, ll_hot, ll_cold));
      // The hot walkers that swapped take the cold positions.
      auto new_hot_x = torch::where(acc.unsqueeze(1), x_cold, x_hot);
      auto new_hot_lpr = torch::where(acc, lpr_cold, lpr_hot);
      auto new_hot_ll = torch::where(acc, ll_cold, ll_hot);
      x[k].index_copy_(0, perm, new_hot_x);
      lpr[k].index_copy_(0, perm, new_hot_lpr);
      ll[k].index_copy_(0, perm, new_hot_ll);
      if (t >= o.burn_in) swaps[k - 1] += acc.to(torch::kFloat64).mean().item<double>();
    }
    if (t >= o.burn_in) {
      sum_ll += ll.mean(1);
      if ((t - o.burn_in) % o.thin == 0) {
        const int64_t k = (t - o.burn_in) / o.thin;
        if (k < kept) {
          out_x.select(1, k).copy_(x[0]);
          out_lp.select(1, k).copy_(lpr[0] + ll[0]);
        }
      }
    }
    if ((t + 1) % 50 == 0 || t + 1 == total) progress.update(t + 1);
  }
  progress.finish();
  run.chains = Chains{out_x, out_lp, names};
  run.acceptance = accepted / static_cast<double>(o.steps);
  run.seconds = seconds_since(t0);
  if (info) {
    info->betas = betas;
    info->mean_log_like = sum_ll / static_cast<double>(o.steps);
    info->swap_acceptance = swaps / static_cast<double>(o.steps);
  }
  return run;
}

SamplerRun sample_hmc(const LogDensityFn& log_post, const torch::Tensor& init_in,
                      const HMCOptions& o, const std::vector<std::string>& names) {
  const char* fn = "sample_hmc";
  check_dim(fn, "init", init_in, 2);
  auto x = init_in.to(torch::kFloat64).contiguous().clone();
  const int64_t C = x.size(0), D = x.size(1);
  check_positive_int(fn, "steps", o.steps);
  check_nonnegative(fn, "warmup", static_cast<double>(o.warmup));
  check_positive_int(fn, "leapfrog", o.leapfrog);
  check_positive(fn, "step_size", o.step_size);
  check_in_range(fn, "target_accept", o.target_accept, 0.0, 1.0, /*open_lo=*/true);
  if (static_cast<int64_t>(names.size()) != D) usage_error(fn, "one name per parameter needed");

  auto t0 = std::chrono::steady_clock::now();
  SamplerRun run;
  // Log density and its gradient per row (non-finite rows get zero gradient).
  auto lp_grad = [&](const torch::Tensor& q) {
    auto qq = q.detach().requires_grad_(true);
    torch::Tensor lp, g;
    {
      auto out = log_post(qq).to(torch::kFloat64).reshape({C});
      auto finite = torch::isfinite(out);
      auto safe = torch::where(finite, out, torch::zeros_like(out));
      g = torch::autograd::grad({safe.sum()}, {qq}, {}, false, false, /*allow_unused=*/true)[0];
      if (!g.defined()) g = torch::zeros_like(qq);
      lp = torch::where(torch::isnan(out), torch::full_like(out, -INFINITY), out).detach();
      g = torch::where(torch::isfinite(g), g, torch::zeros_like(g)).detach();
    }
    run.evaluations += C;
    return std::make_pair(lp, g);
  };
  auto [lp, grad] = lp_grad(x);
  check_start(fn, x, lp);

  auto inv_mass = torch::ones({D}, torch::kFloat64);  // diagonal M^-1
  double eps = o.step_size;
  // Dual averaging state (Hoffman & Gelman 2014, section 3.2.1).
  double mu = std::log(10.0 * eps), h_bar = 0.0, log_eps_bar = 0.0;
  const double gamma = 0.05, t0_da = 10.0, kappa = 0.75;
  int64_t m_da = 0;  // dual-averaging iteration (restarts after the mass matrix is set)
  const int64_t total = o.warmup + o.steps;
  auto out_x = torch::empty({C, o.steps, D}, torch::kFloat64);
  auto out_lp = torch::empty({C, o.steps}, torch::kFloat64);
  auto accepted = torch::zeros({C}, torch::kFloat64);
  std::vector<torch::Tensor> warm_samples;
  Progress progress("hmc", total, {.quiet = o.quiet});
  for (int64_t t = 0; t < total; ++t) {
    torch::manual_seed(derive_seed(o.seed, 13, static_cast<uint64_t>(t)));
    const bool warm = t < o.warmup;
    int64_t L = o.leapfrog / 2 + torch::randint(o.leapfrog - o.leapfrog / 2 + 1, {1}).item<int64_t>();
    L = std::max<int64_t>(L, 1);
    auto p = torch::randn({C, D}, torch::kFloat64) / torch::sqrt(inv_mass);
    auto kinetic0 = 0.5 * (p * p * inv_mass).sum(1);
    auto q = x.clone();
    auto g = grad.clone();
    torch::Tensor lpq = lp;
    p = p + 0.5 * eps * g;
    for (int64_t l = 0; l < L; ++l) {
      q = q + eps * p * inv_mass;
      auto r = lp_grad(q);
      lpq = r.first;
      g = r.second;
      if (l + 1 < L) p = p + eps * g;
    }
    p = p + 0.5 * eps * g;
    auto kinetic1 = 0.5 * (p * p * inv_mass).sum(1);
    auto log_acc = (lpq - kinetic1) - (lp - kinetic0);
    log_acc = torch::where(torch::isfinite(log_acc), log_acc, torch::full_like(log_acc, -INFINITY));
    auto acc_prob = torch::exp(torch::clamp_max(log_acc, 0.0));
    auto acc = torch::log(torch::rand({C}, torch::kFloat64)) < log_acc;
    x = torch::where(acc.unsqueeze(1), q, x);
    lp = torch::where(acc, lpq, lp);
    grad = torch::where(acc.unsqueeze(1), g, grad);
    if (warm) {
      const double m = static_cast<double>(++m_da);
      const double stat = acc_prob.mean().item<double>();
      h_bar = (1.0 - 1.0 / (m + t0_da)) * h_bar + (o.target_accept - stat) / (m + t0_da);
      const double log_eps = mu - std::sqrt(m) / gamma * h_bar;
      const double w = std::pow(m, -kappa);
      log_eps_bar = w * log_eps + (1.0 - w) * log_eps_bar;
      eps = std::exp(log_eps);
      if (t >= o.warmup / 2) warm_samples.push_back(x.clone());
      // Mass matrix once, at three quarters of warm-up, then restart the step-size search.
      if (t + 1 == (3 * o.warmup) / 4 && warm_samples.size() >= 10) {
        auto s = torch::stack(warm_samples, 0).reshape({-1, D});
        auto var = s.var(0, true);
        auto n = static_cast<double>(s.size(0));
        // Regularised towards 1e-3 as in Stan's windowed adaptation.
        inv_mass = (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0));
        inv_mass = torch::where(torch::isfinite(inv_mass) & (inv_mass > 0), inv_mass, torch::ones_like(inv_mass));
        mu = std::log(10.0 * eps);
        h_bar = 0.0;
        log_eps_bar = 0.0;
        m_da = 0;
      }
      if (t + 1 == o.warmup) eps = std::exp(log_eps_bar);
    } else {
      const int64_t k = t - o.warmup;
      out_x.select(1, k).copy_(x);
      out_lp.select(1, k).copy_(lp);
      accepted += acc.to(torch::kFloat64);
    }
    if ((t + 1) % 20 == 0 || t + 1 == total) progress.update(t + 1);
  }
  progress.finish();
  run.chains = Chains{out_x, out_lp, names};
  run.acceptance = accepted / static_cast<double>(o.steps);
  run.step_size = eps;
  run.seconds = seconds_since(t0);
  return run;
}

}  // namespace nfkit
