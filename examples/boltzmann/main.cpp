// A Boltzmann generator for an energy of your own, through the installed nfkit library.
//
// The molecule: united-atom n-pentane (five CH_x beads, TraPPE-UA bond angles and torsions;
// Martin & Siepmann, J. Phys. Chem. B 1998), with harmonic bonds instead of TraPPE's fixed ones
// and no 1-5 interaction, at 300 K. Its energy is written here in torch operations (an
// nfkit::TorchEnergy), so the pipeline knows nothing about it beyond the Energy interface.
// Without 1-5 terms the Boltzmann density factorises over internal coordinates, and each
// torsion's marginal is exactly proportional to exp(-V(phi) / kT): the probability that both
// torsions are trans is known by quadrature, and the reweighted generator must reproduce it.
//
// Steps: reference configurations by Metropolis Monte Carlo in internal coordinates (the
// stand-in for your MD), train_generator (forward KL), sample_generator (energies and
// log-weights), importance-reweighted P(trans, trans) against the exact value.
// Prints "boltzmann example ok" when they agree within 4 standard errors (and 0.03).
#include <nfkit/boltzmann/pipeline.h>
#include <nfkit/boltzmann/reweight.h>
#include <nfkit/core/runtime.h>
#include <nfkit/physics/energy.h>
#include <nfkit/physics/internal_coordinates.h>
#include <nfkit/physics/molecule.h>

#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <iostream>

namespace {

constexpr double kT = nfkit::kBoltzmann * 300.0;  // kJ/mol
constexpr double kPi = 3.14159265358979323846;

// TraPPE-UA torsion (kJ/mol) with trans at phi = +-pi.
double torsion_energy(double phi) {
  const double c1 = 355.03 * nfkit::kBoltzmann, c2 = -68.19 * nfkit::kBoltzmann,
               c3 = 791.32 * nfkit::kBoltzmann;
  return c1 * (1 + std::cos(phi)) + c2 * (1 - std::cos(2 * phi)) + c3 * (1 + std::cos(3 * phi));
}

class Pentane : public nfkit::TorchEnergy {
 public:
  int64_t dim() const override { return 15; }
  std::string name() const override { return "pentane-ua"; }

 protected:
  torch::Tensor u(const torch::Tensor& x) const override {
    const double kb = 2.0e5, b0 = 0.154;                       // kJ/mol/nm^2, nm
    const double ka = 62500 * nfkit::kBoltzmann, a0 = 114.0 * kPi / 180.0;  // kJ/mol/rad^2
    const double c1 = 355.03 * nfkit::kBoltzmann, c2 = -68.19 * nfkit::kBoltzmann,
                 c3 = 791.32 * nfkit::kBoltzmann;
    const auto X = x.reshape({x.size(0), 5, 3});
    auto e = torch::zeros({x.size(0)}, x.options());
    for (int i = 0; i < 4; ++i) {
      const auto b = (X.select(1, i + 1) - X.select(1, i)).norm(2, -1);
      e = e + 0.5 * kb * (b - b0).pow(2);
    }
    for (int i = 0; i < 3; ++i) {
      const auto a = nfkit::bond_angle(X.select(1, i), X.select(1, i + 1), X.select(1, i + 2));
      e = e + 0.5 * ka * (a - a0).pow(2);
    }
    for (int i = 0; i < 2; ++i) {
      const auto phi = nfkit::dihedral(x, i, i + 1, i + 2, i + 3);
      e = e + c1 * (1 + torch::cos(phi)) + c2 * (1 - torch::cos(2 * phi)) + c3 * (1 + torch::cos(3 * phi));
    }
    return e / kT;
  }
};

bool trans(double phi) { return std::abs(phi) > 2.0 * kPi / 3.0; }

// Exact P(trans) of one torsion: the marginal exp(-V(phi)/kT) on a fine grid.
double exact_trans_probability() {
  const int n = 200000;
  double all = 0, tr = 0;
  for (int i = 0; i < n; ++i) {
    const double phi = -kPi + (i + 0.5) * 2 * kPi / n;
    const double w = std::exp(-torsion_energy(phi) / kT);
    all += w;
    if (trans(phi)) tr += w;
  }
  return tr / all;
}

// Reference data: `chains` Metropolis chains over the 9 internal coordinates (bonds, angles,
// torsions) with the energy of the flow's space u(X(q)) - log|det dX/dq|, frames walker-major.
nfkit::Trajectory monte_carlo(const nfkit::ZMatrix& z, nfkit::Energy& energy, int64_t chains,
                              int64_t frames, int64_t thin) {
  torch::NoGradGuard ng;
  auto u_of = [&](const torch::Tensor& q) {
    return nfkit::internal_energy(z, q, [&](const torch::Tensor& x) { return energy.evaluate(x); });
  };
  const auto step = torch::tensor({0.002, 0.002, 0.002, 0.002, 0.04, 0.04, 0.04, 0.8, 0.8},
                                  torch::kFloat64);
  auto q = torch::tensor({0.154, 0.154, 0.154, 0.154, 2.0, 2.0, 2.0, kPi, kPi}, torch::kFloat64)
               .repeat({chains, 1});
  auto u = u_of(q);
  std::vector<torch::Tensor> kept;
  for (int64_t s = 0; s < (frames + 50) * thin; ++s) {
    auto prop = q + torch::randn_like(q) * step;
    prop.narrow(1, 7, 2).copy_(torch::remainder(prop.narrow(1, 7, 2) + kPi, 2 * kPi) - kPi);
    const auto up = u_of(prop);
    const auto accept = torch::rand({chains}, torch::kFloat64).log() < (u - up);
    q = torch::where(accept.unsqueeze(1), prop, q);
    u = torch::where(accept, up, u);
    if (s >= 50 * thin && (s + 1) % thin == 0) kept.push_back(q.clone());
  }
  const auto Q = torch::stack(kept, 1).reshape({-1, 9});  // [chains * frames, 9], walker-major
  nfkit::Trajectory t;
  t.x = nfkit::from_internal(z, Q).x;
  t.energy = energy.evaluate(t.x) * kT;  // kJ/mol
  t.walker = torch::arange(chains, torch::kInt64).repeat_interleave(static_cast<int64_t>(kept.size()));
  t.temperature = 300.0;
  t.path = "Metropolis reference";
  return t;
}

}  // namespace

