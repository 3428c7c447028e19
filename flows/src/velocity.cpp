#include "nfkit/flows/velocity.h"

#include <torch/torch.h>

#include <cmath>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/flows/flow_map.h"
#include "nfkit/flows/unet.h"
#include "velocity_mlp_parts.h"

namespace nfkit {

torch::Tensor VelocityField::forward(const torch::Tensor& t, const torch::Tensor& x,
                                     const torch::Tensor& context) {
  const char* fn = "VelocityField";
  check_dim(fn, "x", x, 2);
  check_size(fn, "x", x, 1, dim_);
  check_context(fn, context, context_dim_, x.size(0));
  const torch::Tensor tb = t.to(x.options());
  if (tb.dim() != 0) {
    check_dim(fn, "t", tb, 1);
    check_size(fn, "t", tb, 0, x.size(0));
  }
  return velocity(tb, x, context);
}

nlohmann::json VelocityMLPOptions::to_json() const {
  return {{"dim", dim_}, {"context_dim", context_dim_}, {"hidden", hidden_},
          {"hidden_layers", hidden_layers_}, {"activation", activation_},
          {"time_embedding", time_embedding_}, {"time_features", time_features_}};
}

void VelocityMLPOptions::validate() const {
  check_positive_int("VelocityMLP", "dim", dim_);
  if (context_dim_ < 0) usage_error("VelocityMLP", "context_dim must be >= 0");
  check_positive_int("--hidden", "value", hidden_);
  check_positive_int("--hidden-layers", "value", hidden_layers_);
  if (activation_ != "selu" && activation_ != "silu")
    usage_error("--activation", "'" + activation_ + "' is not an activation, expected selu or silu");
  if (time_embedding_ != "concat" && time_embedding_ != "sinusoidal")
    usage_error("--time-embedding", "'" + time_embedding_ + "' is not a time embedding, expected concat or sinusoidal");
  if (time_embedding_ == "sinusoidal" && (time_features_ < 2 || time_features_ % 2 != 0))
    usage_error("--time-features", "must be an even number >= 2");
}

namespace detail {

int64_t register_time_embedding(torch::nn::Module& m, const VelocityMLPOptions& o, torch::Tensor* freqs) {
  if (o.time_embedding() != "sinusoidal") return 1;
  const int64_t half = o.time_features() / 2;
  *freqs = m.register_buffer("freqs", torch::exp(-std::log(10000.0) * torch::arange(half, torch::kFloat32) / half));
  return o.time_features();
}

std::vector<torch::nn::Linear> register_mlp_layers(torch::nn::Module& m, int64_t in, const VelocityMLPOptions& o) {
  std::vector<torch::nn::Linear> layers;
  for (int64_t l = 0; l <= o.hidden_layers(); ++l) {
    const int64_t out = l == o.hidden_layers() ? o.dim() : o.hidden();
    layers.push_back(m.register_module("layer" + std::to_string(l), torch::nn::Linear(in, out)));
    in = out;
  }
  return layers;
}

}  // namespace detail

VelocityMLP::VelocityMLP(VelocityMLPOptions opts)
    : VelocityField(opts.dim(), opts.context_dim()), opts_(std::move(opts)) {
  opts_.validate();
  selu_ = opts_.activation() == "selu";
  const int64_t tf = detail::register_time_embedding(*this, opts_, &freqs_);
  layers_ = detail::register_mlp_layers(*this, opts_.dim() + tf + opts_.context_dim(), opts_);
}

nlohmann::json VelocityMLP::config() const {
  auto j = opts_.to_json();
  j["type"] = "velocity_mlp";
  return j;
}

torch::Tensor VelocityMLP::velocity(const torch::Tensor& t, const torch::Tensor& x,
                                    const torch::Tensor& context) {
  // The first layer acts on [x, time features, context] through column blocks of its weight,
  // without concatenating: with one time for the whole batch (an ODE solve), the time term is
  // a vector folded into the bias, and the layer is one addmm.
  const int64_t D = opts_.dim(), C = opts_.context_dim();
  const auto& first = layers_[0];
  const int64_t tf = first->weight.size(1) - D - C;
  const auto w = first->weight;
  torch::Tensor tfeat;  // [tf] or [B, tf]
  if (freqs_.defined()) {
    const auto arg = (1000.0 * t).unsqueeze(-1) * freqs_.to(x.dtype());
    tfeat = torch::cat({torch::sin(arg), torch::cos(arg)}, -1);
  } else {
    tfeat = t.unsqueeze(-1);
  }
  const auto wt = w.narrow(1, D, tf);
  torch::Tensor h;
  if (tfeat.dim() == 1) {
    h = torch::addmm(torch::addmv(first->bias, wt, tfeat), x, w.narrow(1, 0, D).t());
  } else {
    h = torch::addmm(first->bias, x, w.narrow(1, 0, D).t()).addmm_(tfeat, wt.t());
  }
  if (C > 0) h = h.addmm(context.to(x.dtype()), w.narrow(1, D + tf, C).t());
  h = selu_ ? torch::selu_(h) : torch::silu_(h);
  for (size_t l = 1; l < layers_.size(); ++l) {
    h = layers_[l]->forward(h);
    if (l + 1 < layers_.size()) h = selu_ ? torch::selu_(h) : torch::silu_(h);  // in place: no extra buffer
  }
  return h;
}

VelocityFieldPtr make_velocity_field(const nlohmann::json& c) {
  const std::string type = c.at("type").get<std::string>();
  if (type == "velocity_mlp" || type == "flow_map_mlp") {
    VelocityMLPOptions o(c.at("dim").get<int64_t>());
    o.context_dim(c.at("context_dim").get<int64_t>())
        .hidden(c.at("hidden").get<int64_t>())
        .hidden_layers(c.at("hidden_layers").get<int64_t>())
        .activation(c.at("activation").get<std::string>())
        .time_embedding(c.at("time_embedding").get<std::string>())
        .time_features(c.at("time_features").get<int64_t>());
    if (type == "flow_map_mlp") return std::make_shared<FlowMapMLP>(o);
    return std::make_shared<VelocityMLP>(o);
  }
  if (type == "unet_velocity") return std::make_shared<UNetVelocity>(UNetVelocityOptions::from_json(c));
  runtime_error("make_velocity_field", "unknown velocity field type '" + type + "'");
}

}  // namespace nfkit
