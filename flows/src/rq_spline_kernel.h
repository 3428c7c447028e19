#pragma once
// Fused CPU kernel of the rational-quadratic spline (rq_spline.h) with hand-derived
// gradients: one pass per element over its K bins instead of ~40 tensor operations, forward
// and backward. The ATen implementation in rq_spline.cpp stays the reference and the path on
// other devices; tests compare the two (values and gradients).
#include <torch/types.h>

#include <tuple>

namespace nfkit::detail {

/// Largest bin count the kernel handles (per-element scratch lives on the stack).
constexpr int64_t kMaxKernelBins = 64;

/// Same contract as rational_quadratic_spline; inputs on the CPU, float32 or float64.
/// Differentiable (first order) in x and the three parameter tensors.
std::tuple<torch::Tensor, torch::Tensor> rq_spline_cpu(const torch::Tensor& x,
                                                       const torch::Tensor& widths,
                                                       const torch::Tensor& heights,
                                                       const torch::Tensor& derivatives,
                                                       bool inverse, double bound, bool circular,
                                                       double min_bin, double min_derivative);

}  // namespace nfkit::detail
