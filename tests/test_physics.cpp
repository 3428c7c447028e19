// physics/: OpenMM energies against Python OpenMM and finite differences, the PDB reader,
// dihedrals, internal coordinates against autograd, and the analytic targets against
// quadrature.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "helpers.h"
#include "nfkit/boltzmann/analysis.h"   // backbone_dihedrals (phi/psi atoms)
#include "nfkit/boltzmann/generator.h"  // InternalCoordinateTransform (the Transform of to_internal)
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/physics/analytic.h"
#include "nfkit/physics/internal_coordinates.h"
#include "nfkit/physics/molecule.h"
#include "nfkit/physics/openmm_energy.h"

using namespace nfkit;
using namespace nfkit::test;

namespace {

const std::string kPdb = ala2_pdb();
const std::string kSystem = ala2_system();

}  // namespace

// ---- OpenMM ---------------------------------------------------------------------------------

TEST_CASE("openmm: energies and forces equal Python OpenMM's", "[physics][openmm]") {
  const auto x = ala2_batch(4, 0.01, 1);
  const auto in = temp_path("pos.h5"), out = temp_path("ref.h5");
  {
    H5Writer w(in, "samples", 1);
    w.write("/x", x);
    w.commit();
  }
  const int rc = run_python(
      "import h5py, numpy as np\n"
      "try:\n  import openmm as mm\nexcept ImportError:\n  from simtk import openmm as mm\n"
      "sys_ = mm.XmlSerializer.deserialize(open('" + kSystem + "').read())\n"
      "ctx = mm.Context(sys_, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName('Reference'))\n"
      "x = h5py.File('" + in + "', 'r')['x'][()]\n"
      "E, F = [], []\n"
      "for r in x:\n"
      "  ctx.setPositions(r.reshape(-1, 3))\n"
      "  s = ctx.getState(getEnergy=True, getForces=True)\n"
      "  E.append(s.getPotentialEnergy()._value); F.append(np.asarray(s.getForces()._value).ravel())\n"
      "f = h5py.File('" + out + "', 'w'); f['e'] = np.array(E); f['f'] = np.array(F)\n");
  if (rc == -1) {
    WARN("no Python for the cross-check");
    return;
  }
  REQUIRE(rc == 0);
  H5Reader r(out);
  const auto e_ref = r.read("/e"), f_ref = r.read("/f");
  OpenMMEnergy energy(kSystem, 300.0, OpenMMOptions{"Reference", 2});
  torch::Tensor forces;
  const auto e = energy.evaluate_serial(x, &forces);
  CHECK(((e - e_ref).abs() / e_ref.abs().clamp_min(1.0)).max().item<double>() < 1e-6);
  CHECK(((forces - f_ref).abs().max() / f_ref.abs().max()).item<double>() < 1e-6);
  // The pool gives the serial loop's numbers, reduced by k_B T.
  torch::Tensor pool_forces;
  const auto u = energy.evaluate(x, &pool_forces);
  CHECK(torch::allclose(u, e / energy.kT(), 1e-12, 0.0));
  CHECK(torch::allclose(pool_forces, forces / energy.kT(), 1e-12, 1e-12));
}

TEST_CASE("openmm: forces are minus the gradient of the energy", "[physics][openmm]") {
  OpenMMEnergy energy(kSystem, 300.0, OpenMMOptions{"Reference", 1});
  const auto x = ala2_batch(2, 0.005, 2).narrow(0, 1, 1).contiguous();
  torch::Tensor f;
  energy.evaluate(x, &f);
  const double h = 1e-5;
  for (int64_t i : {0, 7, 20, 33, 50, 65}) {
    auto xp = x.clone(), xm = x.clone();
    xp[0][i] += h;
    xm[0][i] -= h;
    const double fd = -(energy.evaluate(xp)[0].item<double>() - energy.evaluate(xm)[0].item<double>()) / (2 * h);
    CHECK(fd == Approx(f[0][i].item<double>()).epsilon(1e-4).margin(1e-3));
  }
  // reduced_energy's backward pass returns minus the forces.
  auto xr = x.clone().requires_grad_(true);
  reduced_energy(energy, xr).sum().backward();
  CHECK(torch::allclose(xr.grad(), -f, 1e-12, 1e-12));
}

