#include "nfkit/flows/elementwise.h"

#include <torch/torch.h>

#include "nfkit/core/checks.h"

namespace nfkit {

ValueAndLogDet AffineMap::apply(const torch::Tensor& x, const torch::Tensor& params,
                                bool inverse) const {
  auto s = params.select(-1, 0);
  const auto t = params.select(-1, 1);
  if (clamp_ > 0) s = clamp_ * torch::tanh(s / clamp_);
  if (!inverse) return {torch::addcmul(t, x, torch::exp(s)), s};
  return {(x - t) * torch::exp(-s), -s};
}

SplineMap::SplineMap(int64_t bins, double bound, bool circular, bool identity_at_zero)
    : bins_(bins), bound_(bound), circular_(circular), identity_at_zero_(identity_at_zero) {
  if (bins < 2) usage_error("SplineMap", "bins is " + std::to_string(bins) + ", but must be >= 2");
  check_positive("SplineMap", "bound", bound);
}

ValueAndLogDet SplineMap::apply(const torch::Tensor& x, const torch::Tensor& params,
                                bool inverse) const {
  const auto w = params.narrow(-1, 0, bins_);
  const auto h = params.narrow(-1, bins_, bins_);
  auto d = params.narrow(-1, 2 * bins_, params.size(-1) - 2 * bins_);
  if (identity_at_zero_) {
    // softplus(0 + shift) + min_derivative = 1.
    static const double shift = std::log(std::expm1(1.0 - SplineLimits{}.min_derivative));
    d = d + shift;
  }
  return rational_quadratic_spline(x, w, h, d, inverse, bound_, circular_);
}

torch::Tensor conditioner_features(const torch::Tensor& x, const ElementwiseMap& map) {
  if (!map.circular()) return x;
  const auto a = x * (M_PI / map.period_half());
  return torch::cat({torch::cos(a), torch::sin(a)}, 1);
}

}  // namespace nfkit
