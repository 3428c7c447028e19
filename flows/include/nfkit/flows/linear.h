#pragma once
// Linear bijections.
//
//   * Permutation -- z = x[:, perm]; log|det| = 0. Reverse or random (seeded) order.
//   * LULinear    -- z = W x + b with W = P L U (Kingma & Dhariwal, Glow, NeurIPS 2018,
//       arXiv 1807.03039; Durkan et al. 2019): P a fixed random permutation, L unit lower
//       triangular, U upper triangular with positive diagonal softplus(u) + 1e-3;
//       log|det| = sum log diag(U). Initialised to the identity (apart from P). The inverse
//       is two triangular solves.
//
//   auto p = nfkit::Permutation::reverse(8);
//   auto lu = std::make_shared<nfkit::LULinear>(nfkit::LULinearOptions(8).seed(3));
#include <torch/arg.h>

#include "nfkit/flows/transform.h"

namespace nfkit {

class Permutation : public Transform {
 public:
  /// perm must be a permutation of 0..dim-1.
  explicit Permutation(std::vector<int64_t> perm);
  static std::shared_ptr<Permutation> reverse(int64_t dim);
  static std::shared_ptr<Permutation> random(int64_t dim, uint64_t seed);
  json config() const override;
  const std::vector<int64_t>& permutation() const { return perm_; }

 protected:
  ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  ValueAndLogDet inverse_impl(const torch::Tensor& z, const torch::Tensor& context) override;

 private:
  std::vector<int64_t> perm_;
  torch::Tensor fwd_, inv_;  // int64 indices, moved with the input
};

struct LULinearOptions {
  explicit LULinearOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
  /// Seed of the fixed permutation P (0: identity P).
  TORCH_ARG(uint64_t, seed) = 0;
};

class LULinear : public Transform {
 public:
  explicit LULinear(const LULinearOptions& opts);
  json config() const override;
  /// The dense matrix W = P L U.
  torch::Tensor weight() const;

 protected:
  ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  ValueAndLogDet inverse_impl(const torch::Tensor& z, const torch::Tensor& context) override;

 private:
  std::tuple<torch::Tensor, torch::Tensor> factors() const;  // L, U
  LULinearOptions opts_;
  torch::Tensor lower_, upper_, unconstrained_diag_, bias_;  // parameters
  torch::Tensor perm_matrix_;                                // buffer (float)
};

}  // namespace nfkit
