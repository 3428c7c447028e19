#include "nfkit/flows/rq_spline.h"

#include <torch/torch.h>

#include "rq_spline_kernel.h"

namespace nfkit {
namespace {

// Knot positions from unconstrained bin sizes: [.., K+1] from -bound to +bound, and the
// bin sizes themselves [.., K].
std::tuple<torch::Tensor, torch::Tensor> knots(const torch::Tensor& unnormalised, double bound,
                                               double min_bin) {
  const int64_t K = unnormalised.size(-1);
  auto size = min_bin + (1.0 - min_bin * K) * torch::softmax(unnormalised, -1);
  auto cum = torch::cumsum(size, -1);
  cum = torch::nn::functional::pad(cum, torch::nn::functional::PadFuncOptions({1, 0}));
  cum = 2.0 * bound * cum - bound;
  // Pin the ends exactly (cumsum rounding) so that the boundaries are fixed points.
  cum = torch::cat({torch::full_like(cum.narrow(-1, 0, 1), -bound), cum.narrow(-1, 1, K - 1),
                    torch::full_like(cum.narrow(-1, 0, 1), bound)},
                   -1);
  return {cum, cum.narrow(-1, 1, K) - cum.narrow(-1, 0, K)};
}

torch::Tensor bin_index(const torch::Tensor& knots, const torch::Tensor& v) {
  const int64_t K = knots.size(-1) - 1;
  // Index of the bin holding v: the number of interior knots <= v, in [0, K-1].
  const auto interior = knots.narrow(-1, 1, K - 1).contiguous();
  return torch::searchsorted(interior, v.unsqueeze(-1).contiguous(), /*out_int32=*/false,
                             /*right=*/true);
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> rational_quadratic_spline(
    const torch::Tensor& x, const torch::Tensor& widths, const torch::Tensor& heights,
    const torch::Tensor& derivatives, bool inverse, double bound, bool circular,
    SplineLimits limits) {
  const bool kernel = x.device().is_cpu() && widths.size(-1) <= detail::kMaxKernelBins &&
                      (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64) &&
                      widths.scalar_type() == x.scalar_type();
  if (kernel)
    return detail::rq_spline_cpu(x, widths, heights, derivatives, inverse, bound, circular,
                                 limits.min_bin, limits.min_derivative);
  return rational_quadratic_spline_reference(x, widths, heights, derivatives, inverse, bound,
                                             circular, limits);
}

std::tuple<torch::Tensor, torch::Tensor> rational_quadratic_spline_reference(
    const torch::Tensor& input, const torch::Tensor& uw, const torch::Tensor& uh,
    const torch::Tensor& ud, bool inverse, double bound, bool circular, SplineLimits lim) {
  auto [cw, w] = knots(uw, bound, lim.min_bin);
  auto [ch, h] = knots(uh, bound, lim.min_bin);
  torch::Tensor d;
  auto inner = lim.min_derivative + torch::softplus(ud);
  if (circular) {
    d = torch::cat({inner, inner.narrow(-1, 0, 1)}, -1);
  } else {
    auto one = torch::ones_like(uw.narrow(-1, 0, 1));
    d = torch::cat({one, inner, one}, -1);
  }

  // Inside the interval the spline applies; outside (interval mode) the identity.
  const auto inside = (input >= -bound) & (input <= bound);
  const auto v = input.clamp(-bound, bound);
  const auto idx = bin_index(inverse ? ch : cw, v);
  auto gather = [&](const torch::Tensor& t) { return t.gather(-1, idx).squeeze(-1); };
  const auto xk = gather(cw), wk = gather(w), yk = gather(ch), hk = gather(h);
  const auto dk = gather(d), dk1 = gather(d.narrow(-1, 1, d.size(-1) - 1));
  const auto sk = hk / wk;
  const auto dsum = dk1 + dk - 2.0 * sk;

  torch::Tensor out, xi;
  if (!inverse) {
    xi = ((v - xk) / wk).clamp(0.0, 1.0);
  } else {
    const auto dy = v - yk;
    const auto a = hk * (sk - dk) + dy * dsum;
    const auto b = hk * dk - dy * dsum;
    const auto c = -sk * dy;
    const auto disc = (b * b - 4.0 * a * c).clamp_min(0.0);
    xi = ((2.0 * c) / (-b - torch::sqrt(disc))).clamp(0.0, 1.0);
    out = xi * wk + xk;
  }
  const auto xi2 = xi * xi;
  const auto xi1 = xi - xi2;  // xi (1 - xi)
  const auto den = sk + dsum * xi1;
  if (!inverse) out = yk + hk * (sk * xi2 + dk * xi1) / den;
  // dy/dx = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / den^2
  const auto one_minus = 1.0 - xi;
  const auto dnum = (sk * sk) * (dk1 * xi2 + 2.0 * sk * xi1 + dk * one_minus * one_minus);
  auto lad = torch::log(dnum / (den * den));  // log dy/dx
  if (inverse) lad = -lad;
  if (circular) return {out, lad};
  return {torch::where(inside, out, input), torch::where(inside, lad, torch::zeros_like(lad))};
}

}  // namespace nfkit
