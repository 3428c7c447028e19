#include "nfkit/boltzmann/ais.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdio>

#include "nfkit/boltzmann/reweight.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/progress.h"

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
  if (kernel != "hmc" && kernel != "mala" && kernel != "ula")
    usage_error(fn, "--kernel must be hmc, mala or ula, got '" + kernel + "'");
  if (moves < 1 || moves > 1000)
    usage_error(fn, "--moves (MCMC moves per density) must be in 1..1000, got " + std::to_string(moves));
  check_in_range("ais", "--resample-threshold", resample_threshold, 0.0, 1.0);
  if (resampling != "systematic" && resampling != "multinomial")
    usage_error(fn, "--resampling must be systematic or multinomial, got '" + resampling + "'");
  if (std::isnan(energy_cut)) usage_error(fn, "--energy-cut must be a number");
  if (hmc.leapfrog < 1 || hmc.leapfrog > 1000)
    usage_error(fn, "--leapfrog must be in 1..1000, got " + std::to_string(hmc.leapfrog));
  check_positive("ais", "--step-size", hmc.step_size);
  check_in_range("ais", "target acceptance", hmc.target_accept, 0.0, 1.0, true);
  check_positive("ais", "max_grad", hmc.max_grad);
  for (double v : hmc.scales)
    if (!(v > 0.0) || !std::isfinite(v)) usage_error(fn, "move scales must be finite and > 0");
}

