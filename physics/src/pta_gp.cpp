#include "nfkit/physics/pta_gp.h"

#include <torch/torch.h>

#include <cmath>

#include "nfkit/core/checks.h"
#include "nfkit/core/runtime.h"
#include "nfkit/physics/pta.h"

namespace nfkit {
namespace {

constexpr double kLog2Pi = 1.8378770664093453;

torch::Tensor fourier_basis(const torch::Tensor& t, const torch::Tensor& f) {
  auto arg = 2.0 * M_PI * t.unsqueeze(1) * f.unsqueeze(0);  // [n, K]
  return torch::stack({torch::sin(arg), torch::cos(arg)}, 2).reshape({t.size(0), -1});  // [n, 2K] (sin, cos) per k
}

/// phi [B, K] of a power law with log10_A, gamma [B].
torch::Tensor powerlaw_phi(const torch::Tensor& f, const torch::Tensor& la, const torch::Tensor& g, double T) {
  return powerlaw_psd(f, la, g) / T;
}

/// ln|A| and A^-1 b for a batch of SPD matrices A [B, m, m], b [B, m]; rows that are not
/// positive definite get NaN.
std::pair<torch::Tensor, torch::Tensor> chol_solve(const torch::Tensor& A, const torch::Tensor& b) {
  auto [L, info] = torch::linalg_cholesky_ex(A);
  auto ok = info == 0;
  auto Ls = torch::where(ok.view({-1, 1, 1}), L, torch::eye(A.size(1), A.options()).expand_as(A));
  auto logdet = 2.0 * torch::log(torch::diagonal(Ls, 0, 1, 2)).sum(1);
  auto x = torch::cholesky_solve(b.unsqueeze(2), Ls).squeeze(2);
  logdet = torch::where(ok, logdet, torch::full_like(logdet, NAN));
  return {logdet, x};
}

}  // namespace

torch::Tensor hellings_downs(const std::vector<Pulsar>& pulsars) {
  const int64_t P = static_cast<int64_t>(pulsars.size());
  auto G = torch::eye(P, torch::kFloat64);
  for (int64_t a = 0; a < P; ++a)
    for (int64_t b = a + 1; b < P; ++b) {
      const double c = torch::dot(pulsars[a].position, pulsars[b].position).item<double>();
      const double x = std::max((1.0 - c) / 2.0, 1e-300);
      const double g = 1.5 * x * std::log(x) - x / 4.0 + 0.5;
      G[a][b] = g;
      G[b][a] = g;
    }
  return G;
}

PTALikelihood::PTALikelihood(std::vector<Pulsar> pulsars, int64_t K, bool hd)
    : pulsars_(std::move(pulsars)), K_(K), hd_(hd) {
  const char* fn = "PTALikelihood";
  if (pulsars_.empty()) usage_error(fn, "no pulsars");
  check_positive_int(fn, "K", K);
  double t0 = INFINITY, t1 = -INFINITY;
  for (auto& p : pulsars_) {
    const std::string who = "pulsar '" + p.name + "'";
    for (auto* t : {&p.toas, &p.residuals, &p.sigma}) {
      if (!t->defined() || t->dim() != 1) usage_error(fn, who + ": toas, residuals and sigma must be vectors");
      *t = t->to(torch::kFloat64).contiguous();
    }
    if (p.residuals.size(0) != p.toas.size(0) || p.sigma.size(0) != p.toas.size(0) || p.toas.size(0) < 2)
      usage_error(fn, who + ": toas, residuals and sigma must have the same length (>= 2)");
    check_finite(fn, who + " residuals", p.residuals);
    if (!(p.sigma > 0).all().item<bool>()) usage_error(fn, who + ": sigma must be positive");
    if (!p.position.defined() || p.position.numel() != 3) usage_error(fn, who + ": position must be a 3-vector");
    p.position = p.position.to(torch::kFloat64).reshape({3});
    p.position = p.position / p.position.norm();
    t0 = std::min(t0, p.toas.min().item<double>());
    t1 = std::max(t1, p.toas.max().item<double>());
  }
  tspan_ = t1 - t0;
  if (!(tspan_ > 0)) usage_error(fn, "TOAs span no time");
  f_ = torch::arange(1, K + 1, torch::kFloat64) / tspan_;
  for (const auto& p : pulsars_) {
    auto F = fourier_basis(p.toas, f_);
    auto Ninv = 1.0 / p.sigma.pow(2);
    FNF_.push_back((F * Ninv.unsqueeze(1)).t().matmul(F));
    d_.push_back(F.t().matmul(Ninv * p.residuals));
    const double n = static_cast<double>(p.toas.size(0));
    const_.push_back(-0.5 * (p.residuals.pow(2) * Ninv).sum().item<double>() -
                     torch::log(p.sigma).sum().item<double>() - 0.5 * n * kLog2Pi);
  }
  gamma_ = hd_ ? hellings_downs(pulsars_) : torch::eye(static_cast<int64_t>(pulsars_.size()), torch::kFloat64);
}

std::vector<std::string> PTALikelihood::names() const {
  std::vector<std::string> n;
  for (const auto& p : pulsars_) {
    n.push_back(p.name + "_log10_A");
    n.push_back(p.name + "_gamma");
  }
  n.push_back("gw_log10_A");
  n.push_back("gw_gamma");
  return n;
}

torch::Tensor PTALikelihood::pulsar_log_likelihood(int64_t a, const torch::Tensor& phi) const {
  // phi [B, K] -> per coefficient (sin, cos) [B, 2K].
  auto ph = phi.repeat_interleave(2, 1);
  auto Sigma = torch::diag_embed(1.0 / ph) + FNF_[a].unsqueeze(0);
  auto d = d_[a].unsqueeze(0).expand({phi.size(0), -1});
  auto [logdet, x] = chol_solve(Sigma, d);
  auto ll = const_[a] + 0.5 * (d * x).sum(1) - 0.5 * torch::log(ph).sum(1) - 0.5 * logdet;
  return torch::where(torch::isfinite(ll), ll, torch::full_like(ll, -INFINITY));
}

torch::Tensor PTALikelihood::log_likelihood(const torch::Tensor& theta) const {
  const char* fn = "PTALikelihood::log_likelihood";
  check_dim(fn, "theta", theta, 2);
  check_size(fn, "theta", theta, 1, dim());
  auto th = theta.to(torch::kFloat64);
  const int64_t B = th.size(0), P = pulsars(), K = K_;
  auto phi_gw = powerlaw_phi(f_, th.select(1, 2 * P), th.select(1, 2 * P + 1), tspan_);  // [B, K]
  std::vector<torch::Tensor> phi_rn;
  for (int64_t a = 0; a < P; ++a)
    phi_rn.push_back(powerlaw_phi(f_, th.select(1, 2 * a), th.select(1, 2 * a + 1), tspan_));
  if (!hd_) {
    auto ll = torch::zeros({B}, torch::kFloat64);
    for (int64_t a = 0; a < P; ++a) ll = ll + pulsar_log_likelihood(a, phi_rn[a] + phi_gw);
    return ll;
  }
  // Correlated: coefficients ordered (pulsar, k, sin/cos). Per frequency the P x P covariance
  // C_k = diag(phi_rn[:, k]) + Gamma phi_gw[k]; Phi^-1 holds C_k^-1 at (a, k, s), (b, k, s).
  auto rn = torch::stack(phi_rn, 1);                                          // [B, P, K]
  auto C = torch::diag_embed(rn.permute({0, 2, 1})) +
           gamma_.view({1, 1, P, P}) * phi_gw.view({B, K, 1, 1});             // [B, K, P, P]
  auto [Lc, info] = torch::linalg_cholesky_ex(C);
  auto ok = (info == 0).all(1);
  auto Lcs = torch::where((info == 0).view({B, K, 1, 1}), Lc, torch::eye(P, th.options()).expand_as(Lc));
  auto logdet_phi = 2.0 * 2.0 * torch::log(torch::diagonal(Lcs, 0, 2, 3)).sum({1, 2});  // sin and cos
  auto Cinv = torch::cholesky_inverse(Lcs);                                   // [B, K, P, P]
  const int64_t m = 2 * K * P;
  auto Phi_inv = torch::zeros({B, P, K, 2, P, K, 2}, th.options());
  // Phi_inv[b, a, k, s, c, k, s] = Cinv[b, k, a, c]
  for (int64_t k = 0; k < K; ++k)
    for (int64_t s = 0; s < 2; ++s)
      Phi_inv.select(6, s).select(5, k).select(3, s).select(2, k).copy_(Cinv.select(1, k));
  auto Sigma = Phi_inv.reshape({B, m, m}) + torch::block_diag(FNF_).unsqueeze(0);
  auto d = torch::cat(d_).unsqueeze(0).expand({B, m});
  auto [logdet, x] = chol_solve(Sigma, d);
  double c = 0;
  for (double v : const_) c += v;
  auto ll = c + 0.5 * (d * x).sum(1) - 0.5 * logdet_phi - 0.5 * logdet;
  ll = torch::where(ok & torch::isfinite(ll), ll, torch::full_like(ll, -INFINITY));
  return ll;
}

SimulatedPTA simulate_pta(const PTASimulation& s) {
  const char* fn = "simulate_pta";
  check_positive_int(fn, "pulsars", s.pulsars);
  check_positive_int(fn, "toas", s.toas);
  check_positive_int(fn, "components", s.components);
  torch::manual_seed(derive_seed(s.seed, 61, 0));
  const double T = s.years * 365.25 * 86400.0;
  SimulatedPTA out;
  std::vector<double> truth;
  for (int64_t a = 0; a < s.pulsars; ++a) {
    Pulsar p;
    p.name = "p" + std::to_string(a);
    auto t = std::get<0>(torch::sort(torch::rand({s.toas}, torch::kFloat64) * T));
    t[0] = 0.0;
    t[s.toas - 1] = T;
    p.toas = t;
    p.sigma = torch::full({s.toas}, s.sigma, torch::kFloat64);
    auto v = torch::randn({3}, torch::kFloat64);
    p.position = v / v.norm();
    out.pulsars.push_back(p);
    truth.push_back(-14.5 + torch::rand({1}, torch::kFloat64).item<double>());
    truth.push_back(2.0 + 3.0 * torch::rand({1}, torch::kFloat64).item<double>());
  }
  truth.push_back(s.gw_log10_A);
  truth.push_back(s.gw_gamma);
  out.truth = torch::tensor(truth, torch::kFloat64);
  const int64_t P = s.pulsars, K = s.components;
  auto f = torch::arange(1, K + 1, torch::kFloat64) / T;
  auto th = out.truth.unsqueeze(0);
  auto phi_gw = powerlaw_phi(f, th.select(1, 2 * P), th.select(1, 2 * P + 1), T).squeeze(0);  // [K]
  auto G = s.hellings_downs ? hellings_downs(out.pulsars) : torch::eye(P, torch::kFloat64);
  auto LG = torch::linalg_cholesky(G);
  // Common-process coefficients [P, K, 2] correlated across pulsars by Gamma.
  auto z = torch::randn({P, K, 2}, torch::kFloat64);
  auto common = torch::einsum("ab,bks->aks", {LG, z}) * torch::sqrt(phi_gw).view({1, K, 1});
  for (int64_t a = 0; a < P; ++a) {
    auto& p = out.pulsars[a];
    auto phi = powerlaw_phi(f, th.select(1, 2 * a), th.select(1, 2 * a + 1), T).squeeze(0);
    auto c = common[a] + torch::randn({K, 2}, torch::kFloat64) * torch::sqrt(phi).unsqueeze(1);
    auto F = fourier_basis(p.toas, f);
    p.residuals = F.matmul(c.reshape({-1})) + s.sigma * torch::randn({s.toas}, torch::kFloat64);
  }
  return out;
}

}  // namespace nfkit
