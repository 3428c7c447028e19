#pragma once
// W-Flow: one-step generation by compressing the Wasserstein gradient flow of the debiased
// Sinkhorn divergence into a static generator (Han, Li, Guo, Xu, Ermon & Candes, "One-step
// generative modeling via Wasserstein gradient flows", arXiv:2605.11755, 2026).
//
// The energy is S_eps(q, p) = OT_eps(q, p) - OT_eps(q, q)/2 - OT_eps(p, p)/2 between the model
// q and the data p (optimal_transport.h: cost |x - y|^2 / 2, KL penalty). Its Wasserstein
// gradient flow moves a particle x of q with the velocity
//   V(x) = -grad (f_qp - f_qq)(x) = T_qp(x) - T_qq(x),
// f the Sinkhorn potentials and T the barycentric projections of the entropic plans: an
// attraction to the data minus a repulsion from the model's own samples (which keeps modes
// apart and covered). The self term uses a second, independent batch x' = G(z') of the same
// generator (the paper's two-batch estimator; with x itself each point would be partly
// transported onto itself and the repulsion would vanish as eps -> 0).
//
// Training: for z ~ N(0, I), x = G(z), the target is sg[x + eta V(x)] and the loss
// |G(z) - target|^2 averaged over rows and coordinates, so each step moves the generator's
// particles along eta V; its gradient is -(2 eta / (B D)) sum_i V_i . dG(z_i)/dtheta, gradient
// descent on S_eps through the generator for small eta.
//
// OneStepGenerator is G(z) = z + g(z) with g an MLP, a Distribution that samples in one network
// evaluation. It has no density (G need not be invertible): log_prob is a RuntimeError.
//
//   auto G = std::make_shared<nfkit::OneStepGenerator>(std::make_shared<nfkit::StandardNormal>(2),
//                                                      nfkit::OneStepGeneratorOptions(2));
//   auto loss = nfkit::wflow_loss(*G, nfkit::WFlowOptions().eps(0.1), data_batch);
#include <torch/arg.h>
#include <torch/nn/modules/linear.h>

#include <vector>

#include "nfkit/flows/distribution.h"

namespace nfkit {

struct OneStepGeneratorOptions {
  explicit OneStepGeneratorOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, hidden) = 64;
  TORCH_ARG(int64_t, hidden_layers) = 3;
  /// "selu" or "silu".
  TORCH_ARG(std::string, activation) = "selu";

 public:
  json to_json() const;
  /// UsageError naming the option (--hidden, --hidden-layers, --activation).
  void validate() const;
};

class OneStepGenerator : public Distribution {
 public:
  OneStepGenerator(DistributionPtr base, OneStepGeneratorOptions opts);
  double temperature() const override { return base_->temperature(); }
  void set_temperature(double T) override { base_->set_temperature(T); }
  json config() const override;
  torch::TensorOptions tensor_options() const override { return base_->tensor_options(); }
  const DistributionPtr& base() const { return base_; }

  /// G(z) = z + g(z) for z [B, dim].
  torch::Tensor generate(const torch::Tensor& z);

 protected:
  torch::Tensor log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  std::tuple<torch::Tensor, torch::Tensor> sample_impl(int64_t n, const torch::Tensor& context) override;
  torch::Tensor sample_only_impl(int64_t n, const torch::Tensor& context) override;

 private:
  DistributionPtr base_;
  OneStepGeneratorOptions opts_;
  bool selu_;
  std::vector<torch::nn::Linear> layers_;
};

/// Rebuilds a generator from its config() (type "one_step_generator").
std::shared_ptr<OneStepGenerator> make_one_step_generator(const json& config);

struct WFlowOptions {
  /// Entropic regularisation of the Sinkhorn divergence (units of |x - y|^2 / 2). Must be > 0.
  TORCH_ARG(double, eps) = 0.1;
  /// eta: the particle step of the target sg[x + eta V(x)].
  TORCH_ARG(double, step) = 1.0;
  /// Sinkhorn sweeps per plan (epsilon scaling included) and marginal tolerance.
  TORCH_ARG(int64_t, sinkhorn_iters) = 500;
  TORCH_ARG(double, tol) = 1e-3;

 public:
  json to_json() const;
  static WFlowOptions from_json(const json& j);
  /// UsageError naming the option (--wflow-eps, --wflow-step, --sinkhorn-iters).
  void validate() const;
};

/// The W-Flow loss on a data minibatch y [B, dim]: two generator batches of B rows (z and z'
/// from the base, global generator), the two-batch Sinkhorn velocity, the regression above.
torch::Tensor wflow_loss(OneStepGenerator& G, const WFlowOptions& o, const torch::Tensor& y);

}  // namespace nfkit
