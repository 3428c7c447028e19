#pragma once
// Velocity fields v(t, x, context) of continuous flows: the networks that flow matching trains
// and that an ODE solver integrates (flows/continuous_flow.h).
//
// Time runs from 0 (the source, e.g. the Normal base) to 1 (the data), the torchcfm
// convention. t is a tensor [B] (one time per row) or a 0-d tensor; x is [B, dim]; context
// [B, context_dim] when the field was built with context_dim > 0 and undefined otherwise.
// The result has x's shape.
//
// VelocityMLP is the field of the torchcfm 2-D experiments (Tong et al., TMLR 2024): an MLP
// on [x, time features, context] with `hidden_layers` hidden layers of `hidden` units
// (3 x 64 SELU by default). Time features: "concat" appends t itself; "sinusoidal" appends
// sin and cos of 1000 t w_k, w_k = 10000^(-k / (F/2)), k < F/2 (the transformer / DDPM
// embedding, Vaswani et al. 2017, Ho et al. 2020), F = time_features.
//
//   auto v = std::make_shared<nfkit::VelocityMLP>(nfkit::VelocityMLPOptions(2));
//   auto u = v->forward(torch::full({8}, 0.5), torch::randn({8, 2}), {});
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace nfkit {

class VelocityField : public torch::nn::Module {
 public:
  VelocityField(int64_t dim, int64_t context_dim) : dim_(dim), context_dim_(context_dim) {}
  /// v(t, x, context), shape of x. Checks shapes, then calls velocity().
  torch::Tensor forward(const torch::Tensor& t, const torch::Tensor& x,
                        const torch::Tensor& context = {});
  int64_t dim() const { return dim_; }
  int64_t context_dim() const { return context_dim_; }
  virtual nlohmann::json config() const = 0;

 protected:
  /// t is [B] (a time per row) or 0-d (one time for the whole batch, as in an ODE solve).
  virtual torch::Tensor velocity(const torch::Tensor& t, const torch::Tensor& x,
                                 const torch::Tensor& context) = 0;

 private:
  int64_t dim_, context_dim_;
};

using VelocityFieldPtr = std::shared_ptr<VelocityField>;

struct VelocityMLPOptions {
  explicit VelocityMLPOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, context_dim) = 0;
  TORCH_ARG(int64_t, hidden) = 64;
  TORCH_ARG(int64_t, hidden_layers) = 3;
  /// "selu" or "silu".
  TORCH_ARG(std::string, activation) = "selu";
  /// "concat" or "sinusoidal".
  TORCH_ARG(std::string, time_embedding) = "concat";
  /// Sinusoidal features (even, >= 2).
  TORCH_ARG(int64_t, time_features) = 16;

 public:
  nlohmann::json to_json() const;
  /// UsageError naming the option (--hidden, --activation, --time-embedding, ...).
  void validate() const;
};

class VelocityMLP : public VelocityField {
 public:
  explicit VelocityMLP(VelocityMLPOptions opts);
  nlohmann::json config() const override;
  const VelocityMLPOptions& options() const { return opts_; }

 protected:
  torch::Tensor velocity(const torch::Tensor& t, const torch::Tensor& x,
                         const torch::Tensor& context) override;

 private:
  VelocityMLPOptions opts_;
  bool selu_;
  std::vector<torch::nn::Linear> layers_;
  torch::Tensor freqs_;  // buffer [F/2] (sinusoidal)
};

/// Rebuilds a velocity field from its config() (RuntimeError on an unknown type).
VelocityFieldPtr make_velocity_field(const nlohmann::json& config);

}  // namespace nfkit
