#include "nfkit/flows/continuous_flow.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/flows/builder.h"

namespace nfkit {

json ContinuousFlowOptions::to_json() const {
  return {{"ode", ode_.to_json()},        {"divergence", divergence_},
          {"exact_max_dim", exact_max_dim_}, {"probe", probe_},
          {"probes", probes_},             {"probe_seed", probe_seed_},
          {"path", path_}};
}

ContinuousFlowOptions ContinuousFlowOptions::from_json(const json& j) {
  ContinuousFlowOptions o;
  o.ode(OdeOptions::from_json(j.at("ode")))
      .divergence(j.at("divergence").get<std::string>())
      .exact_max_dim(j.at("exact_max_dim").get<int64_t>())
      .probe(j.at("probe").get<std::string>())
      .probes(j.at("probes").get<int64_t>())
      .probe_seed(j.at("probe_seed").get<uint64_t>())
      .path(j.at("path").get<std::string>());
  return o;
}

void ContinuousFlowOptions::validate() const {
  ode_.validate();
  if (divergence_ != "auto" && divergence_ != "exact" && divergence_ != "hutchinson")
    usage_error("--divergence", "'" + divergence_ + "' is not a divergence estimator, expected auto, exact or hutchinson");
  if (probe_ != "rademacher" && probe_ != "gaussian")
    usage_error("--probe", "'" + probe_ + "' is not a probe distribution, expected rademacher or gaussian");
  check_positive_int("--probes", "value", probes_);
  if (exact_max_dim_ < 0) usage_error("--exact-max-dim", "must be >= 0");
}

ContinuousFlow::ContinuousFlow(DistributionPtr base, VelocityFieldPtr velocity,
                               ContinuousFlowOptions opts)
    : Distribution(base->dim(), velocity->context_dim()),
      base_(std::move(base)),
      velocity_(std::move(velocity)),
      opts_(std::move(opts)) {
  if (base_->context_dim() != 0) usage_error("ContinuousFlow", "the base must be unconditional");
  if (velocity_->dim() != base_->dim())
    usage_error("ContinuousFlow", "the velocity field has dimension " + std::to_string(velocity_->dim()) +
                                      " but the base " + std::to_string(base_->dim()));
  opts_.validate();
  register_module("base", base_);
  register_module("velocity", velocity_);
}

json ContinuousFlow::config() const {
  return {{"type", "continuous_flow"}, {"base", base_->config()},
          {"velocity", velocity_->config()}, {"options", opts_.to_json()}};
}

bool ContinuousFlow::exact_divergence() const {
  return opts_.divergence() == "exact" ||
         (opts_.divergence() == "auto" && dim() <= opts_.exact_max_dim());
}

std::string ContinuousFlow::estimator() const {
  if (exact_divergence()) return "exact";
  return "hutchinson (" + opts_.probe() + ", " + std::to_string(opts_.probes()) +
         (opts_.probes() == 1 ? " probe)" : " probes)");
}

torch::Tensor exact_divergence(VelocityField& v, const torch::Tensor& t, const torch::Tensor& x,
                               const torch::Tensor& context) {
  torch::AutoGradMode on(true);
  const auto xg = x.detach().requires_grad_(true);
  const auto out = v.forward(t, xg, context);
  auto div = torch::zeros({x.size(0)}, x.options());
  const int64_t D = x.size(1);
  for (int64_t i = 0; i < D; ++i) {
    const auto g = torch::autograd::grad({out.select(1, i).sum()}, {xg}, {}, /*retain_graph=*/i + 1 < D)[0];
    div = div + g.select(1, i);
  }
  return div.detach();
}

torch::Tensor ContinuousFlow::transport(const torch::Tensor& x, double t0, double t1,
                                        const torch::Tensor& context) {
  return transport(x, t0, t1, opts_.ode(), context);
}

torch::Tensor ContinuousFlow::transport(const torch::Tensor& x, double t0, double t1,
                                        const OdeOptions& ode, const torch::Tensor& context) {
  const char* fn = "ContinuousFlow::transport";
  check_dim(fn, "x", x, 2);
  check_size(fn, "x", x, 1, dim());
  check_context(fn, context, context_dim(), x.size(0), x);
  stats_ = OdeStats();
  const auto xo = x.to(tensor_options());
  const auto ctx = context.defined() ? context.to(tensor_options()) : context;
  OdeFn f = [&](double t, const torch::Tensor& y) {
    return velocity_->forward(torch::full({}, t, y.options()), y, ctx);
  };
  return odeint(f, xo, t0, t1, ode, &stats_);
}

std::tuple<torch::Tensor, torch::Tensor> ContinuousFlow::transport_with_log_density_change(
    const torch::Tensor& x, double t0, double t1, const torch::Tensor& context) {
  const int64_t D = dim(), B = x.size(0);
  const auto xo = x.to(tensor_options()).detach();
  const auto ctx = context.defined() ? context.to(tensor_options()) : context;
  const bool exact = exact_divergence();
  torch::Tensor probes;  // [P, B, D], fixed along the trajectory
  if (!exact) {
    auto gen = at::detail::createCPUGenerator(opts_.probe_seed());
    const std::vector<int64_t> shape{opts_.probes(), B, D};
    const auto cpu = torch::TensorOptions().dtype(torch::kFloat64);
    if (opts_.probe() == "gaussian")
      probes = at::randn(shape, gen, cpu);
    else
      probes = at::randint(0, 2, shape, gen, cpu).mul_(2).sub_(1);
    probes = probes.to(tensor_options());
  }
  stats_ = OdeStats();
  OdeFn f = [&](double t, const torch::Tensor& y) {
    torch::AutoGradMode on(true);
    const auto xs = y.narrow(1, 0, D).detach().requires_grad_(true);
    const auto v = velocity_->forward(torch::full({}, t, y.options()), xs, ctx);
    auto div = torch::zeros({B}, y.options());
    if (exact) {
      for (int64_t i = 0; i < D; ++i) {
        const auto g = torch::autograd::grad({v.select(1, i).sum()}, {xs}, {}, i + 1 < D)[0];
        div = div + g.select(1, i);
      }
    } else {
      const int64_t P = probes.size(0);
      for (int64_t p = 0; p < P; ++p) {
        const auto e = probes[p];
        const auto g = torch::autograd::grad({(v * e).sum()}, {xs}, {}, p + 1 < P)[0];
        div = div + (g * e).sum(1);
      }
      div = div / static_cast<double>(P);
    }
    return torch::cat({v.detach(), -div.detach().unsqueeze(1)}, 1);
  };
  const auto y0 = torch::cat({xo, torch::zeros({B, 1}, xo.options())}, 1);
  const auto y1 = odeint(f, y0, t0, t1, opts_.ode(), &stats_);
  return {y1.narrow(1, 0, D), y1.select(1, D)};
}

torch::Tensor ContinuousFlow::log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) {
  auto [x0, change] = transport_with_log_density_change(x, 1.0, 0.0, context);
  // change = log p_0(x_0) - log p_1(x_1)
  torch::NoGradGuard ng;
  return base_->log_prob(x0) - change;
}

std::tuple<torch::Tensor, torch::Tensor> ContinuousFlow::sample_impl(int64_t n,
                                                                     const torch::Tensor& context) {
  torch::Tensor z, log_p0;
  {
    torch::NoGradGuard ng;
    std::tie(z, log_p0) = base_->sample_and_log_prob(n);
  }
  auto [x, change] = transport_with_log_density_change(z, 0.0, 1.0, context);
  return {x, log_p0 + change};
}

torch::Tensor ContinuousFlow::sample_only_impl(int64_t n, const torch::Tensor& context) {
  torch::NoGradGuard ng;
  return transport(base_->sample(n), 0.0, 1.0, context);
}

ContinuousFlowPtr make_continuous_flow(const json& c) {
  if (c.value("type", "") != "continuous_flow")
    runtime_error("make_continuous_flow", "configuration is not a continuous flow");
  return std::make_shared<ContinuousFlow>(make_distribution(c.at("base")),
                                          make_velocity_field(c.at("velocity")),
                                          ContinuousFlowOptions::from_json(c.at("options")));
}

}  // namespace nfkit
