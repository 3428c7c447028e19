#pragma once
// Coupling layers: half of the coordinates pass through unchanged and parameterise an
// elementwise bijection of the other half, so both directions take one network pass and
// the Jacobian is triangular.
//
//   * AffineCoupling -- RealNVP (Dinh, Sohl-Dickstein & Bengio, ICLR 2017, arXiv 1605.08803):
//       z_b = x_b * exp(s(x_a)) + t(x_a), log|det| = sum s.
//   * SplineCoupling -- Neural Spline Flows (Durkan et al., NeurIPS 2019, arXiv 1906.04032),
//       rational-quadratic splines on [-bound, bound] with identity tails; with circular(true)
//       the circular splines of Rezende et al. (ICML 2020, arXiv 2002.02428) for angles in
//       [-bound, bound) (bound = pi for radians), the conditioner then seeing cos and sin.
//
// Coordinates i with i % 2 == parity are transformed; the others condition. Alternate the
// parity between layers. Or name the transformed coordinates with mask(...), and the
// conditioning coordinates that are angles in radians with circular_dims(...), which the
// conditioner then sees as cos and sin (mixed spaces such as internal coordinates, where
// torsions are circular and bonds and angles are not). The conditioner is an MLP on [x_a, context] whose last layer is
// zero-initialised, so a new layer is the identity.
//
//   auto t = std::make_shared<nfkit::SplineCoupling>(
//       nfkit::CouplingOptions(2).bins(8).bound(4.0).parity(1));
#include <torch/arg.h>

#include <vector>

#include "nfkit/flows/elementwise.h"
#include "nfkit/flows/nets.h"
#include "nfkit/flows/transform.h"

namespace nfkit {

struct CouplingOptions {
  explicit CouplingOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
  /// Which coordinates are transformed: those with index % 2 == parity.
  TORCH_ARG(int64_t, parity) = 0;
  TORCH_ARG(int64_t, hidden) = 64;
  TORCH_ARG(int64_t, hidden_layers) = 2;
  TORCH_ARG(int64_t, context_dim) = 0;
  /// Affine only: soft clamp c of the log-scale, s = c tanh(s_raw / c) (0 = none).
  TORCH_ARG(double, scale_clamp) = 3.0;
  /// Spline only: number of bins K and half-width of the spline interval.
  TORCH_ARG(int64_t, bins) = 8;
  TORCH_ARG(double, bound) = 4.0;
  /// Spline only: circular spline on [-bound, bound).
  TORCH_ARG(bool, circular) = false;
  /// Spline only: all-zero conditioner outputs give the identity (see SplineMap). Off when a
  /// configuration lacks it (files written before it existed).
  TORCH_ARG(bool, identity_at_zero) = false;
  /// The transformed coordinates (empty: those with index % 2 == parity).
  TORCH_ARG(std::vector<int64_t>, mask) = {};
  /// Conditioning coordinates that are angles in radians, fed to the network as cos and sin
  /// (empty: all of them when the map is circular, none otherwise).
  TORCH_ARG(std::vector<int64_t>, circular_dims) = {};

 public:
  json to_json() const;
  static CouplingOptions from_json(const json& j);
};

class CouplingTransform : public Transform {
 public:
  /// type: the name config() reports and make_transform() dispatches on.
  CouplingTransform(const CouplingOptions& opts, std::unique_ptr<ElementwiseMap> map,
      std::string type);
  const CouplingOptions& options() const { return opts_; }
  json config() const override;

 protected:
  ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  ValueAndLogDet inverse_impl(const torch::Tensor& z, const torch::Tensor& context) override;

 private:
  ValueAndLogDet apply(const torch::Tensor& x, const torch::Tensor& context, bool inverse);
  CouplingOptions opts_;
  std::unique_ptr<ElementwiseMap> map_;
  std::string type_;
  torch::Tensor identity_idx_, transform_idx_;  // int64 indices, moved with the input
  torch::Tensor plain_feat_, circ_feat_;         // positions within the identity part
  MLP net_{nullptr};
};

class AffineCoupling : public CouplingTransform {
 public:
  explicit AffineCoupling(const CouplingOptions& opts);
};

class SplineCoupling : public CouplingTransform {
 public:
  explicit SplineCoupling(const CouplingOptions& opts);
};

}  // namespace nfkit
