#pragma once
// Analytic target densities with known answers, as used in the Boltzmann-generator
// literature. All energies are reduced (units of k_B T, dimensionless); the target density is
// p(x) = exp(-u(x)) / Z.
//
//   * DoubleWell (bgflow's DoubleWellEnergy, Noé et al., Science 2019):
//       u(x) = a x0 + b x0^2 + c x0^4 + 0.5 d * sum_{i>0} x_i^2, defaults a=0, b=-4, c=1, d=1.
//   * ManyWell (Midgley et al., ICLR 2023, FAB): D/2 independent copies of the 2-D
//       u(x1, x2) = x1^4 - 6 x1^2 - 0.5 x1 + 0.5 x2^2 on the pairs (x_{2i}, x_{2i+1}).
//       log Z = (D/2) [log Z_1 + 0.5 log(2 pi)], Z_1 = int exp(-(x^4 - 6 x^2 - 0.5 x)) dx by
//       quadrature (log_z()).
//   * MuellerBrown (Müller & Brown, Theor. Chim. Acta 1979): the four-Gaussian 2-D surface with
//       the standard A, a, b, c, x0, y0, scaled by 1/temperature (E in the paper's units).
//   * GaussianMixture40 (FAB, Midgley et al. 2023): 40 equal-weight 2-D Gaussians, unit
//       variance, means uniform in [-40, 40]^2 drawn from a seeded generator.
//   * PairDoubleWell, DW-4 (Köhler, Klein & Noé, ICML 2020; bgflow's MultiDoubleWellPotential):
//       u = sum over unique pairs i<j of a (d_ij - d0)^4 + b (d_ij - d0)^2 + c, with DW-4's
//       4 particles in 2-D, a = 0.9, b = -4, c = 0, d0 = 4 (temperature 1).
//   * LennardJones, LJ-13 (same paper; bgflow's LennardJonesPotential with oscillator):
//       u = eps * sum over UNIQUE pairs i<j of [(rm/d)^12 - 2 (rm/d)^6]
//           + (oscillator_scale / 2) sum_i |x_i - mean(x)|^2,
//       13 particles in 3-D, eps = rm = oscillator_scale = 1. This is bgflow's original
//       convention (ordered pairs / 2); EACF/FAB use the same energy ("energy_factor = 0.5"),
//       while the equivariant flow-matching code sums ordered pairs (twice ours): pass
//       pair_factor = 2 for that one.
//
//   nfkit::ManyWell mw(32);
//   double exact = mw.log_z();
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nfkit/physics/energy.h"

namespace nfkit {

class DoubleWell : public TorchEnergy {
 public:
  explicit DoubleWell(int64_t dim = 2, double a = 0.0, double b = -4.0, double c = 1.0,
                      double d = 1.0);
  int64_t dim() const override { return dim_; }
  std::string name() const override;
  /// log Z by 1-D quadrature times the Gaussian factor of the other coordinates.
  double log_z() const;

 protected:
  torch::Tensor u(const torch::Tensor& x) const override;

 private:
  int64_t dim_;
  double a_, b_, c_, d_;
};

class ManyWell : public TorchEnergy {
 public:
  /// dim must be even (32 in FAB).
  explicit ManyWell(int64_t dim = 32);
  int64_t dim() const override { return dim_; }
  std::string name() const override;
  /// Exact log Z (1-D quadrature to ~1e-12).
  double log_z() const;
  /// Exact independent samples [n, dim] (inverse CDF of the quartic on a fine grid for x1,
  /// standard normal x2), for forward-KL training and reference statistics.
  torch::Tensor sample(int64_t n, uint64_t seed) const;

 protected:
  torch::Tensor u(const torch::Tensor& x) const override;

 private:
  int64_t dim_;
};

class MuellerBrown : public TorchEnergy {
 public:
  /// temperature: divides the surface (the literature often uses 1/beta with beta = 0.1).
  explicit MuellerBrown(double temperature = 10.0);
  int64_t dim() const override { return 2; }
  std::string name() const override { return "mueller-brown"; }

 protected:
  torch::Tensor u(const torch::Tensor& x) const override;

 private:
  double temperature_;
};

class GaussianMixture40 : public TorchEnergy {
 public:
  explicit GaussianMixture40(uint64_t seed = 0, int64_t modes = 40, double extent = 40.0);
  int64_t dim() const override { return 2; }
  std::string name() const override { return "gmm40"; }
  /// The normalised mixture has log Z = 0 (u = -log p).
  double log_z() const { return 0.0; }
  const torch::Tensor& means() const { return means_; }
  /// Exact independent samples [n, 2]: a mode uniformly at random plus N(0, I).
  torch::Tensor sample(int64_t n, uint64_t seed) const;

 protected:
  torch::Tensor u(const torch::Tensor& x) const override;

 private:
  torch::Tensor means_;  // [modes, 2]
};

class PairDoubleWell : public TorchEnergy {
 public:
  PairDoubleWell(int64_t particles = 4, int64_t spatial_dim = 2, double a = 0.9, double b = -4.0,
                 double c = 0.0, double d0 = 4.0);
  int64_t dim() const override { return particles_ * spatial_; }
  std::string name() const override;

 protected:
  torch::Tensor u(const torch::Tensor& x) const override;

 private:
  int64_t particles_, spatial_;
  double a_, b_, c_, d0_;
};

class LennardJones : public TorchEnergy {
 public:
  LennardJones(int64_t particles = 13, int64_t spatial_dim = 3, double eps = 1.0, double rm = 1.0,
               double oscillator_scale = 1.0, double pair_factor = 1.0);
  int64_t dim() const override { return particles_ * spatial_; }
  std::string name() const override;

 protected:
  torch::Tensor u(const torch::Tensor& x) const override;

 private:
  int64_t particles_, spatial_;
  double eps_, rm_, osc_, pair_factor_;
};

/// A target by name, as command lines give it (`nfkit fab train --target`):
///   many-well[:D]      ManyWell, D even (default 32); exact log Z and samples
///   double-well[:D]    DoubleWell (default D = 2); exact log Z
///   gmm40[:SEED]       GaussianMixture40 with means from SEED (default 0); log Z = 0, samples
///   mueller-brown[:T]  MuellerBrown at temperature T (default 10)
///   dw4, lj13          PairDoubleWell, LennardJones with their defaults
/// A usage error naming --target and the known names otherwise.
struct AnalyticTarget {
  std::shared_ptr<TorchEnergy> energy;
  std::string spec;     ///< canonical form, e.g. "many-well:32"
  double log_z = NAN;   ///< exact log Z of exp(-u) where known, else NaN
  double extent = 1.0;  ///< typical spread of the coordinates (a flow's initial width)
  /// Exact independent samples [n, D] where the target has them (empty otherwise).
  std::function<torch::Tensor(int64_t n, uint64_t seed)> sample;
};
AnalyticTarget make_analytic_target(const std::string& spec);

/// Distances [B, P(P-1)/2] of unique pairs i<j of x [B, P * spatial_dim].
torch::Tensor pair_distances(const torch::Tensor& x, int64_t particles, int64_t spatial_dim);

/// log int exp(-f(x)) dx over [lo, hi] by the composite Simpson rule with n (even) intervals,
/// computed stably (shifted by the minimum of f on the grid).
double log_integral_1d(const std::function<double(double)>& f, double lo, double hi,
                       int64_t n = 200000);

}  // namespace nfkit
