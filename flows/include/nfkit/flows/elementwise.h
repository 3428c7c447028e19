#pragma once
// Elementwise bijections with per-element parameters, the inner maps of coupling and
// autoregressive layers. Given x [B, n] and unconstrained parameters [B, n, P] they return
// {y, log|dy/dx|} elementwise ([B, n]); inverse=true inverts (log|dx/dy|).
//
//   * AffineMap: y = x * exp(s) + t with the log-scale softly clamped, s = c * tanh(s_raw / c)
//     (RealNVP, Dinh et al. 2017; MAF, Papamakarios et al. 2017). P = 2.
//   * SplineMap: rational-quadratic spline with identity tails or circular (rq_spline.h).
//     P = 3K - 1 (interval) or 3K (circular). With identity_at_zero the derivative
//     parameters are shifted by log(e^{1 - min_derivative} - 1), so that all-zero parameters
//     (equal bins, unit knot derivatives) give the identity map, as zero-initialised
//     conditioners intend; without it (checkpoints written before it existed) they give
//     derivatives softplus(0) + min_derivative = 0.69 at the interior knots, a wavy start.
#include <memory>
#include <nlohmann/json.hpp>

#include "nfkit/flows/rq_spline.h"
#include "nfkit/flows/transform.h"

namespace nfkit {

class ElementwiseMap {
 public:
  virtual ~ElementwiseMap() = default;
  virtual int64_t params() const = 0;
  virtual ValueAndLogDet apply(const torch::Tensor& x, const torch::Tensor& params,
                               bool inverse) const = 0;
  /// Whether inputs are angles on [-bound, bound) (feature-embedded as cos/sin).
  virtual bool circular() const { return false; }
  virtual double period_half() const { return 0.0; }
};

class AffineMap : public ElementwiseMap {
 public:
  explicit AffineMap(double scale_clamp) : clamp_(scale_clamp) {}
  int64_t params() const override { return 2; }
  ValueAndLogDet apply(const torch::Tensor& x, const torch::Tensor& params,
                       bool inverse) const override;

 private:
  double clamp_;
};

class SplineMap : public ElementwiseMap {
 public:
  SplineMap(int64_t bins, double bound, bool circular, bool identity_at_zero = false);
  int64_t params() const override { return 2 * bins_ + spline_derivative_count(bins_, circular_); }
  ValueAndLogDet apply(const torch::Tensor& x, const torch::Tensor& params,
                       bool inverse) const override;
  bool circular() const override { return circular_; }
  double period_half() const override { return bound_; }

 private:
  int64_t bins_;
  double bound_;
  bool circular_;
  bool identity_at_zero_;
};

/// Conditioner features of x: x itself, or [cos(pi x / b), sin(pi x / b)] for angles on
/// [-b, b) so that the network sees a periodic input.
torch::Tensor conditioner_features(const torch::Tensor& x, const ElementwiseMap& map);

}  // namespace nfkit