int main() {
  nfkit::set_threads(0);
  nfkit::seed_all(7);
  Pentane energy;
  const auto z = nfkit::zmatrix_from_bonds(5, {{0, 1}, {1, 2}, {2, 3}, {3, 4}});
  const auto md = monte_carlo(z, energy, 200, 40, 20);
  std::cout << "reference: " << md.x.size(0) << " Metropolis configurations\n";

  nfkit::BGTrainOptions o;
  o.recipe.layers = 2;
  o.recipe.hidden = 64;
  o.dtype = torch::kFloat64;
  o.trainer.steps(800).batch_size(256).lr(2e-3).warmup_steps(50).eval_every(100).quiet(true)
      .checkpoint_path("pentane_bg.h5.ckpt");
  o.restart = true;
  const auto rep = nfkit::train_generator(z, md, &energy, o, "pentane_bg.h5");
  std::cout << "trained: best validation NLL " << rep.train.best_val << " nats at step "
            << rep.train.best_step << "\n";

  auto bg = nfkit::load_generator("pentane_bg.h5");
  nfkit::BGSampleOptions so;
  so.n = 20000;
  so.quiet = true;
  const auto s = nfkit::sample_generator(bg, energy, so).samples;

  // P(both torsions trans), raw and reweighted, with a bootstrap error.
  const auto phi1 = nfkit::dihedral(s.x, 0, 1, 2, 3), phi2 = nfkit::dihedral(s.x, 1, 2, 3, 4);
  const auto tt = ((phi1.abs() > 2 * kPi / 3) & (phi2.abs() > 2 * kPi / 3)).to(torch::kFloat64);
  const double raw = tt.mean().item<double>();
  const auto est = nfkit::bootstrap(
      s.x.size(0),
      [&](const torch::Tensor& idx) {
        return nfkit::weighted_mean(tt.index_select(0, idx), s.log_w.index_select(0, idx));
      },
      100, 3);
  const double pt = exact_trans_probability(), exact = pt * pt;
  std::printf("Kish ESS %.1f%%\nP(trans, trans): exact %.4f, generator raw %.4f, reweighted %.4f +- %.4f\n",
              100 * nfkit::ess_fraction(s.log_w), exact, raw, est.value, est.error);
  const bool ok = std::abs(est.value - exact) < std::max(4 * est.error, 0.03);
  std::cout << (ok ? "boltzmann example ok" : "boltzmann example FAILED") << "\n";
  return ok ? 0 : 1;
}
