#include "nfkit/flows/flow_matching.h"

#include <torch/torch.h>

#include <cmath>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/flows/flow_map.h"
#include "nfkit/flows/optimal_transport.h"

namespace nfkit {

namespace {
const std::vector<std::pair<std::string, CfmMethod>>& method_table() {
  static const std::vector<std::pair<std::string, CfmMethod>> t{
      {"icfm", CfmMethod::kICFM}, {"otcfm", CfmMethod::kOTCFM}, {"sbcfm", CfmMethod::kSBCFM},
      {"fm", CfmMethod::kFM},     {"vpcfm", CfmMethod::kVPCFM}, {"wcfm", CfmMethod::kWCFM},
      {"rf", CfmMethod::kRF},     {"flowmap", CfmMethod::kFlowMap}};
  return t;
}
}  // namespace

CfmMethod parse_cfm_method(const std::string& name, const std::string& option) {
  for (const auto& [n, m] : method_table())
    if (n == name) return m;
  usage_error(option, "'" + name + "' is not a flow-matching method, expected icfm, otcfm, sbcfm, fm, vpcfm, wcfm, rf or flowmap");
}

std::string cfm_method_name(CfmMethod m) {
  for (const auto& [n, mm] : method_table())
    if (mm == m) return n;
  return "?";
}

const std::vector<std::string>& cfm_method_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& [n, m] : method_table()) v.push_back(n);
    return v;
  }();
  return names;
}

double cfm_default_sigma(CfmMethod m) { return m == CfmMethod::kRF || m == CfmMethod::kFlowMap ? 0.0 : 0.1; }

nlohmann::json CfmOptions::to_json() const {
  return {{"method", cfm_method_name(method_)}, {"sigma", sigma_},
          {"exact_ot_max", exact_ot_max_},      {"ot_reg", ot_reg_},
          {"sinkhorn_iters", sinkhorn_iters_},  {"wcfm_eps", wcfm_eps_},
          {"time", time_},                      {"ushape_a", ushape_a_},
          {"loss", loss_},                      {"diagonal_fraction", diagonal_fraction_}};
}

CfmOptions CfmOptions::from_json(const nlohmann::json& j) {
  CfmOptions o;
  o.method(parse_cfm_method(j.at("method").get<std::string>(), "method"))
      .sigma(j.at("sigma").get<double>())
      .exact_ot_max(j.at("exact_ot_max").get<int64_t>())
      .ot_reg(j.at("ot_reg").get<double>())
      .sinkhorn_iters(j.at("sinkhorn_iters").get<int64_t>())
      .wcfm_eps(j.at("wcfm_eps").get<double>())
      .time(j.at("time").get<std::string>())
      .ushape_a(j.at("ushape_a").get<double>())
      .loss(j.at("loss").get<std::string>())
      .diagonal_fraction(j.value("diagonal_fraction", 0.75));  // absent before flow maps
  return o;
}

void CfmOptions::validate() const {
  check_finite("--sigma", "value", sigma_);
  if (sigma_ < 0) usage_error("--sigma", "must be >= 0");
  if (method_ == CfmMethod::kSBCFM && !(sigma_ > 0))
    usage_error("--sigma", "must be > 0 for sbcfm (the entropic plan has reg = 2 sigma^2), got " +
                               std::to_string(sigma_));
  if (method_ == CfmMethod::kFM && !(sigma_ < 1))
    usage_error("--sigma", "must be < 1 for fm (sigma_min of the target path)");
  if (method_ == CfmMethod::kRF && sigma_ != 0)
    usage_error("--sigma", "rectified flow uses the straight path (sigma = 0); use icfm for sigma > 0");
  if (method_ == CfmMethod::kFlowMap && sigma_ != 0)
    usage_error("--sigma", "flow maps use the deterministic interpolant (sigma = 0)");
  check_finite("--diagonal-fraction", "value", diagonal_fraction_);
  if (diagonal_fraction_ < 0 || diagonal_fraction_ > 1) usage_error("--diagonal-fraction", "must be in [0, 1]");
  check_positive_int("--exact-ot-max", "value", exact_ot_max_);
  check_positive("--ot-reg", "value", ot_reg_);
  check_positive_int("--sinkhorn-iters", "value", sinkhorn_iters_);
  check_positive("--wcfm-eps", "value", wcfm_eps_);
  if (time_ != "uniform" && time_ != "ushaped")
    usage_error("--time", "'" + time_ + "' is not a time distribution, expected uniform or ushaped");
  check_positive("--ushape-a", "value", ushape_a_);
  if (loss_ != "mse" && loss_ != "pseudo-huber")
    usage_error("--loss", "'" + loss_ + "' is not a loss, expected mse or pseudo-huber");
}