nlohmann::json AisOptions::to_json() const {
  return {{"intermediate", intermediate},
          {"spacing", spacing},
          {"alpha", alpha},
          {"kernel", kernel},
          {"moves", moves},
          {"leapfrog", kernel == "hmc" ? hmc.leapfrog : 1},
          {"step_size", hmc.step_size},
          {"target_accept", hmc.target_accept},
          {"max_grad", hmc.max_grad},
          {"adapt", hmc.adapt},
          {"scales", hmc.scales.empty() ? nlohmann::json() : nlohmann::json(hmc.scales)},
          {"resample_threshold", resample_threshold},
          {"resampling", resampling},
          {"energy_cut", std::isfinite(energy_cut) ? nlohmann::json(energy_cut) : nlohmann::json()}};
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
    : flow_(&flow), dim_(flow.dim()), energy_(energy), options_(std::move(options)) {
  if (flow.context_dim() > 0) usage_error("ais", "the flow must be unconditional");
  sample_ = [this](int64_t n) { return flow_->sample(n); };
  log_prob_ = [this](const torch::Tensor& x) { return flow_->log_prob(x.to(flow_->tensor_options())); };
  init();
}

AnnealedImportanceSampler::AnnealedImportanceSampler(
    int64_t dim, std::function<torch::Tensor(int64_t)> sample,
    std::function<torch::Tensor(const torch::Tensor&)> log_prob, Energy& energy, AisOptions options)
    : dim_(dim), sample_(std::move(sample)), log_prob_(std::move(log_prob)), energy_(energy),
      options_(std::move(options)) {
  if (!sample_ || !log_prob_) usage_error("ais", "needs a sample and a log_prob function");
  init();
}

void AnnealedImportanceSampler::init() {
  options_.check();
  if (dim_ != energy_.dim())
    usage_error("ais", "the flow has " + std::to_string(dim_) + " dimensions but the energy '" +
                           energy_.name() + "' has " + std::to_string(energy_.dim()));
  if (!options_.hmc.scales.empty() && static_cast<int64_t>(options_.hmc.scales.size()) != dim_)
    usage_error("ais", "has " + std::to_string(options_.hmc.scales.size()) + " move scales for " +
                           std::to_string(dim_) + " dimensions");
  if (options_.kernel != "hmc") options_.hmc.leapfrog = 1;
  if (options_.kernel == "ula") options_.hmc.adapt = false;
  betas_ = ais_betas(options_.intermediate, options_.spacing);
  eps_.assign(static_cast<size_t>(options_.intermediate), options_.hmc.step_size);
  fresh_.assign(static_cast<size_t>(options_.intermediate), true);
}

torch::Tensor AnnealedImportanceSampler::resample_indices(const torch::Tensor& log_w) const {
  const int64_t m = log_w.size(0);
  const auto w = torch::softmax(log_w, 0);
  if (options_.resampling == "multinomial") return torch::multinomial(w, m, true);
  // Systematic: one uniform offset, m evenly spaced points through the cumulative weights.
  const auto c = w.cumsum(0);
  const auto u = (torch::rand({1}, torch::kFloat64) + torch::arange(m, torch::kFloat64)) / static_cast<double>(m);
  return torch::searchsorted(c, u).clamp_max(m - 1);
}

void AnnealedImportanceSampler::set_step_sizes(const std::vector<double>& eps) {
  if (static_cast<int64_t>(eps.size()) != options_.intermediate)
    usage_error("ais", "expected " + std::to_string(options_.intermediate) + " step sizes, got " +
                           std::to_string(eps.size()));
  for (double e : eps)
    if (!(e > 0.0) || !std::isfinite(e)) usage_error("ais", "step sizes must be finite and > 0");
  eps_ = eps;
  fresh_.assign(eps_.size(), false);
}

AnnealedImportanceSampler::Point AnnealedImportanceSampler::evaluate(const torch::Tensor& x) {
  // In chunks (bounded autograd memory for large populations).
  constexpr int64_t kChunk = 4096;
  const int64_t n = x.size(0);
  std::vector<torch::Tensor> lqs, gs, us, fs;
  for (int64_t a = 0; a < n; a += kChunk) {
    const auto xc = x.narrow(0, a, std::min(kChunk, n - a));
    {
      // log q and its gradient; only x's gradient is taken.
      torch::AutoGradMode grad_on(true);
      auto xf = xc.detach().clone().requires_grad_(true);
      auto lq = log_prob_(xf);
      auto g = torch::autograd::grad({lq.sum()}, {xf}, {}, /*retain_graph=*/false,
                                     /*create_graph=*/false, /*allow_unused=*/true)[0];
      lqs.push_back(lq.detach().to(torch::kFloat64).cpu());
      gs.push_back(g.defined() ? g.detach().to(torch::kFloat64).cpu() : torch::zeros_like(xc));
    }
    torch::Tensor force;
    torch::Tensor u;
    try {
      u = energy_.evaluate(xc, &force);
    } catch (const std::exception&) {
      // An energy that throws for a batch is asked one configuration at a time; what still
      // throws gets u = +inf and zero force (zero weight, rejected as a proposal).
      u = torch::full({xc.size(0)}, INFINITY, torch::kFloat64);
      force = torch::zeros_like(xc);
      for (int64_t i = 0; i < xc.size(0); ++i) {
        try {
          torch::Tensor fi;
          const auto ui = energy_.evaluate(xc.narrow(0, i, 1), &fi);
          u[i] = ui[0];
          force[i] = fi[0];
        } catch (const std::exception&) {
        }
      }
    }
    us.push_back(torch::nan_to_num(u.to(torch::kFloat64), INFINITY, INFINITY, -INFINITY));
    fs.push_back(force.to(torch::kFloat64));
  }
  evaluations_ += n;
  return Point{x, torch::cat(lqs), torch::cat(gs), torch::cat(us), torch::cat(fs)};
}

AisResult AnnealedImportanceSampler::run(int64_t n, const std::function<bool()>& stop, bool progress) {
  check_positive_int("ais", "n", n);
  torch::NoGradGuard no_grad;
  const double alpha = options_.alpha;
  const int64_t k = options_.intermediate;
  const int64_t eval_before = evaluations_;
  const bool was_training = flow_ && flow_->is_training();
  if (flow_) flow_->eval();
  struct Restore {
    Distribution* f;
    bool on;
    ~Restore() {
      if (f && on) f->train();
    }
  } restore{flow_, was_training};

  auto x0 = energy_.wrap(sample_(n).to(torch::kFloat64).cpu());
  Point cur = evaluate(x0);
  auto keep = [&cur](const torch::Tensor& idx) {
    cur = Point{cur.x.index_select(0, idx), cur.log_q.index_select(0, idx),
                cur.grad_log_q.index_select(0, idx), cur.u.index_select(0, idx),
                cur.force.index_select(0, idx)};
  };
  // Drop particles that cannot be evaluated at the start, then those above the energy cut.
  AisResult res;
  const auto ok = torch::isfinite(cur.u) & torch::isfinite(cur.log_q) & torch::isfinite(x0).all(1);
  res.failed = n - ok.sum().item<int64_t>();
  if (res.failed > 0) keep(ok.nonzero().reshape({-1}));
  if (std::isfinite(options_.energy_cut)) {
    const auto below = cur.u <= options_.energy_cut;
    res.cut = cur.u.size(0) - below.sum().item<int64_t>();
    if (res.cut > 0) keep(below.nonzero().reshape({-1}));
  }
  const int64_t m = cur.x.size(0);
  res.flow_log_w = -cur.u - cur.log_q;
  if (m == 0) {
    res.x = cur.x;
    res.log_w = res.log_q = res.u = torch::zeros({0}, torch::kFloat64);
    res.energy_evaluations = evaluations_ - eval_before;
    return res;
  }
  // Dropped particles count as zero weight: log Z is over all n.
  double log_z = std::log(static_cast<double>(m) / static_cast<double>(n));
  auto log_w = betas_[1] * alpha * (-cur.u - cur.log_q);

  const double max_grad = options_.hmc.max_grad;
  const bool metropolis = options_.kernel != "ula";
  // Moves in y = x / s: the gradient in y is s * grad_x, a position step eps * p in y is
  // eps * s * p in x.
  const auto s = options_.hmc.scales.empty()
                     ? torch::ones({dim_}, torch::kFloat64)
                     : torch::tensor(options_.hmc.scales, torch::kFloat64);
  // Gradient of log f_beta in y: s ((1 - beta alpha) grad log q + beta alpha (-grad u)),
  // sanitised.
  auto grad_log_f = [&](const Point& p, double beta) {
    auto g = (1.0 - beta * alpha) * p.grad_log_q + (beta * alpha) * p.force;
    return (s * torch::nan_to_num(g, 0.0, 0.0, 0.0)).clamp(-max_grad, max_grad);
  };
  auto log_f = [&](const Point& p, double beta) {
    return (1.0 - beta * alpha) * p.log_q - (beta * alpha) * p.u;
  };

  res.accept.assign(static_cast<size_t>(k), 0.0);
  res.ess.assign(static_cast<size_t>(k), 0.0);
  ProgressOptions popts;
  popts.quiet = !progress;
  Progress bar(options_.resample_threshold > 0 ? "smc" : "ais", k, popts);
  for (int64_t j = 1; j <= k; ++j) {
    const auto jj = static_cast<size_t>(j - 1);
    if (stop && stop()) {
      res.interrupted = true;
      return res;
    }
    const double beta = betas_[static_cast<size_t>(j)];
    res.ess[jj] = ess_fraction_or_zero(log_w);
    if (options_.resample_threshold > 0 && res.ess[jj] < options_.resample_threshold) {
      log_z += log_mean_exp(log_w);
      keep(resample_indices(log_w));
      log_w = torch::zeros_like(log_w);
      ++res.resamplings;
    }
    if (fresh_[jj] && j > 1) eps_[jj] = eps_[jj - 1];
    double accept_sum = 0;
    for (int64_t move = 0; move < options_.moves; ++move) {
      const double eps = eps_[jj];
      const auto p0 = torch::randn_like(cur.x);
      auto p = p0.clone();
      Point prop = cur;
      auto g = grad_log_f(prop, beta);
      for (int64_t l = 0; l < options_.hmc.leapfrog; ++l) {
        p = p + 0.5 * eps * g;
        prop = evaluate(energy_.wrap(prop.x + eps * s * p));
        g = grad_log_f(prop, beta);
        p = p + 0.5 * eps * g;
      }
      const auto finite = torch::isfinite(prop.u) & torch::isfinite(prop.log_q) & torch::isfinite(prop.x).all(1);
      torch::Tensor accept;
      double mean_accept;
      if (metropolis) {
        const auto h0 = -log_f(cur, beta) + 0.5 * (p0 * p0).sum(1);
        const auto h1 = -log_f(prop, beta) + 0.5 * (p * p).sum(1);
        auto log_ratio = torch::nan_to_num(h0 - h1, -INFINITY, -INFINITY, -INFINITY);
        log_ratio = torch::where(finite, log_ratio, torch::full_like(log_ratio, -INFINITY));
        accept = torch::log(torch::rand_like(log_ratio)) < log_ratio;
        mean_accept = log_ratio.clamp_max(0.0).exp().mean().item<double>();
      } else {
        accept = finite;
        mean_accept = finite.to(torch::kFloat64).mean().item<double>();
      }
      accept_sum += mean_accept;
      const auto a1 = accept.unsqueeze(1);
      cur = Point{torch::where(a1, prop.x, cur.x), torch::where(accept, prop.log_q, cur.log_q),
                  torch::where(a1, prop.grad_log_q, cur.grad_log_q), torch::where(accept, prop.u, cur.u),
                  torch::where(a1, prop.force, cur.force)};
      if (options_.hmc.adapt) {
        auto& e = eps_[jj];
        e = mean_accept > options_.hmc.target_accept ? e * 1.05 : e / 1.05;
      }
    }
    fresh_[jj] = false;
    res.accept[jj] = accept_sum / static_cast<double>(options_.moves);
    const double d_beta = betas_[static_cast<size_t>(j + 1)] - beta;
    if (d_beta != 0.0) log_w = log_w + d_beta * alpha * (-cur.u - cur.log_q);
    char status[96];
    std::snprintf(status, sizeof status, "ESS %.3f  accept %.2f  step %.3g  resampled %lld", res.ess[jj],
                  res.accept[jj], eps_[jj], static_cast<long long>(res.resamplings));
    bar.update(j, status);
  }
  bar.finish();
  res.log_z = log_z + log_mean_exp(log_w);
  res.x = cur.x;
  res.log_w = log_w;
  res.log_q = cur.log_q;
  res.u = cur.u;
  res.energy_evaluations = evaluations_ - eval_before;
  return res;
}

}  // namespace nfkit
