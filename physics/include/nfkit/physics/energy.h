#pragma once
// Energies of configurations, for Boltzmann generators and tests against analytic truths.
//
// An Energy maps a batch of configurations x [B, dim] (float64; for molecules the flattened
// Cartesian positions in nm, atom-major: x = [x0, y0, z0, x1, ...]) to REDUCED energies
// u(x) = E(x) / (k_B T) [B] (dimensionless), and optionally to reduced forces -du/dx [B, dim]
// (1/nm for molecules). Configurations that cannot be evaluated (non-finite coordinates,
// overflow) get u = +inf and zero force: zero Boltzmann weight, never NaN.
//
// reduced_energy() is the differentiable form for reverse-KL training: its value is u(x) and
// its backward pass returns -forces * grad, so gradients reach the sampler's parameters
// through any energy, OpenMM's included.
//
//   nfkit::ManyWell well(32);
//   auto u = nfkit::reduced_energy(well, x);   // [B], differentiable
#include <torch/types.h>

#include <string>

namespace nfkit {

/// Boltzmann's constant in kJ/(mol K).
inline constexpr double kBoltzmann = 0.0083144626;

class Energy {
 public:
  virtual ~Energy() = default;
  /// Dimension of a configuration.
  virtual int64_t dim() const = 0;
  /// A short name for reports ("many-well-32", "openmm:system.xml").
  virtual std::string name() const = 0;
  /// Reduced energies u [B] of x [B, dim] (float64, CPU); with forces != nullptr also the
  /// reduced forces -du/dx [B, dim]. Rows that cannot be evaluated give +inf and zero force.
  virtual torch::Tensor evaluate(const torch::Tensor& x, torch::Tensor* forces = nullptr) = 0;
  /// Differentiable u(x) [B] in x's dtype and device. The default wraps evaluate() in an
  /// autograd function; energies written in torch operations return u(x) directly.
  virtual torch::Tensor differentiable(const torch::Tensor& x);
  /// Configurations mapped into the fundamental domain of the energy's periodic coordinates
  /// (torsions of an energy over internal coordinates); samplers (ais.h) apply it after every
  /// move, which makes their moves those of the torus. Identity for energies without any.
  virtual torch::Tensor wrap(const torch::Tensor& x) const { return x; }
};

/// The same energy at another temperature: u'(x) = factor * u(x) (factor = T / T' for an energy
/// reduced at T, seen at T'), forces and wrap() included. Holds a reference to `inner`.
class ScaledEnergy : public Energy {
 public:
  ScaledEnergy(Energy& inner, double factor);
  int64_t dim() const override { return inner_.dim(); }
  std::string name() const override;
  torch::Tensor evaluate(const torch::Tensor& x, torch::Tensor* forces = nullptr) override;
  torch::Tensor differentiable(const torch::Tensor& x) override { return factor_ * inner_.differentiable(x); }
  torch::Tensor wrap(const torch::Tensor& x) const override { return inner_.wrap(x); }
  double factor() const { return factor_; }

 private:
  Energy& inner_;
  double factor_;
};

/// u(x) [B], differentiable in x: energy.differentiable(x) after checking the shape.
torch::Tensor reduced_energy(Energy& energy, const torch::Tensor& x);

/// An Energy written in torch operations: subclasses implement u(x); forces by autograd.
class TorchEnergy : public Energy {
 public:
  torch::Tensor evaluate(const torch::Tensor& x, torch::Tensor* forces = nullptr) override;
  torch::Tensor differentiable(const torch::Tensor& x) override;

 protected:
  /// Reduced energy [B] of x [B, dim], built from differentiable torch operations.
  virtual torch::Tensor u(const torch::Tensor& x) const = 0;
};

}  // namespace nfkit
