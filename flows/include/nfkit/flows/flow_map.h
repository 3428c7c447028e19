#pragma once
// Flow maps learned by Lagrangian self-distillation (Boffi, Albergo & Vanden-Eijnden, "How to
// build a consistency model: learning flow maps via self-distillation", arXiv:2505.18825, 2025;
// the flow-map framework of Boffi et al., arXiv:2406.07507, 2024).
//
// The flow map X_{s,t} of the probability-flow ODE dx/dt = b_t(x) sends x_s to x_t. It is
// parametrised as
//   X_{s,t}(x) = x + (t - s) v_{s,t}(x),
// so X_{s,s} = identity exactly, and the tangent condition lim_{s->t} d/dt X_{s,t} = b_t reads
// v_{t,t} = b_t: the diagonal of the two-time network is the velocity field itself. FlowMapMLP
// is therefore a VelocityField (velocity(t, x) = v_{t,t}(x)), and a ContinuousFlow built on it
// has the exact log-density of that field; sample_flow_map() instead jumps with the map,
// K steps X_{t_{k},t_{k+1}} on a uniform grid of [0, 1] (K evaluations, no ODE solve).
//
// Training (flow_map_loss), for pairs (x0, x1) and the linear interpolant
// I_t = (1 - t) x0 + t x1 (sigma = 0; Idot = x1 - x0):
//   diagonal (a fraction `diagonal_fraction` of the batch; t from the CFM time distribution)
//     | v_{t,t}(I_t) - Idot |^2                                     (flow matching on b)
//   Lagrangian self-distillation (the rest; (s, t) uniform on 0 <= s <= t <= 1)
//     | d/dt X_{s,t}(I_s) - sg[ v_{t,t}(X_{s,t}(I_s)) ] |^2          (Lagrangian equation)
// with the teacher v_{t,t} under stop-gradient, as in the paper. d/dt X_{s,t} = v_{s,t} +
// (t - s) d/dt v_{s,t} is computed by forward-mode differentiation written out through the
// MLP (tangents of each layer, differentiable, about one extra forward pass), not by D
// backward passes; map_and_time_derivative() returns both and is tested against autograd.
// The per-row error is the CFM loss's (mean square over coordinates, or pseudo-Huber).
//
//   auto fm = std::make_shared<nfkit::FlowMapMLP>(nfkit::VelocityMLPOptions(2));
//   auto loss = nfkit::flow_map_loss(*fm, cfm_options, x0, x1);
//   auto x = nfkit::sample_flow_map(*fm, torch::randn({1000, 2}), 2);   // two jumps
#include <torch/types.h>

#include <utility>
#include <vector>

#include "nfkit/flows/velocity.h"

namespace nfkit {

struct CfmOptions;

/// The two-time MLP v_{s,t}(x, context) on [x, time features of s, of t, context]
/// (VelocityMLPOptions: width, depth, activation, time embedding).
class FlowMapMLP : public VelocityField {
 public:
  explicit FlowMapMLP(VelocityMLPOptions opts);
  nlohmann::json config() const override;
  const VelocityMLPOptions& options() const { return opts_; }

  /// v_{s,t}(x); s and t are [B] or 0-d.
  torch::Tensor field(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& x,
                      const torch::Tensor& context = {});
  /// X_{s,t}(x) = x + (t - s) v_{s,t}(x).
  torch::Tensor map(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& x,
                    const torch::Tensor& context = {});
  /// {X_{s,t}(x), d/dt X_{s,t}(x)} by forward-mode tangents in t (differentiable in the
  /// parameters).
  std::pair<torch::Tensor, torch::Tensor> map_and_time_derivative(const torch::Tensor& s,
                                                                  const torch::Tensor& t,
                                                                  const torch::Tensor& x,
                                                                  const torch::Tensor& context = {});

 protected:
  /// The tangent condition: b_t = v_{t,t}.
  torch::Tensor velocity(const torch::Tensor& t, const torch::Tensor& x,
                         const torch::Tensor& context) override;

 private:
  // v and, if with_tangent, dv/dt; shapes checked by the public entry points.
  std::pair<torch::Tensor, torch::Tensor> run(const torch::Tensor& s, const torch::Tensor& t,
                                              const torch::Tensor& x, const torch::Tensor& context,
                                              bool with_tangent);
  void check(const char* fn, const torch::Tensor& s, const torch::Tensor& t,
             const torch::Tensor& x, const torch::Tensor& context) const;

  VelocityMLPOptions opts_;
  bool selu_;
  std::vector<torch::nn::Linear> layers_;
  torch::Tensor freqs_;  // buffer [F/2] (sinusoidal)
};

/// The diagonal + LSD loss above on one minibatch (times and the diagonal split from the global
/// generator). x0 from the source, x1 from the target, [B, D]; o.diagonal_fraction() of the rows
/// (rounded, at least one of each kind when B >= 2) are diagonal.
torch::Tensor flow_map_loss(FlowMapMLP& fm, const CfmOptions& o, const torch::Tensor& x0,
                            const torch::Tensor& x1, const torch::Tensor& context = {});

/// Uniform jump grid 0 = t_0 < ... < t_K = 1 of `steps` jumps.
std::vector<double> flow_map_grid(int64_t steps);

/// x0 [B, D] at t = 0 carried to t = 1 by `steps` jumps of the map (no gradient).
torch::Tensor sample_flow_map(FlowMapMLP& fm, const torch::Tensor& x0, int64_t steps,
                              const torch::Tensor& context = {});

}  // namespace nfkit
