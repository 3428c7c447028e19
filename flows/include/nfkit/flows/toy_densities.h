#pragma once
// Built-in densities with exactly known log-densities, for testing and demonstrating flows:
// a flow's held-out NLL can be compared with the true entropy H = -E_p[log p] (nats), the
// lower bound any model reaches only when it equals p.
//
//   name          dim  density                                                   entropy
//   gmm           2    8 equal Gaussians (sigma 0.5) on a circle of radius 3       quadrature
//   rings         2    radii 1, 2, 3 (weights 1:2:3), radial N(r_k, 0.1^2),
//                      uniform angle: p(x) = sum w_k N(|x|; r_k, s) / (2 pi |x|)   quadrature
//   spirals       2    two spiral arms, each an equal mixture of 100 Gaussians
//                      (sigma 0.25) along r = 0.5 + 3.5 t, phi = 3 pi t             quadrature
//   checkerboard  2    uniform on the 8 dark squares (side 2) of [-4, 4]^2          log 32
//   banana[:D]    D    x ~ N(0, S), S_ij = 0.5^|i-j|, then y_{2k+1} = x_{2k+1} +
//                      0.5 (x_{2k}^2 - 1) (volume-preserving), default D = 4        analytic
//   mixture:D:K   D    K equal isotropic Gaussians (sigma 0.5), centres the first K
//                      Halton points in [-4, 4]^D (D <= 32)                       Monte Carlo*
//   funnel[:D]    D    Neal's funnel: x_0 ~ N(0, 9), x_i ~ N(0, e^{x_0}), D = 4   analytic
//   8gaussians    2    torchcfm's: 8 Gaussians at radius 5, covariance sqrt(0.1) I
//                      (variance 0.316 per coordinate, std 0.562, as torchcfm's
//                      eight_normal_sample(var = 0.1) builds it)                   quadrature
//   moons         2    two moons (sklearn make_moons, Gaussian noise 0.2) x 3 - 1
//                      as in torchcfm (whose own generator adds uniform noise
//                      along the diagonal instead; ours has a smooth density)      quadrature
//   scurve        2    sklearn's S curve in its (x, z) plane, x 2, noise 0.2      quadrature
// moons and scurve: log-density by the midpoint rule along the curve (node spacing s/20,
// relative error ~1e-4 near the curve's ends, less elsewhere); their entropies by quadrature on a 500 x 500 grid.
// Quadrature: midpoint rule on a 1000 x 1000 grid over the plotting box (mass outside
// < 1e-10), accurate to ~1e-5 nats. *Monte Carlo: -mean log p over 10^6 samples of a fixed
// generator (standard error ~1e-3 nats; quadrature in 2-D). The log-density itself is exact for
// every density, so a gap measured on the same test rows, mean(log p - log q), is exact too.
//
//   auto p = nfkit::make_toy_density("banana:8");
//   auto x = p->sample(1000);            // float64 [1000, 8]
//   double h = p->entropy();
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

namespace nfkit {

class ToyDensity {
 public:
  virtual ~ToyDensity() = default;
  virtual std::string name() const = 0;
  virtual int64_t dim() const = 0;
  /// n samples, float64 [n, dim], from the global torch generator.
  virtual torch::Tensor sample(int64_t n) const = 0;
  /// Exact log-density [B] of x [B, dim] (float64).
  virtual torch::Tensor log_prob(const torch::Tensor& x) const = 0;
  /// Differential entropy in nats.
  virtual double entropy() const = 0;
  /// Half-width of the square box [-L, L]^2 that holds the 2-D densities (for plots).
  virtual double box() const = 0;
};

/// "gmm", "rings", "spirals", "checkerboard", "banana[:D]", "mixture:D:K", "funnel[:D]",
/// "8gaussians", "moons" or "scurve".
/// UsageError otherwise.
std::unique_ptr<ToyDensity> make_toy_density(const std::string& spec);
/// Whether spec names a built-in density.
bool is_toy_density(const std::string& spec);
const std::vector<std::string>& toy_density_names();

/// Entropy of a 2-D density by the midpoint rule on an n x n grid over [-L, L]^2.
double entropy_by_quadrature(const ToyDensity& p, int64_t n = 1000);

}  // namespace nfkit
