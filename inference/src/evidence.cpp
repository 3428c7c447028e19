#include "nfkit/inference/evidence.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <sstream>

#include "nfkit/core/checks.h"
#include "nfkit/core/runtime.h"

namespace nfkit {
namespace {

std::string fmt(double v, int prec = 3) {
  std::ostringstream s;
  s.precision(prec);
  s << v;
  return s.str();
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> SupportMap::to_unbounded(const torch::Tensor& theta) const {
  if (bounds.empty()) return {theta, torch::zeros({theta.size(0)}, theta.options())};
  NFKIT_ASSERT(static_cast<int64_t>(bounds.size()) == theta.size(1), "SupportMap: one bound per parameter");
  std::vector<torch::Tensor> ys;
  auto logdet = torch::zeros({theta.size(0)}, theta.options());
  for (size_t k = 0; k < bounds.size(); ++k) {
    auto x = theta.select(1, static_cast<int64_t>(k));
    const auto [lo, hi] = bounds[k];
    if (std::isfinite(lo) && std::isfinite(hi)) {
      auto u = (x - lo) / (hi - lo);
      ys.push_back(torch::log(u) - torch::log1p(-u));
      logdet = logdet - std::log(hi - lo) - torch::log(u) - torch::log1p(-u);
    } else if (std::isfinite(lo)) {
      ys.push_back(torch::log(x - lo));
      logdet = logdet - torch::log(x - lo);
    } else if (std::isfinite(hi)) {
      ys.push_back(-torch::log(hi - x));
      logdet = logdet - torch::log(hi - x);
    } else {
      ys.push_back(x);
    }
  }
  return {torch::stack(ys, 1), logdet};
}

std::pair<torch::Tensor, torch::Tensor> SupportMap::to_bounded(const torch::Tensor& y) const {
  if (bounds.empty()) return {y, torch::zeros({y.size(0)}, y.options())};
  NFKIT_ASSERT(static_cast<int64_t>(bounds.size()) == y.size(1), "SupportMap: one bound per parameter");
  std::vector<torch::Tensor> xs;
  auto logdet = torch::zeros({y.size(0)}, y.options());
  for (size_t k = 0; k < bounds.size(); ++k) {
    auto v = y.select(1, static_cast<int64_t>(k));
    const auto [lo, hi] = bounds[k];
    if (std::isfinite(lo) && std::isfinite(hi)) {
      // Clamped strictly inside (lo, hi): sigmoid rounds to 0 or 1 beyond |y| ~ 37.
      xs.push_back(lo + (hi - lo) * torch::sigmoid(v).clamp(1e-15, 1.0 - 1e-15));
      logdet = logdet + std::log(hi - lo) - torch::softplus(-v) - torch::softplus(v);
    } else if (std::isfinite(lo)) {
      xs.push_back(lo + torch::exp(v));
      logdet = logdet + v;
    } else if (std::isfinite(hi)) {
      xs.push_back(hi - torch::exp(-v));
      logdet = logdet - v;
    } else {
      xs.push_back(v);
    }
  }
  return {torch::stack(xs, 1), logdet};
}

HarmonicEstimate harmonic_from_log_ratios(const torch::Tensor& log_ratio_in) {
  const char* fn = "harmonic_mean";
  check_dim(fn, "log_ratio", log_ratio_in, 2);
  auto lr = log_ratio_in.to(torch::kFloat64);
  const int64_t C = lr.size(0), N = lr.size(1);
  if (C < 2)
    usage_error(fn, std::to_string(C) + " evaluation chain(s), but the error estimate needs at least 2");
  if (N < 1) usage_error(fn, "evaluation chains are empty");
  if ((torch::isnan(lr) | (lr == INFINITY)).any().item<bool>())
    runtime_error(fn, "a log ratio log phi - log(L pi) is nan or +inf (an evaluation sample with zero "
                      "posterior density?)");
  HarmonicEstimate e;
  e.chains = C;
  e.samples = C * N;
  // Per-chain log rho_j, then shift by the largest.
  auto log_rho_j = torch::logsumexp(lr, 1) - std::log(static_cast<double>(N));  // [C]
  const double shift = log_rho_j.max().item<double>();
  if (!std::isfinite(shift))
    runtime_error(fn, "the flow density is zero at every evaluation sample (its support misses the posterior)");
  auto rho_j = torch::exp(log_rho_j - shift);
  auto w = torch::full({C}, static_cast<double>(N), torch::kFloat64);
  const double sw = w.sum().item<double>();
  const double n_eff = sw * sw / (w * w).sum().item<double>();
  const double rho = (w * rho_j).sum().item<double>() / sw;
  auto dev = rho_j - rho;
  const double sigma2 = (w * dev.pow(2)).sum().item<double>() / sw / (n_eff - 1.0);
  const double s2 = n_eff * sigma2;
  const double kappa = s2 > 0 ? (w * dev.pow(4)).sum().item<double>() / (s2 * s2 * sw) : NAN;
  const double nu4 = sigma2 * sigma2 / n_eff * (kappa - 1.0 + 2.0 / (n_eff - 1.0));
  e.n_eff = n_eff;
  e.ln_rho = shift + std::log(rho);
  e.ln_sigma = shift + 0.5 * std::log(sigma2);
  e.kurtosis = kappa;
  e.var_var_ratio = sigma2 > 0 ? std::sqrt(std::max(nu4, 0.0)) / sigma2 : NAN;
  const double eta = std::sqrt(sigma2) / rho;
  e.ln_z = -e.ln_rho - 0.5 * eta * eta;
  e.ln_z_error = eta;
  // Largest single term's share of the total sum.
  auto flat = lr.reshape({-1});
  e.max_term_share = std::exp(flat.max().item<double>() - torch::logsumexp(flat, 0).item<double>());

  if (C < 10)
    e.warnings.push_back(std::to_string(C) + " evaluation chains: the error estimate rests on few "
                         "per-chain estimates (use at least 10)");
  if (N < 100)
    e.warnings.push_back("evaluation chains have " + std::to_string(N) +
                         " samples each: per-chain estimates are noisy (use at least 100)");
  if (e.max_term_share > 0.1)
    e.warnings.push_back("one evaluation sample carries " + fmt(100 * e.max_term_share, 2) +
                         "% of the estimate: the flow's tails reach beyond the posterior "
                         "(lower the temperature, train longer or add samples)");
  if (std::isfinite(kappa) && kappa > 10.0)
    e.warnings.push_back("kurtosis of the per-chain estimates is " + fmt(kappa) +
                         " (about 3 expected): long tails, the error is unreliable");
  if (!(eta < 1.0))
    e.warnings.push_back("relative error of 1/z is " + fmt(eta) + ": the estimate is not usable");
  return e;
}

nlohmann::json HarmonicEstimate::to_json() const {
  return {{"ln_z", ln_z},         {"ln_z_error", ln_z_error},   {"ln_rho", ln_rho},
          {"ln_sigma", ln_sigma}, {"kurtosis", kurtosis},       {"var_var_ratio", var_var_ratio},
          {"n_eff", n_eff},       {"chains", chains},           {"samples", samples},
          {"max_term_share", max_term_share}, {"warnings", warnings}};
}

HarmonicEstimate harmonic_mean(Flow& flow, const Chains& ev, double temperature, const SupportMap& support) {
  check_in_range("harmonic_mean", "temperature", temperature, 0.0, 1.0, /*open_lo=*/true);
  torch::NoGradGuard ng;
  const double old_T = flow.temperature();
  flow.set_temperature(temperature);
  auto [y, log_jac] = support.to_unbounded(ev.samples.reshape({-1, ev.dim()}));
  std::vector<torch::Tensor> parts;
  for (int64_t i = 0; i < y.size(0); i += 16384)
    parts.push_back(flow.log_prob(y.narrow(0, i, std::min<int64_t>(16384, y.size(0) - i))
                                      .to(flow.tensor_options())).to(torch::kFloat64));
  flow.set_temperature(old_T);
  auto log_phi = (torch::cat(parts) + log_jac).view({ev.chains(), ev.steps()});
  log_phi = torch::where(torch::isnan(log_phi), torch::full_like(log_phi, -INFINITY), log_phi);
  // A flow density of -inf (outside a bounded support) contributes zero, which is allowed.
  return harmonic_from_log_ratios(log_phi - ev.ln_posterior);
}

LearnedHarmonicResult learned_harmonic_mean(const Chains& chains, const HarmonicOptions& o) {
  const char* fn = "learned_harmonic_mean";
  chains.validate(fn);
  check_in_range(fn, "temperature", o.temperature, 0.0, 1.0, /*open_lo=*/true);
  check_in_range(fn, "train_fraction", o.train_fraction, 0.0, 1.0, /*open_lo=*/true);
  check_in_range(fn, "val_fraction", o.val_fraction, 0.0, 0.5);
  const int64_t C = chains.chains();
  if (C < 4)
    usage_error(fn, std::to_string(C) + " chains, but the learned harmonic mean needs at least 4 "
                    "(half to train the flow, at least 2 to evaluate)");
  int64_t n_train = static_cast<int64_t>(std::llround(o.train_fraction * C));
  n_train = std::clamp<int64_t>(n_train, 1, C - 2);
  auto t0 = std::chrono::steady_clock::now();
  LearnedHarmonicResult res;
  res.training_chains = n_train;

  res.support.bounds = o.bounds;
  if (!o.bounds.empty() && static_cast<int64_t>(o.bounds.size()) != chains.dim())
    usage_error(fn, std::to_string(o.bounds.size()) + " bounds for " + std::to_string(chains.dim()) + " parameters");
  for (size_t k = 0; k < o.bounds.size(); ++k) {
    auto col = chains.samples.select(2, static_cast<int64_t>(k));
    const auto [lo, hi] = o.bounds[k];
    if (!(lo < hi) || (col <= lo).any().item<bool>() || (col >= hi).any().item<bool>())
      runtime_error(fn, "samples of parameter '" + chains.names[k] + "' reach or leave its bounds [" +
                            std::to_string(lo) + ", " + std::to_string(hi) + "]: the prior does not cover the chains");
  }
  auto train_all = res.support.to_unbounded(chains.samples.narrow(0, 0, n_train).reshape({-1, chains.dim()}))
                       .first.contiguous();
  torch::manual_seed(derive_seed(o.training.seed(), 21, 0));
  auto perm = torch::randperm(train_all.size(0), torch::kLong);
  const int64_t n_val = static_cast<int64_t>(o.val_fraction * train_all.size(0));
  Objective obj;
  obj.train = train_all.index_select(0, perm.narrow(0, n_val, train_all.size(0) - n_val));
  if (n_val >= 16) obj.val = train_all.index_select(0, perm.narrow(0, 0, n_val));
  FlowRecipe r = o.flow;
  r.dim = chains.dim();
  r.context_dim = 0;
  auto flow = build_flow(r, obj.train.to(torch::kFloat32));
  flow->to(torch::kFloat64);
  Trainer trainer(flow, o.training, obj);
  res.training = trainer.train();
  flow->eval();
  res.flow = flow;
  res.estimate = harmonic_mean(*flow, chains.slice(n_train, C - n_train), o.temperature, res.support);
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

ImportanceEstimate importance_evidence(Flow& flow, const Model& model, int64_t n, uint64_t seed,
                                       int64_t batch, const SupportMap& support) {
  const char* fn = "importance_evidence";
  check_positive_int(fn, "n", n);
  check_positive_int(fn, "batch", batch);
  if (flow.dim() != model.dim())
    usage_error(fn, "flow dimension " + std::to_string(flow.dim()) + " differs from the model's " +
                        std::to_string(model.dim()));
  torch::NoGradGuard ng;
  const double old_T = flow.temperature();
  flow.set_temperature(1.0);
  std::vector<torch::Tensor> lws;
  for (int64_t i = 0, k = 0; i < n; i += batch, ++k) {
    torch::manual_seed(derive_seed(seed, 23, static_cast<uint64_t>(k)));
    auto [y, log_qy] = flow.sample_and_log_prob(std::min(batch, n - i));
    auto [x, log_jac] = support.to_bounded(y.to(torch::kFloat64));
    auto lp = model.log_posterior(x);
    auto lw = lp - (log_qy.to(torch::kFloat64) - log_jac);
    // Draws outside the prior (or where q underflows) carry zero weight.
    lws.push_back(torch::where(torch::isfinite(lp) & torch::isfinite(lw), lw, torch::full_like(lw, -INFINITY)));
  }
  flow.set_temperature(old_T);
  auto lw = torch::cat(lws);
  ImportanceEstimate e;
  e.samples = n;
  const double m = lw.max().item<double>();
  if (!std::isfinite(m)) runtime_error(fn, "every importance weight is zero (the flow misses the prior's support)");
  auto w = torch::exp(lw - m);
  const double mean = w.mean().item<double>();
  const double var = w.var(0, true).item<double>();
  e.ln_z = m + std::log(mean);
  e.ln_z_error = std::sqrt(var / n) / mean;
  const double sw = w.sum().item<double>();
  e.ess = sw * sw / (w * w).sum().item<double>();
  e.ess_fraction = e.ess / n;
  return e;
}

nlohmann::json ImportanceEstimate::to_json() const {
  return {{"ln_z", ln_z}, {"ln_z_error", ln_z_error}, {"ess", ess}, {"ess_fraction", ess_fraction},
          {"samples", samples}};
}

EvidenceAgreement compare_estimates(const HarmonicEstimate& h, const ImportanceEstimate& is) {
  EvidenceAgreement a;
  a.difference = h.ln_z - is.ln_z;
  a.sigma = std::hypot(h.ln_z_error, is.ln_z_error);
  a.agree = std::abs(a.difference) <= std::max(3.0 * a.sigma, 0.02);
  return a;
}

}  // namespace nfkit
