#pragma once
// Monotonic rational-quadratic splines (Gregory & Delbourgo 1982), as used by Neural Spline
// Flows (Durkan et al., NeurIPS 2019, arXiv 1906.04032, eqs. 4-8 and appendix A), and their
// circular variant on a periodic interval (Rezende et al., ICML 2020, arXiv 2002.02428).
//
// The spline maps [-bound, bound] onto itself through K bins. Parameters per element are
// unconstrained: widths [.., K] and heights [.., K] (softmax-normalised, each bin at least
// min_bin of the interval) and derivatives (softplus + min_derivative at the knots):
//   * interval mode (circular == false): K - 1 interior derivatives; the boundary
//     derivatives are 1, so the spline joins identity ("linear") tails outside the interval;
//   * circular mode: K derivatives; the one at -bound is reused at +bound, so the map is a
//     smooth diffeomorphism of the circle that fixes the point +-bound. Inputs must lie in
//     [-bound, bound] (angles wrapped).
// Returns elementwise {y, log|dy/dx|} (forward) or {x, log|dx/dy|} (inverse), each shaped
// like the input.
#include <tuple>

#include <torch/types.h>

namespace nfkit {

struct SplineLimits {
  double min_bin = 1e-3;
  double min_derivative = 1e-3;
};

std::tuple<torch::Tensor, torch::Tensor> rational_quadratic_spline(
    const torch::Tensor& x, const torch::Tensor& widths, const torch::Tensor& heights,
    const torch::Tensor& derivatives, bool inverse, double bound, bool circular,
    SplineLimits limits = {});

/// The same map written with ATen tensor operations: the reference that tests check the
/// fused CPU kernel against, and the path on other devices and for higher-order gradients.
/// rational_quadratic_spline() uses the fused kernel (hand-derived first-order gradients) for
/// float32/float64 CPU tensors with at most 64 bins.
std::tuple<torch::Tensor, torch::Tensor> rational_quadratic_spline_reference(
    const torch::Tensor& x, const torch::Tensor& widths, const torch::Tensor& heights,
    const torch::Tensor& derivatives, bool inverse, double bound, bool circular,
    SplineLimits limits = {});

/// Number of unconstrained derivative parameters per element for K bins.
inline int64_t spline_derivative_count(int64_t bins, bool circular) {
  return circular ? bins : bins - 1;
}

}  // namespace nfkit