TEST_CASE("openmm: bad files, platforms, atom counts and coordinates", "[physics][openmm]") {
  CHECK_THROWS_WITH(OpenMMEnergy("/nonexistent/system.xml", 300.0),
                    Catch::Contains("/nonexistent/system.xml: cannot open"));
  const auto bad = write_text("bad.xml", "<System openmmVersion=\"7.7\"><Particles><Particle mass=\"oops\"");
  CHECK_THROWS_AS(OpenMMEnergy(bad, 300.0), RuntimeError);
  const auto notxml = write_text("not.xml", "hello\n");
  CHECK_THROWS_WITH(OpenMMEnergy(notxml, 300.0), Catch::Contains("not a serialized OpenMM System"));
  CHECK_THROWS_WITH(OpenMMEnergy(kSystem, 300.0, OpenMMOptions{"Quantum", 1}),
                    Catch::Contains("unknown platform 'Quantum'"));
  OpenMMEnergy energy(kSystem, 300.0, OpenMMOptions{"Reference", 2});
  CHECK_THROWS_WITH(energy.evaluate(torch::zeros({2, 60}, torch::kFloat64)),
                    Catch::Contains("the System has 22 atoms"));
  auto x = ala2_batch(3, 0.0, 3);
  x[1][5] = NAN;
  x[2] = x[0];
  x[2][3] = x[2][0];  // atom 1 on top of atom 0 in x: a clash
  x[2][4] = x[2][1];
  x[2][5] = x[2][2];
  torch::Tensor f;
  const auto u = energy.evaluate(x, &f);
  CHECK(std::isfinite(u[0].item<double>()));
  CHECK(u[1].item<double>() == INFINITY);
  CHECK(!torch::isnan(u).any().item<bool>());
  CHECK(torch::isfinite(f).all().item<bool>());
}

// ---- geometry -------------------------------------------------------------------------------

TEST_CASE("pdb: reads alanine dipeptide, malformed lines get file:line errors", "[physics]") {
  const auto mol = read_pdb(kPdb);
  REQUIRE(mol.size() == 22);
  CHECK(mol.atoms[8].name == "CA");
  CHECK(mol.atoms[8].residue == "ALA");
  CHECK(mol.atoms[8].element == "C");
  CHECK(mol.atoms[0].x == Approx(1.5908));
  const auto bad = write_text("bad.pdb", "ATOM      1  N   ALA A   1      11.104   abc      1.00  1.00           N\n");
  CHECK_THROWS_WITH(read_pdb(bad), Catch::Contains("bad.pdb:1: coordinate y"));
  const auto empty = write_text("empty.pdb", "REMARK nothing\nEND\n");
  CHECK_THROWS_WITH(read_pdb(empty), Catch::Contains("no ATOM or HETATM records"));
  CHECK_THROWS_WITH(read_pdb("/nonexistent.pdb"), Catch::Contains("cannot open"));
  // Bonds from covalent radii equal the force field's bonds.
  auto guessed = guess_bonds(mol);
  auto ff = OpenMMEnergy(kSystem, 300.0, OpenMMOptions{"Reference", 1}).bonds();
  std::sort(guessed.begin(), guessed.end());
  std::sort(ff.begin(), ff.end());
  CHECK((guessed == ff));
}

TEST_CASE("dihedral: IUPAC sign, and phi/psi of the PDB structure", "[physics]") {
  const double deg = M_PI / 180.0;
  for (double phi : {60.0, -60.0, 180.0, 100.0, -150.0}) {
    auto x = torch::tensor({1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0,
                            std::cos(phi * deg), std::sin(phi * deg), 1.0}, torch::kFloat64).reshape({1, 12});
    // Looking along j->k (+z), the front bond (+x) turned clockwise by +phi reaches the back bond.
    const double got = dihedral(x, 0, 1, 2, 3)[0].item<double>() / deg;
    CHECK(std::remainder(got - phi, 360.0) == Approx(0.0).margin(1e-9));
  }
  const auto mol = read_pdb(kPdb);
  const auto d = backbone_dihedrals(mol);
  CHECK((d.phi == std::array<int64_t, 4>{4, 6, 8, 14}));
  CHECK((d.psi == std::array<int64_t, 4>{6, 8, 14, 16}));
}

TEST_CASE("internal coordinates: round trip, and log|det| equals the autograd Jacobian's", "[physics]") {
  const auto mol = read_pdb(kPdb);
  std::vector<bool> heavy;
  for (const auto& a : mol.atoms) heavy.push_back(a.element != "H");
  const auto z = zmatrix_from_bonds(mol.size(), guess_bonds(mol), heavy);
  CHECK(z.internal_dim() == 60);
  CHECK((ZMatrix::from_json(z.to_json()).rows == z.rows));
  const auto x = ala2_batch(5, 0.01, 4);
  const auto ic = to_internal(z, x, /*with_globals=*/true);
  const auto back = from_internal(z, ic.q);
  CHECK((back.x - x).abs().max().item<double>() < 1e-6);
  CHECK(torch::allclose(back.logdet, -ic.logdet, 1e-10, 1e-10));
  // Torsions in [-pi, pi], angles in (0, pi).
  const auto t = ic.q.slice(1, 6 + z.torsions_begin());
  CHECK((t.abs() <= M_PI).all().item<bool>());
  // The full map as a Transform: log|det| against the 66 x 66 autograd Jacobian.
  InternalCoordinateTransform T(z);
  const auto bf = brute_force_logabsdet(T, x, {});
  const auto [q, ld] = T.forward(x);
  CHECK(torch::allclose(ld, bf, 1e-8, 1e-8));
  // Reduced coordinates: the canonical frame reproduces the internal coordinates.
  const auto red = to_internal(z, x);
  const auto xc = from_internal(z, red.q);
  CHECK(torch::allclose(to_internal(z, xc.x).q, red.q, 1e-9, 1e-9));
  CHECK(torch::allclose(xc.logdet, -red.logdet, 1e-10, 1e-10));
  // Bad Z-matrices are refused with the row named.
  ZMatrix broken = z;
  broken.rows[5][1] = broken.rows[10][0];
  CHECK_THROWS_WITH(broken.validate(), Catch::Contains("row 5"));
}

