#include "nfkit/boltzmann/ais.h"

#include <torch/torch.h>

#include <cmath>

#include "nfkit/core/checks.h"

namespace nfkit {

void AisOptions::check() const {
  const char* fn = "ais";
  if (intermediate < 1 || intermediate > 10000)
    usage_error(fn, "--ais-steps (intermediate densities) must be in 1..10000, got " +
                        std::to_string(intermediate));
  if (spacing != "linear" && spacing != "geometric")
    usage_error(fn, "--ais-spacing must be linear or geometric, got '" + spacing + "'");
  if (!(alpha >= 1.0 && alpha <= 4.0))
    usage_error(fn, "alpha must be in [1, 4] (1: anneal to p, 2: FAB), got " + std::to_string(alpha));
  if (hmc.leapfrog < 1 || hmc.leapfrog > 1000)
    usage_error(fn, "--leapfrog must be in 1..1000, got " + std::to_string(hmc.leapfrog));
  check_positive("ais", "--step-size", hmc.step_size);
  check_in_range("ais", "target acceptance", hmc.target_accept, 0.0, 1.0, true);
  check_positive("ais", "max_grad", hmc.max_grad);
}

nlohmann::json AisOptions::to_json() const {
  return {{"intermediate", intermediate}, {"spacing", spacing}, {"alpha", alpha},
          {"leapfrog", hmc.leapfrog}, {"step_size", hmc.step_size},
          {"target_accept", hmc.target_accept}, {"max_grad", hmc.max_grad},
          {"adapt", hmc.adapt}};
}

std::vector<double> ais_betas(int64_t intermediate, const std::string& spacing) {
  const int64_t k = intermediate;
  std::vector<double> b;
  if (spacing == "geometric") {
    const int64_t n_lin = k / 4, n_geo = k - n_lin - 1;
    // linspace(0, 0.01, n_lin + 2) without its end, then geomspace(0.01, 1, n_geo + 2).
    for (int64_t i = 0; i <= n_lin; ++i) b.push_back(0.01 * static_cast<double>(i) / (n_lin + 1));
    for (int64_t i = 0; i <= n_geo + 1; ++i)
      b.push_back(std::pow(10.0, -2.0 + 2.0 * static_cast<double>(i) / (n_geo + 1)));
  } else {
    for (int64_t i = 0; i <= k + 1; ++i) b.push_back(static_cast<double>(i) / (k + 1));
  }
  b.front() = 0.0;
  b.back() = 1.0;
  return b;
}

double log_mean_exp(const torch::Tensor& v) {
  const auto d = v.to(torch::kFloat64).reshape({-1});
  if (d.numel() == 0) return -INFINITY;
  return torch::logsumexp(d, 0).item<double>() - std::log(static_cast<double>(d.numel()));
}

AnnealedImportanceSampler::AnnealedImportanceSampler(Distribution& flow, Energy& energy,
                                                     AisOptions options)
    : flow_(flow), energy_(energy), options_(std::move(options)) {
  options_.check();
  if (flow_.dim() != energy_.dim())
    usage_error("ais", "the flow has " + std::to_string(flow_.dim()) +
                           " dimensions but the energy '" + energy_.name() + "' has " +
                           std::to_string(energy_.dim()));
  if (flow_.context_dim() > 0) usage_error("ais", "the flow must be unconditional");
  betas_ = ais_betas(options_.intermediate, options_.spacing);
  eps_.assign(static_cast<size_t>(options_.intermediate), options_.hmc.step_size);
}

void AnnealedImportanceSampler::set_step_sizes(const std::vector<double>& eps) {
  if (static_cast<int64_t>(eps.size()) != options_.intermediate)
    usage_error("ais", "expected " + std::to_string(options_.intermediate) + " step sizes, got " +
                           std::to_string(eps.size()));
  for (double e : eps)
    if (!(e > 0.0) || !std::isfinite(e)) usage_error("ais", "step sizes must be finite and > 0");
  eps_ = eps;
}

AnnealedImportanceSampler::Point AnnealedImportanceSampler::evaluate(const torch::Tensor& x) {
  Point p;
  p.x = x;
  {
    // log q and its gradient in the flow's dtype and device; only x's gradient is taken.
    torch::AutoGradMode grad_on(true);
    auto xf = x.to(flow_.tensor_options()).detach().requires_grad_(true);
    auto lq = flow_.log_prob(xf);
    auto g = torch::autograd::grad({lq.sum()}, {xf}, {}, /*retain_graph=*/false,
                                   /*create_graph=*/false, /*allow_unused=*/true)[0];
    p.log_q = lq.detach().to(torch::kFloat64).cpu();
    p.grad_log_q = g.defined() ? g.detach().to(torch::kFloat64).cpu() : torch::zeros_like(x);
  }
  torch::Tensor force;
  p.u = energy_.evaluate(x, &force);
  p.force = force;
  evaluations_ += x.size(0);
  return p;
}

AisResult AnnealedImportanceSampler::run(int64_t n) {
  check_positive_int("ais", "n", n);
  torch::NoGradGuard no_grad;
  const double alpha = options_.alpha;
  const int64_t k = options_.intermediate;
  const int64_t eval_before = evaluations_;
  const bool was_training = flow_.is_training();
  flow_.eval();

  auto x0 = flow_.sample(n).to(torch::kFloat64).cpu();
  Point cur = evaluate(x0);
  // Drop particles that cannot be evaluated at the start.
  const auto ok = torch::isfinite(cur.u) & torch::isfinite(cur.log_q) &
                  torch::isfinite(x0).all(1);
  AisResult res;
  res.failed = n - ok.sum().item<int64_t>();
  if (res.failed > 0) {
    const auto idx = ok.nonzero().reshape({-1});
    cur = Point{cur.x.index_select(0, idx), cur.log_q.index_select(0, idx),
                cur.grad_log_q.index_select(0, idx), cur.u.index_select(0, idx),
                cur.force.index_select(0, idx)};
  }
  const int64_t m = cur.x.size(0);
  res.flow_log_w = -cur.u - cur.log_q;
  if (m == 0) {
    res.x = cur.x;
    res.log_w = res.log_q = res.u = torch::zeros({0}, torch::kFloat64);
    res.energy_evaluations = evaluations_ - eval_before;
    if (was_training) flow_.train();
    return res;
  }
  // log p - log q (up to the constant): the increments are (beta_{j+1} - beta_j) alpha times it.
  auto log_w = betas_[1] * alpha * (-cur.u - cur.log_q);

  const double max_grad = options_.hmc.max_grad;
  // Gradient of log f_beta: (1 - beta alpha) grad log q + beta alpha (-grad u), sanitised.
  auto grad_log_f = [&](const Point& p, double beta) {
    auto g = (1.0 - beta * alpha) * p.grad_log_q + (beta * alpha) * p.force;
    return torch::nan_to_num(g, 0.0, 0.0, 0.0).clamp(-max_grad, max_grad);
  };
  auto log_f = [&](const Point& p, double beta) {
    return (1.0 - beta * alpha) * p.log_q - (beta * alpha) * p.u;
  };

  res.accept.assign(static_cast<size_t>(k), 0.0);
  for (int64_t j = 1; j <= k; ++j) {
    const double beta = betas_[static_cast<size_t>(j)], eps = eps_[static_cast<size_t>(j - 1)];
    const auto p0 = torch::randn_like(cur.x);
    auto p = p0.clone();
    Point prop = cur;
    auto g = grad_log_f(prop, beta);
    for (int64_t l = 0; l < options_.hmc.leapfrog; ++l) {
      p = p + 0.5 * eps * g;
      prop = evaluate(prop.x + eps * p);
      g = grad_log_f(prop, beta);
      p = p + 0.5 * eps * g;
    }
    const auto h0 = -log_f(cur, beta) + 0.5 * (p0 * p0).sum(1);
    const auto h1 = -log_f(prop, beta) + 0.5 * (p * p).sum(1);
    auto log_ratio = torch::nan_to_num(h0 - h1, -INFINITY, -INFINITY, -INFINITY);
    const auto finite = torch::isfinite(prop.u) & torch::isfinite(prop.log_q) &
                        torch::isfinite(prop.x).all(1);
    log_ratio = torch::where(finite, log_ratio, torch::full_like(log_ratio, -INFINITY));
    const auto accept = torch::log(torch::rand_like(log_ratio)) < log_ratio;
    const double mean_accept = log_ratio.clamp_max(0.0).exp().mean().item<double>();
    res.accept[static_cast<size_t>(j - 1)] = mean_accept;
    const auto a1 = accept.unsqueeze(1);
    cur = Point{torch::where(a1, prop.x, cur.x), torch::where(accept, prop.log_q, cur.log_q),
                torch::where(a1, prop.grad_log_q, cur.grad_log_q),
                torch::where(accept, prop.u, cur.u), torch::where(a1, prop.force, cur.force)};
    if (options_.hmc.adapt) {
      auto& e = eps_[static_cast<size_t>(j - 1)];
      e = mean_accept > options_.hmc.target_accept ? e * 1.05 : e / 1.05;
    }
    const double d_beta = betas_[static_cast<size_t>(j + 1)] - beta;
    if (d_beta != 0.0) log_w = log_w + d_beta * alpha * (-cur.u - cur.log_q);
  }
  res.x = cur.x;
  res.log_w = log_w;
  res.log_q = cur.log_q;
  res.u = cur.u;
  res.energy_evaluations = evaluations_ - eval_before;
  if (was_training) flow_.train();
  return res;
}

}  // namespace nfkit
