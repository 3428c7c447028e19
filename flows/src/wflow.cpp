#include "nfkit/flows/wflow.h"

#include <torch/torch.h>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/optimal_transport.h"

namespace nfkit {

json OneStepGeneratorOptions::to_json() const {
  return {{"dim", dim_}, {"hidden", hidden_}, {"hidden_layers", hidden_layers_}, {"activation", activation_}};
}

void OneStepGeneratorOptions::validate() const {
  check_positive_int("OneStepGenerator", "dim", dim_);
  check_positive_int("--hidden", "value", hidden_);
  check_positive_int("--hidden-layers", "value", hidden_layers_);
  if (activation_ != "selu" && activation_ != "silu")
    usage_error("--activation", "'" + activation_ + "' is not an activation, expected selu or silu");
}

OneStepGenerator::OneStepGenerator(DistributionPtr base, OneStepGeneratorOptions opts)
    : Distribution(opts.dim(), 0), base_(std::move(base)), opts_(std::move(opts)) {
  opts_.validate();
  NFKIT_ASSERT(base_ != nullptr, "OneStepGenerator without a base");
  if (base_->dim() != opts_.dim())
    usage_error("OneStepGenerator", "base has dimension " + std::to_string(base_->dim()) + ", generator " +
                                        std::to_string(opts_.dim()));
  if (base_->context_dim() != 0) usage_error("OneStepGenerator", "needs an unconditional base");
  register_module("base", base_);
  selu_ = opts_.activation() == "selu";
  int64_t in = opts_.dim();
  for (int64_t l = 0; l <= opts_.hidden_layers(); ++l) {
    const int64_t out = l == opts_.hidden_layers() ? opts_.dim() : opts_.hidden();
    layers_.push_back(register_module("layer" + std::to_string(l), torch::nn::Linear(in, out)));
    in = out;
  }
}

json OneStepGenerator::config() const {
  auto j = opts_.to_json();
  j["type"] = "one_step_generator";
  j["base"] = base_->config();
  return j;
}

torch::Tensor OneStepGenerator::generate(const torch::Tensor& z) {
  check_dim("OneStepGenerator", "z", z, 2);
  check_size("OneStepGenerator", "z", z, 1, dim());
  auto h = z;
  for (size_t l = 0; l < layers_.size(); ++l) {
    h = layers_[l]->forward(h);
    if (l + 1 < layers_.size()) h = selu_ ? torch::selu(h) : torch::silu(h);
  }
  return z + h;
}

torch::Tensor OneStepGenerator::log_prob_impl(const torch::Tensor&, const torch::Tensor&) {
  runtime_error("OneStepGenerator", "a one-step generator (W-Flow) has no density: it samples, and is "
                                    "evaluated by distances to data (W2), not by log-likelihood");
}

std::tuple<torch::Tensor, torch::Tensor> OneStepGenerator::sample_impl(int64_t, const torch::Tensor&) {
  runtime_error("OneStepGenerator", "a one-step generator (W-Flow) has no density, so samples come "
                                    "without log q (use sample())");
}

torch::Tensor OneStepGenerator::sample_only_impl(int64_t n, const torch::Tensor&) {
  return generate(base_->sample(n));
}

std::shared_ptr<OneStepGenerator> make_one_step_generator(const json& c) {
  OneStepGeneratorOptions o(c.at("dim").get<int64_t>());
  o.hidden(c.at("hidden").get<int64_t>())
      .hidden_layers(c.at("hidden_layers").get<int64_t>())
      .activation(c.at("activation").get<std::string>());
  return std::make_shared<OneStepGenerator>(make_distribution(c.at("base")), o);
}

json WFlowOptions::to_json() const {
  return {{"eps", eps_}, {"step", step_}, {"sinkhorn_iters", sinkhorn_iters_}, {"tol", tol_}};
}

WFlowOptions WFlowOptions::from_json(const json& j) {
  return WFlowOptions()
      .eps(j.at("eps").get<double>())
      .step(j.at("step").get<double>())
      .sinkhorn_iters(j.at("sinkhorn_iters").get<int64_t>())
      .tol(j.at("tol").get<double>());
}

void WFlowOptions::validate() const {
  check_positive("--wflow-eps", "value", eps_);
  check_positive("--wflow-step", "value", step_);
  check_positive_int("--sinkhorn-iters", "value", sinkhorn_iters_);
  check_positive("WFlowOptions", "tol", tol_);
}

torch::Tensor wflow_loss(OneStepGenerator& G, const WFlowOptions& o, const torch::Tensor& y) {
  const char* fn = "wflow_loss";
  check_dim(fn, "y", y, 2);
  check_size(fn, "y", y, 1, G.dim());
  const int64_t B = y.size(0);
  const auto opts = G.tensor_options();
  torch::Tensor z, z2;
  {
    torch::NoGradGuard ng;
    z = G.base()->sample(B).to(opts);
    z2 = G.base()->sample(B).to(opts);
  }
  const auto x = G.generate(z);
  torch::Tensor target;
  {
    torch::NoGradGuard ng;
    const auto x2 = G.generate(z2);
    const auto v = sinkhorn_velocity(x.detach(), y.to(opts), x2, o.eps(), o.sinkhorn_iters(), o.tol());
    target = x.detach() + o.step() * v;
  }
  return (x - target).pow(2).mean();
}

}  // namespace nfkit
