#include "nfkit/flows/flow_map.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/flows/flow_matching.h"
#include "velocity_mlp_parts.h"

namespace nfkit {

namespace {

// Time features of t ([B] or 0-d) and, if wanted, their derivative in t.
std::pair<torch::Tensor, torch::Tensor> time_features(const torch::Tensor& t, const torch::Tensor& freqs,
                                                      bool tangent) {
  if (!freqs.defined()) {
    auto f = t.unsqueeze(-1);
    return {f, tangent ? torch::ones_like(f) : torch::Tensor()};
  }
  const auto w = freqs.to(t.dtype());
  const auto arg = (1000.0 * t).unsqueeze(-1) * w;
  const auto s = torch::sin(arg), c = torch::cos(arg);
  auto f = torch::cat({s, c}, -1);
  if (!tangent) return {f, {}};
  return {f, torch::cat({1000.0 * w * c, -1000.0 * w * s}, -1)};
}

constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;

// The activation's derivative at its input a (differentiable in a).
torch::Tensor activation_derivative(const torch::Tensor& a, bool selu) {
  if (selu) return torch::where(a > 0, torch::full({}, kSeluScale, a.options()), kSeluScale * kSeluAlpha * torch::exp(a));
  const auto sg = torch::sigmoid(a);
  return sg * (1 + a * (1 - sg));
}

torch::Tensor time_gap(const torch::Tensor& s, const torch::Tensor& t) {
  auto d = t - s;
  return d.dim() == 1 ? d.unsqueeze(1) : d;
}

}  // namespace

FlowMapMLP::FlowMapMLP(VelocityMLPOptions opts)
    : VelocityField(opts.dim(), opts.context_dim()), opts_(std::move(opts)) {
  opts_.validate();
  selu_ = opts_.activation() == "selu";
  const int64_t tf = detail::register_time_embedding(*this, opts_, &freqs_);
  layers_ = detail::register_mlp_layers(*this, opts_.dim() + 2 * tf + opts_.context_dim(), opts_);
}

nlohmann::json FlowMapMLP::config() const {
  auto j = opts_.to_json();
  j["type"] = "flow_map_mlp";
  return j;
}

void FlowMapMLP::check(const char* fn, const torch::Tensor& s, const torch::Tensor& t,
                       const torch::Tensor& x, const torch::Tensor& context) const {
  check_dim(fn, "x", x, 2);
  check_size(fn, "x", x, 1, dim());
  check_context(fn, context, context_dim(), x.size(0));
  for (const auto* p : {&s, &t}) {
    if (p->dim() != 0) {
      check_dim(fn, p == &s ? "s" : "t", *p, 1);
      check_size(fn, p == &s ? "s" : "t", *p, 0, x.size(0));
    }
  }
}

std::pair<torch::Tensor, torch::Tensor> FlowMapMLP::run(const torch::Tensor& s, const torch::Tensor& t,
                                                        const torch::Tensor& x, const torch::Tensor& context,
                                                        bool with_tangent) {
  // First layer on [x, phi(s), phi(t), context] through column blocks of its weight. Forward
  // mode in t: the tangent of a layer's pre-activation is W_t phi'(t) in the first layer and
  // W h' after it; h' = act'(a) a'.
  const int64_t D = opts_.dim(), C = opts_.context_dim();
  const auto& first = layers_[0];
  const auto w = first->weight;
  const int64_t tf = (w.size(1) - D - C) / 2;
  const auto fs = time_features(s, freqs_, false).first;
  const auto [ft, dft] = time_features(t, freqs_, with_tangent);
  const auto wt = w.narrow(1, D + tf, tf);
  auto a = torch::addmm(first->bias, x, w.narrow(1, 0, D).t()) + torch::matmul(fs, w.narrow(1, D, tf).t()) +
           torch::matmul(ft, wt.t());
  if (C > 0) a = a.addmm(context.to(x.dtype()), w.narrow(1, D + 2 * tf, C).t());
  torch::Tensor da = with_tangent ? torch::matmul(dft, wt.t()) : torch::Tensor();
  for (size_t l = 1; l < layers_.size(); ++l) {
    const auto h = selu_ ? torch::selu(a) : torch::silu(a);
    torch::Tensor dh;
    if (with_tangent) dh = activation_derivative(a, selu_) * da;
    a = layers_[l]->forward(h);
    if (with_tangent) da = torch::matmul(dh, layers_[l]->weight.t());
  }
  if (with_tangent && da.dim() < a.dim()) da = da.expand_as(a);
  return {a, da};
}

torch::Tensor FlowMapMLP::field(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& x,
                                const torch::Tensor& context) {
  const auto sb = s.to(x.options()), tb = t.to(x.options());
  check("FlowMapMLP::field", sb, tb, x, context);
  return run(sb, tb, x, context, false).first;
}

torch::Tensor FlowMapMLP::map(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& x,
                              const torch::Tensor& context) {
  const auto sb = s.to(x.options()), tb = t.to(x.options());
  check("FlowMapMLP::map", sb, tb, x, context);
  return x + time_gap(sb, tb) * run(sb, tb, x, context, false).first;
}

std::pair<torch::Tensor, torch::Tensor> FlowMapMLP::map_and_time_derivative(const torch::Tensor& s,
                                                                            const torch::Tensor& t,
                                                                            const torch::Tensor& x,
                                                                            const torch::Tensor& context) {
  const auto sb = s.to(x.options()), tb = t.to(x.options());
  check("FlowMapMLP::map_and_time_derivative", sb, tb, x, context);
  const auto [v, dv] = run(sb, tb, x, context, true);
  const auto gap = time_gap(sb, tb);
  return {x + gap * v, v + gap * dv};
}

torch::Tensor FlowMapMLP::velocity(const torch::Tensor& t, const torch::Tensor& x, const torch::Tensor& context) {
  return run(t, t, x, context, false).first;
}

torch::Tensor flow_map_loss(FlowMapMLP& fm, const CfmOptions& o, const torch::Tensor& x0,
                            const torch::Tensor& x1, const torch::Tensor& context) {
  check_cfm_batch("flow_map_loss", x0, x1);
  const int64_t B = x0.size(0);
  const double frac = o.diagonal_fraction();
  int64_t nd = std::llround(frac * static_cast<double>(B));
  if (frac > 0 && frac < 1 && B >= 2) nd = std::clamp<int64_t>(nd, 1, B - 1);
  const int64_t nl = B - nd;
  auto rows = [&](const torch::Tensor& x, int64_t from, int64_t n) {
    return x.defined() ? x.narrow(0, from, n) : x;
  };
  std::vector<torch::Tensor> per;
  if (nd > 0) {  // diagonal: flow matching on b_t = v_{t,t}
    const auto a = rows(x0, 0, nd), b = rows(x1, 0, nd);
    const auto t = sample_times(o, nd, a.options());
    const auto tc = t.unsqueeze(1);
    const auto xt = (1 - tc) * a + tc * b;
    per.push_back(cfm_per_row_loss(o, fm.field(t, t, xt, rows(context, 0, nd)) - (b - a)));
  }
  if (nl > 0) {  // off-diagonal: the Lagrangian equation, teacher under stop-gradient
    const auto a = rows(x0, nd, nl), b = rows(x1, nd, nl);
    const auto c = rows(context, nd, nl);
    const auto u = torch::rand({2, nl}, a.options());
    const auto s = std::get<0>(u.min(0)), t = std::get<0>(u.max(0));
    const auto sc = s.unsqueeze(1);
    const auto is = (1 - sc) * a + sc * b;
    const auto [X, dX] = fm.map_and_time_derivative(s, t, is, c);
    torch::Tensor teacher;
    {
      torch::NoGradGuard ng;
      teacher = fm.field(t, t, X.detach(), c);
    }
    per.push_back(cfm_per_row_loss(o, dX - teacher));
  }
  return torch::cat(per).mean();
}

std::vector<double> flow_map_grid(int64_t steps) {
  check_positive_int("flow_map_grid", "steps", steps);
  std::vector<double> g(static_cast<size_t>(steps) + 1);
  for (int64_t k = 0; k <= steps; ++k) g[k] = static_cast<double>(k) / static_cast<double>(steps);
  return g;
}

torch::Tensor sample_flow_map(FlowMapMLP& fm, const torch::Tensor& x0, int64_t steps, const torch::Tensor& context) {
  torch::NoGradGuard ng;
  const auto g = flow_map_grid(steps);
  auto x = x0;
  for (int64_t k = 0; k < steps; ++k)
    x = fm.map(torch::full({}, g[k], x.options()), torch::full({}, g[k + 1], x.options()), x, context);
  return x;
}

}  // namespace nfkit
