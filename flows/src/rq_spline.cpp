#include "nfkit/flows/rq_spline.h"

#include <torch/torch.h>

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
  // Number of interior knots <= v: index of the bin holding v, clamped to [0, K-1].
  auto interior = knots.narrow(-1, 1, K - 1);
  return (v.unsqueeze(-1) >= interior).sum(-1, /*keepdim=*/true).clamp_max(K - 1);
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> rational_quadratic_spline(
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

  torch::Tensor out, logdet, xi;
  if (!inverse) {
    xi = ((v - xk) / wk).clamp(0.0, 1.0);
    const auto xi1 = xi * (1.0 - xi);
    const auto num = hk * (sk * xi * xi + dk * xi1);
    const auto den = sk + dsum * xi1;
    out = yk + num / den;
  } else {
    const auto dy = v - yk;
    const auto a = hk * (sk - dk) + dy * dsum;
    const auto b = hk * dk - dy * dsum;
    const auto c = -sk * dy;
    const auto disc = (b * b - 4.0 * a * c).clamp_min(0.0);
    xi = ((2.0 * c) / (-b - torch::sqrt(disc))).clamp(0.0, 1.0);
    out = xi * wk + xk;
  }
  const auto xi1 = xi * (1.0 - xi);
  const auto den = sk + dsum * xi1;
  const auto dnum = sk * sk * (dk1 * xi * xi + 2.0 * sk * xi1 + dk * (1.0 - xi) * (1.0 - xi));
  auto lad = torch::log(dnum) - 2.0 * torch::log(den);  // log dy/dx
  if (inverse) lad = -lad;
  if (circular) return {out, lad};
  return {torch::where(inside, out, input), torch::where(inside, lad, torch::zeros_like(lad))};
}

}  // namespace nfkit