ConditionalPath conditional_path(CfmMethod m, double sigma, const torch::Tensor& x0,
                                 const torch::Tensor& x1, const torch::Tensor& t_in,
                                 const torch::Tensor& eps) {
  const auto t = t_in.to(x0.dtype()).unsqueeze(1);
  ConditionalPath p;
  switch (m) {
    case CfmMethod::kICFM:
    case CfmMethod::kOTCFM:
    case CfmMethod::kWCFM:
    case CfmMethod::kRF:
    case CfmMethod::kFlowMap:
      p.xt = t * x1 + (1 - t) * x0;
      if (sigma != 0) p.xt = p.xt + sigma * eps;
      p.ut = x1 - x0;
      break;
    case CfmMethod::kSBCFM: {
      const auto mu = t * x1 + (1 - t) * x0;
      p.xt = mu + sigma * torch::sqrt(t * (1 - t)) * eps;
      // (1 - 2t) / (2 t (1 - t)) (x_t - mu_t) + x1 - x0; the 1e-8 (torchcfm's) keeps t = 0 finite,
      // where x_t - mu_t = 0.
      p.ut = (1 - 2 * t) / (2 * t * (1 - t) + 1e-8) * (p.xt - mu) + x1 - x0;
      break;
    }
    case CfmMethod::kFM: {
      const double a = 1 - sigma;
      p.xt = t * x1 + (1 - a * t) * x0;
      p.ut = (x1 - a * p.xt) / (1 - a * t);
      break;
    }
    case CfmMethod::kVPCFM: {
      const auto c = torch::cos(0.5 * M_PI * t), s = torch::sin(0.5 * M_PI * t);
      p.xt = c * x0 + s * x1;
      if (sigma != 0) p.xt = p.xt + sigma * eps;
      p.ut = 0.5 * M_PI * (c * x1 - s * x0);
      break;
    }
  }
  return p;
}

Coupling couple(const CfmOptions& o, const torch::Tensor& x0, const torch::Tensor& x1,
                const torch::Tensor& context) {
  Coupling c{x0, x1, context, {}};
  const int64_t B = x0.size(0);
  auto take = [&](const torch::Tensor& i, const torch::Tensor& j) {
    const auto dev = x0.device();
    c.x0 = x0.index_select(0, i.to(dev));
    c.x1 = x1.index_select(0, j.to(dev));
    if (context.defined()) c.context = context.index_select(0, j.to(dev));
  };
  switch (o.method()) {
    case CfmMethod::kOTCFM: {
      const auto cost = squared_distances(x0, x1);
      if (B <= o.exact_ot_max() && x0.size(0) == x1.size(0)) {
        const auto perm = linear_assignment(cost);
        const auto i = torch::randint(B, {B}, torch::kInt64);  // with replacement, as torchcfm
        take(i, perm.index_select(0, i));
      } else {
        const double reg = o.ot_reg() * cost.mean().item<double>();
        const auto plan = sinkhorn_log(cost, reg, o.sinkhorn_iters(), 1e-6).plan;
        auto [i, j] = sample_plan(plan, B);
        take(i, j);
      }
      break;
    }
    case CfmMethod::kSBCFM: {
      const auto cost = squared_distances(x0, x1);
      const auto plan = sinkhorn_log(cost, 2 * o.sigma() * o.sigma(), o.sinkhorn_iters(), 1e-6).plan;
      auto [i, j] = sample_plan(plan, B);
      take(i, j);
      break;
    }
    case CfmMethod::kWCFM: {
      const auto cost = (x0 - x1).pow(2).sum(1);
      c.weight = torch::softmax(-cost / o.wcfm_eps(), 0) * static_cast<double>(B);
      break;
    }
    default:
      break;
  }
  return c;
}