// ---- analytic targets -----------------------------------------------------------------------

TEST_CASE("analytic energies: quadrature log Z, exact samples, forces", "[physics]") {
  // int exp(-x^4) dx = 2 Gamma(5/4).
  CHECK(log_integral_1d([](double t) { return t * t * t * t; }, -6, 6) ==
        Approx(std::log(2.0 * std::tgamma(1.25))).epsilon(1e-10));
  // Many-Well: log Z of D = 2 against a 2-D grid sum; D = 32 is 16 copies.
  ManyWell mw2(2), mw32(32);
  double s = 0;
  const double h = 0.01;
  for (double a = -5; a < 5; a += h)
    for (double b = -9; b < 9; b += h) s += std::exp(-(a * a * a * a - 6 * a * a - 0.5 * a + 0.5 * b * b));
  CHECK(mw2.log_z() == Approx(std::log(s * h * h)).epsilon(1e-6));
  CHECK(mw32.log_z() == Approx(16 * mw2.log_z()).epsilon(1e-12));
  // Exact samples: mean energy of the 2-D well against quadrature of E[u].
  const auto xs = mw2.sample(200000, 7);
  const double mean_u = reduced_energy(mw2, xs).mean().item<double>();
  double zu = 0, z0 = 0;
  for (double a = -5; a < 5; a += 1e-3) {
    const double f = a * a * a * a - 6 * a * a - 0.5 * a;
    z0 += std::exp(-f);
    zu += f * std::exp(-f);
  }
  CHECK(mean_u == Approx(zu / z0 + 0.5).margin(0.02));
  // Forces by autograd; +inf for non-finite rows.
  DoubleWell dw(2);
  torch::Tensor f;
  auto x = torch::tensor({{1.0, 2.0}, {double(NAN), 0.0}}, torch::kFloat64);
  const auto u = dw.evaluate(x, &f);
  CHECK(u[0].item<double>() == Approx(-4 + 1 + 2));
  CHECK(u[1].item<double>() == INFINITY);
  CHECK(f[0][0].item<double>() == Approx(-(-8.0 + 4.0)));
  CHECK(f[0][1].item<double>() == Approx(-2.0));
  // DW-4: one pair at d0 has energy c; at the wells d0 +- sqrt(-b / 2a) it is c - b^2 / 4a.
  PairDoubleWell dw4;
  auto two = torch::zeros({1, 8}, torch::kFloat64);
  two[0][2] = 4.0;                           // particle 1 at (4, 0): d01 = 4
  two[0][4] = 100.0, two[0][6] = -100.0;     // particles 2, 3 far away on the x axis
  const auto dd = pair_distances(two, 4, 2);
  CHECK(dd[0][0].item<double>() == Approx(4.0));
  double expect = 0;
  for (int64_t k = 0; k < dd.size(1); ++k) {
    const double r = dd[0][k].item<double>() - 4.0;
    expect += 0.9 * r * r * r * r - 4.0 * r * r;
  }
  CHECK(dw4.evaluate(two)[0].item<double>() == Approx(expect));
  CHECK(dw4.dim() == 8);
  // LJ: a pair at rm has -eps, plus the oscillator 0.5 * (0.5^2 + 0.5^2).
  LennardJones lj2(2, 3);
  CHECK(lj2.evaluate(torch::tensor({{0.5, 0.0, 0.0, -0.5, 0.0, 0.0}}, torch::kFloat64))[0].item<double>() ==
        Approx(-1.0 + 0.5 * 0.5));
  LennardJones lj13;
  CHECK(lj13.dim() == 39);
  GaussianMixture40 gmm(0);
  CHECK(gmm.means().size(0) == 40);
  MuellerBrown mb;
  CHECK(mb.evaluate(torch::tensor({{-0.558, 1.442}}, torch::kFloat64))[0].item<double>() ==
        Approx(-146.7 / 10.0).epsilon(1e-3));
}

