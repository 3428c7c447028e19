#pragma once
// Elementwise affine bijections z = (x - shift) * exp(-log_scale), log|det| = -sum log_scale.
//
//   * ActNorm -- Glow's activation normalisation (Kingma & Dhariwal 2018): learnable, and
//       initialised from the first batch it sees in training mode so that z has zero mean
//       and unit variance per coordinate (data-dependent initialisation). Buffer
//       "initialized" records that this happened, so a reloaded model does not redo it.
//   * ElementwiseAffine -- fixed (buffers) or learnable (parameters) shift and log-scale;
//       ElementwiseAffine::standardize(x) builds the fixed z-scoring of a data set, the usual
//       first layer of a flow trained on raw data.
//
//   auto norm = nfkit::ElementwiseAffine::standardize(train_x);  // fixed, from data
#include "nfkit/flows/transform.h"

namespace nfkit {

class ActNorm : public Transform {
 public:
  explicit ActNorm(int64_t dim);
  json config() const override;
  bool initialized() const;

 protected:
  ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  ValueAndLogDet inverse_impl(const torch::Tensor& z, const torch::Tensor& context) override;

 private:
  torch::Tensor shift_, log_scale_, initialized_;
};

class ElementwiseAffine : public Transform {
 public:
  /// shift and log_scale of shape [dim]; learnable: parameters, else buffers.
  ElementwiseAffine(const torch::Tensor& shift, const torch::Tensor& log_scale, bool learnable);
  /// Fixed z-scoring with the mean and standard deviation of x [N, D] (std floored at 1e-12).
  static std::shared_ptr<ElementwiseAffine> standardize(const torch::Tensor& x);
  json config() const override;

 protected:
  ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  ValueAndLogDet inverse_impl(const torch::Tensor& z, const torch::Tensor& context) override;

 private:
  bool learnable_;
  torch::Tensor shift_, log_scale_;
};

}  // namespace nfkit