torch::Tensor sample_times(const CfmOptions& o, int64_t n, const torch::TensorOptions& opts) {
  auto u = torch::rand({n}, opts);
  if (o.time() == "uniform") return u;
  // U-shaped: the mixture of a e^{a t}/(e^a - 1) and its mirror image, i.e. p ∝ cosh(a(t - 1/2)).
  const double a = o.ushape_a();
  auto t = torch::log1p(u * std::expm1(a)) / a;
  const auto flip = torch::rand({n}, opts) < 0.5;
  return torch::where(flip, 1 - t, t);
}

void check_cfm_batch(const char* fn, const torch::Tensor& x0, const torch::Tensor& x1) {
  check_dim(fn, "x0", x0, 2);
  check_dim(fn, "x1", x1, 2);
  if (x0.size(1) != x1.size(1))
    usage_error(fn, "source and target have different dimensions (" + std::to_string(x0.size(1)) +
                        " and " + std::to_string(x1.size(1)) + ")");
  if (x0.size(0) != x1.size(0)) usage_error(fn, "x0 and x1 need the same number of rows");
}

torch::Tensor cfm_per_row_loss(const CfmOptions& o, const torch::Tensor& err) {
  if (o.loss() == "mse") return err.pow(2).mean(1);
  const double cc = 0.00054 * std::sqrt(static_cast<double>(err.size(1)));
  return torch::sqrt(err.pow(2).sum(1) + cc * cc) - cc;
}

torch::Tensor cfm_loss(VelocityField& v, const CfmOptions& o, const torch::Tensor& x0,
                       const torch::Tensor& x1, const torch::Tensor& context) {
  if (o.method() == CfmMethod::kFlowMap) {
    auto* fm = dynamic_cast<FlowMapMLP*>(&v);
    if (fm == nullptr) usage_error("cfm_loss", "flowmap needs a FlowMapMLP field (a two-time flow map)");
    return flow_map_loss(*fm, o, x0, x1, context);
  }
  check_cfm_batch("cfm_loss", x0, x1);
  const auto c = couple(o, x0, x1, context);
  const int64_t B = c.x0.size(0);
  const auto t = sample_times(o, B, c.x0.options());
  const auto eps = torch::randn_like(c.x0);
  const auto p = conditional_path(o.method(), o.sigma(), c.x0, c.x1, t, eps);
  auto per = cfm_per_row_loss(o, v.forward(t, p.xt, c.context) - p.ut);
  if (c.weight.defined()) per = per * c.weight;
  return per.mean();
}

double straightness(ContinuousFlow& cnf, const torch::Tensor& x0, int64_t steps,
                    const torch::Tensor& context) {
  check_positive_int("straightness", "steps", steps);
  torch::NoGradGuard ng;
  auto x = x0.to(cnf.tensor_options());
  const auto ctx = context.defined() ? context.to(cnf.tensor_options()) : context;
  const double h = 1.0 / static_cast<double>(steps);
  std::vector<torch::Tensor> vs;
  const auto start = x;
  for (int64_t k = 0; k < steps; ++k) {
    const auto v = cnf.velocity()->forward(torch::full({}, k * h, x.options()), x, ctx);
    vs.push_back(v);
    x = x + h * v;
  }
  const auto disp = x - start;
  auto acc = torch::zeros({x.size(0)}, x.options());
  for (const auto& v : vs) acc = acc + h * (disp - v).pow(2).sum(1);
  return acc.mean().item<double>();
}

}  // namespace nfkit
