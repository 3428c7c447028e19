#include "nfkit/physics/energy.h"

#include <cmath>
#include <sstream>

#include <torch/autograd.h>

#include "nfkit/core/checks.h"

namespace nfkit {

namespace {

// u(x) with OpenMM-style forces as the backward pass: d u / d x = -forces.
class EnergyFunction : public torch::autograd::Function<EnergyFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               Energy* energy) {
    const auto xd = x.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    torch::Tensor forces;
    auto u = energy->evaluate(xd, &forces);
    // +inf rows carry zero force; their gradient is zero rather than NaN.
    ctx->save_for_backward({forces.to(x.options())});
    return u.to(x.options());
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    const auto forces = ctx->get_saved_variables()[0];
    return {-forces * grad[0].unsqueeze(1), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor Energy::differentiable(const torch::Tensor& x) {
  return EnergyFunction::apply(x, this);
}

ScaledEnergy::ScaledEnergy(Energy& inner, double factor) : inner_(inner), factor_(factor) {
  if (!(factor > 0.0) || !std::isfinite(factor))
    usage_error("ScaledEnergy", "factor must be finite and > 0, got " + std::to_string(factor));
}

std::string ScaledEnergy::name() const {
  std::ostringstream s;
  s << inner_.name() << " x " << factor_;
  return s.str();
}

torch::Tensor ScaledEnergy::evaluate(const torch::Tensor& x, torch::Tensor* forces) {
  auto u = inner_.evaluate(x, forces);
  if (forces) *forces = *forces * factor_;
  return u * factor_;
}

torch::Tensor reduced_energy(Energy& energy, const torch::Tensor& x) {
  check_dim("reduced_energy", "x", x, 2);
  check_size("reduced_energy", "x", x, 1, energy.dim());
  check_floating("reduced_energy", "x", x);
  return energy.differentiable(x);
}

torch::Tensor TorchEnergy::evaluate(const torch::Tensor& x, torch::Tensor* forces) {
  check_dim("Energy::evaluate", "x", x, 2);
  check_size("Energy::evaluate", "x", x, 1, dim());
  const auto bad = ~torch::isfinite(x).all(1);
  auto xs = torch::where(bad.unsqueeze(1), torch::zeros_like(x), x)
                .to(torch::kFloat64)
                .detach()
                .requires_grad_(forces != nullptr);
  torch::Tensor u;
  {
    torch::AutoGradMode grad_mode(forces != nullptr);
    u = this->u(xs);
    if (forces != nullptr) {
      auto g = torch::autograd::grad({u.sum()}, {xs})[0];
      *forces = torch::where(bad.unsqueeze(1) | ~torch::isfinite(g), torch::zeros_like(g), -g)
                    .detach();
    }
  }
  u = u.detach();
  u = torch::where(bad | torch::isnan(u), torch::full_like(u, INFINITY), u);
  return u;
}

torch::Tensor TorchEnergy::differentiable(const torch::Tensor& x) { return u(x); }

}  // namespace nfkit
