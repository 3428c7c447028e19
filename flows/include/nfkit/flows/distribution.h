#pragma once
// Densities you can sample: base distributions and flows.
//
// Distribution::log_prob(x, context) -> [B]; sample(n, context) -> [n, dim];
// sample_and_log_prob(n, context) -> {x [n, dim], log q(x) [n]} in one pass (what reverse-KL
// training and importance weights need). A conditional distribution (context_dim > 0) takes
// a context [n, context_dim] and draws one sample per context row; an unconditional one
// rejects a context.
//
// Temperature (one convention for every base): a base at temperature T in (0, 1] has the
// normalised density q_T(z) = q(z)^(1/T) / Z_T. For a normal N(mu, sigma^2) this is
// N(mu, T sigma^2), so at the mode log q_T = -dim/2 log(2 pi T) - sum log sigma; a uniform
// is unchanged. A Flow's temperature is its base's: its samples concentrate towards the
// image of the base mode, and log_prob is the exact density of the tempered flow (as the
// learned harmonic mean estimator needs, McEwen et al. 2021, arXiv 2111.12720).
//
//   auto flow = std::make_shared<nfkit::Flow>(std::make_shared<nfkit::StandardNormal>(2), t);
//   auto [x, log_q] = flow->sample_and_log_prob(1000);
#include <torch/nn/module.h>

#include <nlohmann/json.hpp>

#include "nfkit/flows/transform.h"

namespace nfkit {

class Distribution : public torch::nn::Module {
 public:
  Distribution(int64_t dim, int64_t context_dim);

  torch::Tensor log_prob(const torch::Tensor& x, const torch::Tensor& context = {});
  torch::Tensor sample(int64_t n, const torch::Tensor& context = {});
  std::tuple<torch::Tensor, torch::Tensor> sample_and_log_prob(int64_t n,
                                                               const torch::Tensor& context = {});

  int64_t dim() const { return dim_; }
  int64_t context_dim() const { return context_dim_; }
  virtual double temperature() const = 0;
  /// T in (0, 1]; see the convention above.
  virtual void set_temperature(double T) = 0;
  virtual json config() const = 0;
  /// dtype and device of the distribution's tensors (for sampling).
  virtual torch::TensorOptions tensor_options() const = 0;

 protected:
  virtual torch::Tensor log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) = 0;
  virtual std::tuple<torch::Tensor, torch::Tensor> sample_impl(int64_t n,
                                                               const torch::Tensor& context) = 0;
  /// Samples without their log-density; override where that is cheaper (continuous flows
  /// skip the divergence integral). Default: the first half of sample_impl.
  virtual torch::Tensor sample_only_impl(int64_t n, const torch::Tensor& context) {
    return std::get<0>(sample_impl(n, context));
  }

 private:
  int64_t dim_, context_dim_;
};

using DistributionPtr = std::shared_ptr<Distribution>;

/// Normal with diagonal covariance: N(loc, diag(exp(log_scale))^2). Fixed (StandardNormal:
/// loc 0 and log-scale 0, kept as buffers for dtype and device only) or learnable loc and
/// log-scale (DiagonalNormal).
class Normal : public Distribution {
 public:
  Normal(int64_t dim, bool learnable);
  double temperature() const override { return temperature_; }
  void set_temperature(double T) override;
  json config() const override;
  torch::TensorOptions tensor_options() const override { return loc_.options(); }

 protected:
  torch::Tensor log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  std::tuple<torch::Tensor, torch::Tensor> sample_impl(int64_t n, const torch::Tensor& context) override;

 private:
  bool learnable_;
  double temperature_ = 1.0;
  torch::Tensor loc_, log_scale_;
};

class StandardNormal : public Normal {
 public:
  explicit StandardNormal(int64_t dim) : Normal(dim, false) {}
};

class DiagonalNormal : public Normal {
 public:
  explicit DiagonalNormal(int64_t dim) : Normal(dim, true) {}
};

/// Uniform on the box [low, high] (per coordinate); outside, log_prob = -inf. TorusUniform is
/// the box [-pi, pi)^dim of angles. Temperature leaves a uniform unchanged.
class BoxUniform : public Distribution {
 public:
  BoxUniform(const torch::Tensor& low, const torch::Tensor& high);
  double temperature() const override { return temperature_; }
  void set_temperature(double T) override;
  json config() const override;
  torch::TensorOptions tensor_options() const override { return low_.options(); }

 protected:
  torch::Tensor log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  std::tuple<torch::Tensor, torch::Tensor> sample_impl(int64_t n, const torch::Tensor& context) override;

 private:
  double temperature_ = 1.0;
  torch::Tensor low_, high_;
};

std::shared_ptr<BoxUniform> torus_uniform(int64_t dim);

/// Product of a standard normal over most coordinates and the uniform on [-pi, pi) over the
/// circular ones (angles in radians): the base of flows on mixed spaces such as internal
/// coordinates (bonds and angles normal, torsions uniform). Temperature T scales the normal
/// part's variance by T and leaves the uniform part unchanged (q_T ∝ q^(1/T)).
class NormalTorus : public Distribution {
 public:
  NormalTorus(int64_t dim, const std::vector<int64_t>& circular_dims);
  double temperature() const override { return temperature_; }
  void set_temperature(double T) override;
  json config() const override;
  torch::TensorOptions tensor_options() const override { return circular_.options(); }
  const std::vector<int64_t>& circular_dims() const { return dims_; }

 protected:
  torch::Tensor log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  std::tuple<torch::Tensor, torch::Tensor> sample_impl(int64_t n, const torch::Tensor& context) override;

 private:
  double temperature_ = 1.0;
  std::vector<int64_t> dims_;
  torch::Tensor circular_;  // [dim], 1 for circular coordinates (float buffer)
};

/// Flow = base distribution + transform (data -> latent):
///   log q(x) = log p_base(z) + log|det dz/dx|,   z = transform.forward(x).
/// Sampling draws z from the base and returns x = transform.inverse(z).
class Flow : public Distribution {
 public:
  Flow(DistributionPtr base, TransformPtr transform);
  double temperature() const override { return base_->temperature(); }
  void set_temperature(double T) override { base_->set_temperature(T); }
  json config() const override;
  torch::TensorOptions tensor_options() const override { return base_->tensor_options(); }
  const DistributionPtr& base() const { return base_; }
  const TransformPtr& transform() const { return transform_; }

 protected:
  torch::Tensor log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  std::tuple<torch::Tensor, torch::Tensor> sample_impl(int64_t n, const torch::Tensor& context) override;

 private:
  DistributionPtr base_;
  TransformPtr transform_;
};

using FlowPtr = std::shared_ptr<Flow>;

}  // namespace nfkit
