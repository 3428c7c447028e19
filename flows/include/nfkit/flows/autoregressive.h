#pragma once
// Masked autoregressive transforms: z_i = f(x_i; theta_i(x_1..x_{i-1}, context)) with theta
// from one MADE pass (Germain et al. 2015), so the density direction (forward, data to
// latent) takes one pass and the sampling direction (inverse) takes `dim` sequential passes,
// exact after the last (no tolerance involved).
//
//   * MaskedAffineAutoregressive -- MAF (Papamakarios, Pavlakou & Murray, NeurIPS 2017,
//       arXiv 1705.07057): z_i = x_i * exp(s_i) + t_i. Wrap in InverseTransform for IAF
//       (Kingma et al. 2016): single-pass sampling, iterative density.
//   * SplineAutoregressive -- autoregressive rational-quadratic spline flow (Durkan et al.
//       2019), interval with identity tails or circular (Rezende et al. 2020).
//
//   auto maf = std::make_shared<nfkit::MaskedAffineAutoregressive>(
//       nfkit::AutoregressiveOptions(8).hidden(128));
#include <torch/arg.h>

#include "nfkit/flows/elementwise.h"
#include "nfkit/flows/nets.h"
#include "nfkit/flows/transform.h"

namespace nfkit {

struct AutoregressiveOptions {
  explicit AutoregressiveOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, hidden) = 64;
  TORCH_ARG(int64_t, hidden_layers) = 2;
  TORCH_ARG(int64_t, context_dim) = 0;
  TORCH_ARG(double, scale_clamp) = 3.0;  ///< affine only (see AffineMap)
  TORCH_ARG(int64_t, bins) = 8;          ///< spline only
  TORCH_ARG(double, bound) = 4.0;        ///< spline only
  TORCH_ARG(bool, circular) = false;     ///< spline only
  /// Spline only: all-zero conditioner outputs give the identity (see SplineMap).
  TORCH_ARG(bool, identity_at_zero) = false;

 public:
  json to_json() const;
  static AutoregressiveOptions from_json(const json& j);
};

class AutoregressiveTransform : public Transform {
 public:
  /// type: the name config() reports and make_transform() dispatches on.
  AutoregressiveTransform(const AutoregressiveOptions& opts, std::unique_ptr<ElementwiseMap> map,
      std::string type);
  const AutoregressiveOptions& options() const { return opts_; }
  json config() const override;
  bool inverse_is_single_pass() const override { return dim() == 1; }

 protected:
  ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  ValueAndLogDet inverse_impl(const torch::Tensor& z, const torch::Tensor& context) override;

 private:
  torch::Tensor params(const torch::Tensor& x, const torch::Tensor& context);
  AutoregressiveOptions opts_;
  std::unique_ptr<ElementwiseMap> map_;
  std::string type_;
  MADE made_{nullptr};
};

class MaskedAffineAutoregressive : public AutoregressiveTransform {
 public:
  explicit MaskedAffineAutoregressive(const AutoregressiveOptions& opts);
};

class SplineAutoregressive : public AutoregressiveTransform {
 public:
  explicit SplineAutoregressive(const AutoregressiveOptions& opts);
};

}  // namespace nfkit
