// boltzmann/: reweighting, ESS, the W2 / TICA metrics, chirality, reproducible MD and its
// resume, coordinate maps, the pipeline as library calls, and the bg commands end to end on a
// small run. (physics/ tests: test_physics.cpp.)
#include <catch2/catch.hpp>

#include <fstream>
#include <filesystem>
#include <sstream>

#include "cli.h"
#include "helpers.h"
#include "nfkit/boltzmann/analysis.h"
#include "nfkit/boltzmann/generator.h"
#include "nfkit/boltzmann/md.h"
#include "nfkit/boltzmann/pipeline.h"
#include "nfkit/boltzmann/reweight.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/optimal_transport.h"
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

// ---- reweighting and metrics ----------------------------------------------------------------

TEST_CASE("reweighting: Kish ESS, clipping and resampling on hand-made weights", "[boltzmann]") {
  CHECK(ess_fraction(torch::zeros({10}, torch::kFloat64)) == Approx(1.0));
  auto one = torch::full({10}, -INFINITY, torch::kFloat64);
  one[3] = 0.0;
  CHECK(ess_fraction(one) == Approx(0.1));
  CHECK(ess_fraction(torch::tensor({0.0, 0.0, -double(INFINITY), -double(INFINITY)}, torch::kFloat64)) == Approx(0.5));
  // w = (1, 2, 3): (sum w)^2 / sum w^2 / n = 36 / 14 / 3.
  CHECK(ess_fraction(torch::log(torch::tensor({1.0, 2.0, 3.0}, torch::kFloat64))) == Approx(36.0 / 14.0 / 3.0));
  CHECK_THROWS_WITH(ess_fraction(torch::tensor({0.0, double(NAN)}, torch::kFloat64)), Catch::Contains("log_w[1] is nan"));
  CHECK_THROWS_AS(ess_fraction(torch::full({3}, -INFINITY, torch::kFloat64)), RuntimeError);
  // Energies that are infinite or NaN (a clash, a failed evaluation) give weight zero, never a
  // NaN ESS: u = (1, +inf, nan, 2) with log q = 0 leaves w proportional to (e^-1, 0, 0, e^-2).
  const auto lw = log_importance_weights(torch::tensor({1.0, double(INFINITY), double(NAN), 2.0}, torch::kFloat64),
                                         torch::zeros({4}, torch::kFloat64));
  const double e1 = std::exp(-1.0), e2 = std::exp(-2.0);
  CHECK(ess_fraction(lw) == Approx((e1 + e2) * (e1 + e2) / (e1 * e1 + e2 * e2) / 4.0));
  const auto clipped = clip_log_weights(torch::arange(100, torch::kFloat64), 0.9);
  CHECK(clipped.max().item<double>() == Approx(89.1));
  const auto idx = resample(torch::log(torch::tensor({0.0, 1.0, 3.0}, torch::kFloat64)), 40000, 5);
  CHECK((idx == 0).sum().item<int64_t>() == 0);
  CHECK((idx == 2).to(torch::kFloat64).mean().item<double>() == Approx(0.75).margin(0.01));
}

TEST_CASE("reweighting recovers an exact expectation of a 1-D double well from a wrong proposal", "[boltzmann]") {
  DoubleWell dw(1);  // u = x^4 - 4 x^2: wells at +-sqrt(2)
  double z = 0, zx2 = 0;
  for (double a = -6; a < 6; a += 1e-4) {
    const double p = std::exp(-(a * a * a * a - 4 * a * a));
    z += p;
    zx2 += a * a * p;
  }
  const double exact = zx2 / z;
  // Proposal N(0.5, 1.5^2): off-centre and too narrow for the wells' tails.
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(11);
  const auto x = at::normal(0.5, 1.5, {200000, 1}, gen, torch::TensorOptions().dtype(torch::kFloat64));
  const auto log_q = -0.5 * ((x.squeeze(1) - 0.5) / 1.5).pow(2) - std::log(1.5 * std::sqrt(2 * M_PI));
  const auto log_w = -dw.evaluate(x) - log_q;
  const auto f = x.squeeze(1).pow(2);
  const auto est = bootstrap(x.size(0), [&](const torch::Tensor& i) {
    return weighted_mean(f.index_select(0, i), log_w.index_select(0, i)); }, 50, 3);
  CHECK(std::abs(est.value - exact) < 4 * est.error);
  CHECK(std::abs(est.value - exact) < 0.02);
  CHECK(std::abs(f.mean().item<double>() - exact) > 0.1);  // the unweighted mean is wrong
}

TEST_CASE("W2 metrics: shifted samples and wrap-around on the torus", "[boltzmann]") {
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(2);
  const auto a = at::normal(0.0, 1.0, {3000}, gen, torch::TensorOptions().dtype(torch::kFloat64));
  CHECK(wasserstein2_1d(a, a + 1.5) == Approx(1.5).epsilon(1e-12));
  // Unequal sizes: {0, 1} vs {0, 0, 1, 1} are the same distribution.
  CHECK(wasserstein2_1d(torch::tensor({0.0, 1.0}, torch::kFloat64),
                        torch::tensor({1.0, 0.0, 0.0, 1.0}, torch::kFloat64)) == Approx(0.0).margin(1e-15));
  // Torus: points near +pi and near -pi are close.
  const auto p = torch::tensor({{3.1, 0.0}, {-3.1, 1.0}}, torch::kFloat64);
  const auto q = torch::tensor({{-3.1, 1.0}, {3.1, 0.0}}, torch::kFloat64);
  CHECK(torus_wasserstein2(p, q) == Approx(0.0).margin(1e-12));
  const auto r = torch::tensor({{-3.1, 0.0}, {3.1, 1.0}}, torch::kFloat64);
  CHECK(torus_wasserstein2(p, r) == Approx(2 * M_PI - 6.2).epsilon(1e-9));
  // Assignment is optimal: a shift of the whole sample costs exactly the shift.
  const auto s = torch::rand({200, 2}, gen, torch::kFloat64) - 0.5;
  CHECK(torus_wasserstein2(s, s.flip(0) + 0.1) == Approx(0.1 * std::sqrt(2.0)).epsilon(1e-9));
  // Basin free energies: 60% C7eq, 30% alpha_R, 10% alpha_L.
  std::vector<double> v;
  for (int i = 0; i < 60; ++i) v.insert(v.end(), {-2.5, 2.5});
  for (int i = 0; i < 30; ++i) v.insert(v.end(), {-1.2, -0.7});
  for (int i = 0; i < 10; ++i) v.insert(v.end(), {1.0, 0.5});
  const auto pp = torch::tensor(v, torch::kFloat64).reshape({100, 2});
  const auto b = basin_free_energies(pp, {}, 20, 1);
  CHECK(b[1].delta_f.value == Approx(-std::log(0.5)));
  CHECK(b[2].delta_f.value == Approx(-std::log(1.0 / 6.0)));
  CHECK(ramachandran_kl(pp, pp) == Approx(0.0).margin(1e-8));  // 1e-10 pseudo-counts
}

// ---- MD and the command line ----------------------------------------------------------------

TEST_CASE("md: an interrupted run resumes to the full trajectory", "[boltzmann][md]") {
  const auto mol = read_pdb(kPdb);
  MDOptions o;
  o.walkers = 2;
  o.frames = 30;
  o.equilibration_frames = 2;
  o.steps_per_frame = 50;
  o.quiet = true;
  const auto out = temp_path("md.h5");
  int calls = 0;
  auto rep = run_md(kSystem, mol.positions(), o, out, [&] { return ++calls > 1; });
  CHECK(rep.interrupted);
  CHECK(file_exists(out + ".part"));
  CHECK(!file_exists(out));
  rep = run_md(kSystem, mol.positions(), o, out);
  CHECK(rep.resumed);
  CHECK(!file_exists(out + ".part"));
  H5Reader r(out);
  r.expect_format("trajectory", 1);
  CHECK(r.shape("/positions") == std::vector<int64_t>{60, 22, 3});
  const auto e = r.read("/potential_energy");
  CHECK(torch::isfinite(e).all().item<bool>());
  CHECK(e.mean().item<double>() < 0);  // alanine dipeptide at 300 K: about -50 kJ/mol
  CHECK(r.read("/time")[29].item<double>() == Approx(30 * 50 * 0.001));
  // Same seed, same trajectory, bit for bit: uninterrupted, on one thread instead of two, equals
  // the interrupted-and-resumed run; another seed differs.
  o.threads = 1;
  const auto out2 = temp_path("md2.h5");
  run_md(kSystem, mol.positions(), o, out2);
  H5Reader r2(out2);
  CHECK(torch::equal(r.read("/positions"), r2.read("/positions")));
  CHECK(torch::equal(r.read("/kinetic_energy"), r2.read("/kinetic_energy")));
  o.seed = 2;
  const auto out3 = temp_path("md3.h5");
  run_md(kSystem, mol.positions(), o, out3);
  CHECK(!torch::equal(r.read("/positions"), H5Reader(out3).read("/positions")));
}

TEST_CASE("md: a run killed with SIGKILL resumes from its last checkpoint to the same trajectory", "[boltzmann][md]") {
  // The binary, killed without warning (no signal handler runs) once it has written a few
  // checkpoints, then started again with the same command: the .part file is intact (written
  // under a temporary name and renamed), the run resumes, and its trajectory equals an
  // uninterrupted run's bit for bit.
  const auto out = temp_path("md-kill.h5");
  std::filesystem::remove(out);
  std::filesystem::remove(out + ".part");
  const std::vector<std::string> args = {NFKIT_BINARY, "md", "--out", out, "--pdb", kPdb, "--system", kSystem,
                                         "--walkers", "2", "--frames", "400", "--steps-per-frame", "50",
                                         "--equilibration", "2", "--seed", "5", "--threads", "2",
                                         "--checkpoint-seconds", "0.05", "--quiet"};
  REQUIRE(run_and_sigkill(args, out + ".part", 2));  // after its second checkpoint
  CHECK(!file_exists(out));
  {
    H5Reader part(out + ".part");
    part.expect_format("md-state", 2);
    const auto done = part.attr_int("/", "frames_done");
    CHECK(done > 0);
    CHECK(done < 402);
  }
  CHECK(std::system(shell_command(args).c_str()) == 0);
  CHECK(!file_exists(out + ".part"));
  // The same run without interruption, in process.
  MDOptions o;
  o.walkers = 2;
  o.frames = 400;
  o.steps_per_frame = 50;
  o.equilibration_frames = 2;
  o.seed = 5;
  o.quiet = true;
  const auto whole = temp_path("md-whole.h5");
  run_md(kSystem, read_pdb(kPdb).positions(), o, whole);
  H5Reader a(out), b(whole);
  CHECK(torch::equal(a.read("/positions"), b.read("/positions")));
  CHECK(torch::equal(a.read("/kinetic_energy"), b.read("/kinetic_energy")));
}

TEST_CASE("md: the walkers hold the thermostat's temperature", "[boltzmann][md]") {
  // Kinetic temperature 2 <K> / (dof k_B) over 4 walkers x 40 ps (frames 0.05 ps apart,
  // velocities decorrelate in ~1 ps, so ~150 independent frames of dof = 63: the mean's
  // standard error is about 300 sqrt(2/63) / sqrt(150) = 4.3 K). A noise amplitude off by
  // sqrt(2) would give 150 or 600 K.
  const auto mol = read_pdb(kPdb);
  MDOptions o;
  o.walkers = 4;
  o.frames = 800;
  o.equilibration_frames = 20;
  o.steps_per_frame = 50;
  o.quiet = true;
  o.seed = 11;
  const auto out = temp_path("md-t.h5");
  run_md(kSystem, mol.positions(), o, out);
  H5Reader r(out);
  const double dof = static_cast<double>(r.attr_int("/", "degrees_of_freedom"));
  CHECK(dof == 63);  // 66 less the CMMotionRemover's 3
  const double T = 2.0 * r.read("/kinetic_energy").mean().item<double>() / (dof * kBoltzmann);
  CHECK(T == Approx(300.0).margin(15.0));
}

TEST_CASE("bg: run the pipeline on a tiny setting, cached stages, clear errors", "[boltzmann][cli]") {
  const auto dir = temp_path("runs") + "/ala2";  // parents are created
  auto run = [](std::vector<std::string> args) { return nfkit::test::run_nfkit(std::move(args)); };
  const std::vector<std::string> base = {"bg", "run", "--pdb", kPdb, "--system", kSystem,
      "--out", dir, "--frames", "150", "--steps-per-frame", "200", "--steps", "40",
      "--layers", "1", "--hidden", "32", "--eval-every", "20", "-n", "400", "--bootstrap", "10",
      "--w2-samples", "100", "--threads", "2", "--test-frames", "60"};
  auto [code, out, err] = run(base);
  INFO(err);
  REQUIRE(code == 0);
  CHECK(out.find("Kish ESS") != std::string::npos);
  CHECK(out.find("above it excluded") != std::string::npos);  // the raw E-W2's energy cut-off
  for (const char* f : {"md.h5", "model.h5", "samples.h5", "report.json", "ramachandran.png", "energy.png",
                        "log_weights.png", "model.training.png"})
    CHECK(file_exists(dir + "/" + f));
  H5Reader s(dir + "/samples.h5");
  for (const char* d : {"/x", "/log_q", "/u", "/log_w"}) CHECK(s.exists(d));
  // log_w = -u - log_q where finite.
  const auto lw = s.read("/log_w"), u = s.read("/u"), lq = s.read("/log_q");
  const auto fin = torch::isfinite(u);
  CHECK(torch::allclose(lw.masked_select(fin), (-u - lq).masked_select(fin)));
  auto [code2, out2, err2] = run(base);
  CHECK(code2 == 0);
  CHECK(err2.find("md.h5 exists with the same settings, skipping") != std::string::npos);
  CHECK(err2.find("model.h5 exists with the same settings, skipping") != std::string::npos);
  CHECK(err2.find("samples.h5 exists with the same settings, skipping") != std::string::npos);
  // Other training settings: the MD is reused, the model and the samples are made again.
  auto changed = base;
  changed[std::find(changed.begin(), changed.end(), "--steps") - changed.begin() + 1] = "30";
  auto [code5, out5, err5] = run(changed);
  INFO(err5);
  CHECK(code5 == 0);
  CHECK(err5.find("md.h5 exists with the same settings, skipping") != std::string::npos);
  CHECK(err5.find("model.h5 was made with other settings") != std::string::npos);
  CHECK(err5.find("samples.h5 was made with other settings") != std::string::npos);
  CHECK(load_flow(dir + "/model.h5").step == 30);
  // bg sample --smc: the samples file records how its weights were made; bad SMC options are
  // usage errors naming the option, and nothing is written.
  const auto smc_out = temp_path("smc-samples.h5");
  const std::vector<std::string> smc_base = {"bg", "sample", "--pdb", kPdb, "--system", kSystem, "--model",
                                             dir + "/model.h5", "-n", "200", "--out", smc_out, "--threads", "2"};
  auto with = [&](std::vector<std::string> extra) {
    auto a = smc_base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  auto [c6, o6, e6] = run(with({"--smc", "4", "--quiet"}));
  INFO(e6);
  REQUIRE(c6 == 0);
  CHECK(o6.find("SMC: 4 intermediate densities (mala)") != std::string::npos);
  const auto prov = nlohmann::json::parse(H5Reader(smc_out).attr_string("/", "provenance"));
  CHECK(prov["smc"]["steps"] == 4);
  CHECK(prov["smc"]["energy_evaluations"].get<int64_t>() > 200);
  std::remove(smc_out.c_str());
  for (const auto& [opt, val] : std::vector<std::pair<std::string, std::string>>{
           {"--smc", "-1"}, {"--smc-kernel", "gibbs"}, {"--smc-resample", "1.5"}, {"--smc-step", "0"},
           {"--smc-resampling", "stratified"}}) {
    auto bad = with({"--smc", "3", opt, val});
    if (opt == "--smc") bad = with({"--smc=" + val});
    auto [cb, ob, eb] = run(bad);
    INFO(opt << " " << eb);
    CHECK(cb == 2);
    CHECK(std::count(eb.begin(), eb.end(), '\n') == 1);
    CHECK(eb.find(opt) != std::string::npos);
    CHECK_FALSE(file_exists(smc_out));
  }
  // Errors: a missing trajectory (runtime, 1) and a System of another molecule (usage, 2).
  auto [c3, o3, e3] = run({"bg", "train", "--pdb", kPdb, "--system", kSystem, "--md", "/nonexistent.h5", "--out", temp_path("m.h5")});
  CHECK(c3 == 1);
  CHECK(std::count(e3.begin(), e3.end(), '\n') == 1);
  const auto two = write_text("two.pdb",
      "ATOM      1  C   ACE A   1       0.000   0.000   0.000  1.00  0.00           C\n"
      "ATOM      2  O   ACE A   1       1.200   0.000   0.000  1.00  0.00           O\n");
  auto [c4, o4, e4] = run({"md", "--pdb", two, "--system", kSystem, "--out", temp_path("md2.h5")});
  CHECK(c4 == 2);
  CHECK(e4.find("has 22 atoms, but") != std::string::npos);
}

TEST_CASE("generators: log q of samples equals log_prob, internal and Cartesian", "[boltzmann]") {
  const auto mol = read_pdb(kPdb);
  std::vector<bool> heavy;
  for (const auto& a : mol.atoms) heavy.push_back(a.element != "H");
  const auto z = zmatrix_from_bonds(mol.size(), guess_bonds(mol), heavy);
  const auto x = ala2_batch(300, 0.004, 9);
  // The canonical Cartesian coordinates: log|det dq/dc| by autograd equals the bookkeeping.
  {
    const auto cc = to_canonical(z, x.narrow(0, 0, 3));
    auto c = cc.c.clone().requires_grad_(true);
    torch::Tensor xc;
    from_canonical(z, c, &xc);
    const auto red = to_internal(z, xc);
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < red.q.size(1); ++i)
      rows.push_back(torch::autograd::grad({red.q.select(1, i).sum()}, {c}, {}, true)[0]);
    const auto J = torch::stack(rows, 1);
    const auto logabs = std::get<1>(torch::linalg_slogdet(J));
    CHECK(torch::allclose(logabs, red.logdet.detach() - cc.logdet, 1e-8, 1e-8));
    CHECK((xc - from_internal(z, to_internal(z, x.narrow(0, 0, 3)).q).x).abs().max().item<double>() < 1e-9);
  }
  for (const std::string coords : {"internal", "cartesian"}) {
    torch::manual_seed(3);
    std::shared_ptr<Flow> flow;
    if (coords == "internal") {
      flow = build_ic_flow(z, to_internal(z, x).q, ICFlowRecipe{1, 16, 1, 4, 5.0, 1});
    } else {
      FlowRecipe r;
      r.dim = 60;
      r.layers = 2;
      r.hidden = 16;
      flow = build_flow(r, to_canonical(z, x).c);
    }
    flow->to(torch::kFloat64);
    perturb_parameters(*flow, 0.02, 4);
    BoltzmannGenerator g(z, flow, coords);
    auto [xs, lq] = g.sample(64);
    const auto fin = torch::isfinite(lq);
    CHECK(fin.sum().item<int64_t>() > 32);
    torch::NoGradGuard ng;
    const auto back = g.log_prob(xs);
    INFO(coords);
    CHECK(torch::allclose(back.masked_select(fin), lq.masked_select(fin), 1e-6, 1e-6));
  }
}

TEST_CASE("bootstrap: moving blocks give honest errors of a correlated series", "[boltzmann]") {
  // AR(1) with phi = 0.9: the standard error of the mean of n points is
  // sqrt((1 + phi)/(1 - phi)/n) = 0.0308 for n = 20000; Efron's bootstrap says sqrt(1/n) = 0.0071.
  torch::manual_seed(12);
  const int64_t n = 20000;
  auto e = torch::randn({n}, torch::kFloat64);
  std::vector<double> x(n);
  x[0] = e[0].item<double>();
  for (int64_t t = 1; t < n; ++t) x[t] = 0.9 * x[t - 1] + std::sqrt(1 - 0.81) * e[t].item<double>();
  auto xt = torch::tensor(x, torch::kFloat64);
  auto mean_of = [&](const torch::Tensor& idx) { return xt.index_select(0, idx).mean().item<double>(); };
  const double iid = nfkit::bootstrap(n, mean_of, 200, 3).error;
  const double blocked = nfkit::bootstrap(n, mean_of, 200, 3, n / 20).error;
  INFO("iid " << iid << ", blocked " << blocked);
  CHECK(iid == Approx(0.0071).epsilon(0.25));
  // 20 blocks: the error of an error from 20 blocks is ~16%, plus the block-length bias.
  CHECK(blocked == Approx(0.0308).epsilon(0.35));
}

// ---- the pipeline as library calls ------------------------------------------------------------

namespace {

// A user's energy that cannot evaluate some configurations: the real OpenMM energy, except for
// rows marked by their coordinates (about 10%), which give NaN alone and make a whole batch
// throw when half of them are present.
class FlakyEnergy : public Energy {
 public:
  explicit FlakyEnergy(Energy& inner) : inner_(inner) {}
  int64_t dim() const override { return inner_.dim(); }
  std::string name() const override { return "flaky " + inner_.name(); }
  static torch::Tensor marked(const torch::Tensor& x) {
    const auto f = x.sum(1) * 1e4;  // (single coordinates can be 0 in the canonical frame)
    return (f - f.floor()) < 0.1;
  }
  torch::Tensor evaluate(const torch::Tensor& x, torch::Tensor* forces = nullptr) override {
    const auto m = marked(x);
    if (x.size(0) > 1 && m.any().item<bool>()) throw std::runtime_error("cannot evaluate this batch");
    auto u = inner_.evaluate(x, forces);
    return torch::where(m, torch::full_like(u, NAN), u);
  }

 private:
  Energy& inner_;
};

}  // namespace

TEST_CASE("pipeline: train, sample and evaluate by library calls, failed energies get zero weight", "[boltzmann]") {
  const auto mol = read_pdb(kPdb);
  const auto z = zmatrix_for(mol);
  MDOptions mo;
  mo.frames = 100;
  mo.steps_per_frame = 50;
  mo.quiet = true;
  const auto md_path = temp_path("lib-md.h5");
  run_md(kSystem, mol.positions(), mo, md_path);
  const auto md = read_trajectory(md_path, mol.size());
  CHECK(md.x.size(0) == 200);
  // A trajectory of another molecule: a one-line runtime error naming the file.
  try {
    read_trajectory(md_path, 10);
    FAIL("no error");
  } catch (const RuntimeError& e) {
    CHECK(std::string(e.what()).find("another molecule") != std::string::npos);
  }

  BGTrainOptions o;
  o.recipe.layers = 1;
  o.recipe.hidden = 16;
  const auto ckpt = temp_path("lib.ckpt");
  o.trainer.steps(20).batch_size(64).eval_every(10).quiet(true).checkpoint_path(ckpt).checkpoint_every(5);
  o.reverse_weight = 0.5;
  CHECK_THROWS_AS(train_generator(z, md, nullptr, o, temp_path("lib-model.h5")), UsageError);
  o.reverse_weight = 0.0;
  const auto model = temp_path("lib-model.h5");
  const auto tr = train_generator(z, md, nullptr, o, model);
  CHECK(tr.train.steps_done == 20);
  CHECK(tr.n_train + tr.n_val == 180);  // 10% of each walker's frames held out
  CHECK(!file_exists(ckpt));  // the model file replaced it
  auto bg = load_generator(model);

  OpenMMEnergy openmm(kSystem, 300.0);
  FlakyEnergy flaky(openmm);
  BGSampleOptions so;
  so.n = 600;
  so.batch = 200;
  so.quiet = true;
  const auto rep = sample_generator(bg, flaky, so);
  const auto& s = rep.samples;
  const auto m = FlakyEnergy::marked(s.x);
  REQUIRE(m.sum().item<int64_t>() > 20);
  CHECK(rep.failed_energies == m.sum().item<int64_t>());
  CHECK(torch::isinf(s.u.masked_select(m)).all().item<bool>());
  CHECK((s.log_w.masked_select(m) == -INFINITY).all().item<bool>());
  CHECK(std::isfinite(rep.ess_fraction));
  // Elsewhere the weights are -u - log q with the real energy.
  const auto ok = ~m & torch::isfinite(s.u);
  CHECK(torch::allclose(s.u.masked_select(ok), openmm.evaluate(s.x).masked_select(ok)));
  CHECK(torch::allclose(s.log_w.masked_select(ok), (-s.u - s.log_q).masked_select(ok)));

  // SMC from the same generator (Sequential Boltzmann Generators): the flaky energy's failures
  // are dropped and counted and the run goes on; every evaluated row is counted; the population
  // comes back in the canonical frame with log q and u of the returned points.
  BGSampleOptions smc_o = so;
  smc_o.smc_steps = 5;
  const auto rs = sample_generator(bg, flaky, smc_o);
  REQUIRE(rs.smc.is_object());
  const int64_t kept = rs.samples.x.size(0);
  CHECK(rs.smc["dropped_infinite"].get<int64_t>() + kept == 600);
  CHECK(rs.smc["dropped_infinite"].get<int64_t>() > 20);
  CHECK(rs.smc["energy_evaluations"].get<int64_t>() == 600 + 5 * kept);
  CHECK(rs.smc["accept"].size() == 5);
  CHECK(torch::isfinite(rs.samples.log_w).all().item<bool>());
  CHECK(torch::allclose(rs.samples.log_q, bg.log_prob(rs.samples.x).detach(), 1e-6, 1e-6));
  CHECK(torch::allclose(rs.samples.u, openmm.evaluate(rs.samples.x), 1e-6, 1e-6));
  const auto canon = bg.coordinate_map().from_flow(bg.coordinate_map().to_flow(rs.samples.x).value).value;
  CHECK(torch::allclose(canon, rs.samples.x, 1e-9, 1e-9));

  // Samples file round trip; a file without /u is refused naming it.
  const auto sp = temp_path("lib-samples.h5");
  write_samples(sp, s);
  const auto back = read_samples(sp, mol.size());
  CHECK(torch::equal(back.log_w, s.log_w));
  const auto no_u = temp_path("no-u.h5");
  {
    H5Writer w(no_u, "samples", 1);
    w.write("/x", s.x);
    w.write("/log_q", s.log_q);
    w.write("/log_w", s.log_w);
    w.commit();
  }
  try {
    read_samples(no_u);
    FAIL("no error");
  } catch (const RuntimeError& e) {
    CHECK(std::string(e.what()).find("has no /u") != std::string::npos);
  }

  BGEvalOptions eo;
  eo.bootstrap = 5;
  eo.w2_samples = 50;
  eo.w2_repeat_samples = 30;
  eo.clip_top = 0.01;
  eo.tica_lag = 20;
  const auto ev = evaluate_generator(mol, s, md, eo, &bg, 0.1);
  // Chirality counted on the samples (exclude: zero weight), none in the MD.
  const auto wrong = ~chirality_ok(s.x, stereocentres(mol));
  CHECK(ev.wrong_chirality == wrong.sum().item<int64_t>());
  CHECK(ev.reference_wrong_chirality == 0);
  CHECK((ev.log_w.masked_select(wrong) == -INFINITY).all().item<bool>());
  // --clip-top: 1% of the finite log-weights (after exclusion) dropped.
  const auto lw_excl = torch::where(wrong, torch::full_like(s.log_w, -INFINITY), s.log_w);
  CHECK(ev.clipped_top == static_cast<int64_t>(std::floor(0.01 * torch::isfinite(lw_excl).sum().item<double>())));
  CHECK(torch::isfinite(ev.log_w).sum().item<int64_t>() ==
        torch::isfinite(lw_excl).sum().item<int64_t>() - ev.clipped_top);
  CHECK(ev.tica_error.empty());
  CHECK(ev.tica_lag == 20);
  CHECK(ev.tica_w2_raw > 0);
  CHECK(ev.tica_w2_raw_repeats.value > 0);
  CHECK(ev.w2_repeat_samples == 30);
  CHECK(ev.n_samples == 600);
  CHECK(ev.ess_fraction == Approx(rep.ess_fraction));
  CHECK(ev.infinite_energies >= rep.failed_energies);
  REQUIRE(ev.held_out_nll);
  CHECK(ev.held_out_nll->frames == 20);
  CHECK(ev.t_w2_samples == 50);
  const auto j = ev.to_json();
  CHECK(j["md"]["basins"].size() == 3);
  CHECK(j["held_out_nll"]["frames"] == 20);
}

TEST_CASE("chirality: alanine's CA, mirror images flip it and keep the energy", "[boltzmann]") {
  const auto mol = read_pdb(kPdb);
  const auto c = stereocentres(mol);
  REQUIRE(c.size() == 1);  // ACE and NME have no CB; ALA's CA is the one stereocentre
  CHECK(c[0].name == "ALA2:CA");
  const auto x = mol.positions().reshape({1, -1});
  CHECK(chirality_ok(x, c).item<bool>());
  const auto m = mirror_image(x);
  CHECK(!chirality_ok(m, c).item<bool>());
  CHECK(torch::equal(mirror_image(m), x));
  // phi and psi change sign in the mirror; force-field energies do not change.
  const auto d = backbone_dihedrals(mol);
  CHECK(torch::allclose(ramachandran(m, d), -ramachandran(x, d)));
  OpenMMEnergy e(kSystem, 300.0);
  CHECK(e.evaluate(m).item<double>() == Approx(e.evaluate(x).item<double>()).epsilon(1e-9));
}

TEST_CASE("exact W2 in R^d: a translated sample is |shift| away", "[boltzmann]") {
  torch::manual_seed(3);
  const auto a = torch::randn({60, 2}, torch::kFloat64);
  const auto shift = torch::tensor({0.3, -0.4}, torch::kFloat64);
  CHECK(wasserstein2(a, a + shift) == Approx(0.5).epsilon(1e-9));
  CHECK(wasserstein2(a, a.flip(0)) == Approx(0.0).margin(1e-12));  // a permutation
}

TEST_CASE("TICA: AR(1) processes give their lag autocorrelations, slowest first", "[boltzmann]") {
  // Two walkers of a slow AR(1) s (rho 0.99) and a fast one f (rho 0.5), observed through the
  // mixed features (s + f, s - f, 1): at lag 10 the eigenvalues are 0.99^10 and 0.5^10 ~ 0, the
  // slow component is s, and the constant feature is dropped.
  torch::manual_seed(5);
  const int64_t T = 20000;
  std::vector<torch::Tensor> feats, ss;
  for (int w = 0; w < 2; ++w) {
    std::vector<double> s(T), f(T);
    const auto e = torch::randn({T, 2}, torch::kFloat64);
    auto E = e.accessor<double, 2>();
    s[0] = E[0][0] / std::sqrt(1 - 0.99 * 0.99);
    f[0] = E[0][1];
    for (int64_t t = 1; t < T; ++t) {
      s[t] = 0.99 * s[t - 1] + E[t][0];
      f[t] = 0.5 * f[t - 1] + E[t][1];
    }
    const auto S = torch::tensor(s, torch::kFloat64), F = torch::tensor(f, torch::kFloat64);
    feats.push_back(torch::stack({S + F, S - F, torch::ones_like(S)}, 1));
    ss.push_back(S);
  }
  const auto X = torch::cat(feats);
  const auto walker = torch::cat({torch::zeros({T}, torch::kInt64), torch::ones({T}, torch::kInt64)});
  const auto tica = fit_tica(X, walker, 10, 2);
  REQUIRE(tica.eigenvalues.size(0) == 2);
  CHECK(tica.eigenvalues[0].item<double>() == Approx(std::pow(0.99, 10)).margin(0.03));
  CHECK(tica.eigenvalues[1].item<double>() == Approx(0.0).margin(0.03));
  const auto slow = tica.project(X).select(1, 0), s = torch::cat(ss);
  const double corr = ((slow - slow.mean()) * (s - s.mean())).mean().item<double>() /
                      (slow.std().item<double>() * s.std().item<double>());
  CHECK(std::abs(corr) > 0.99);
  CHECK(tica.project(X).select(1, 0).var().item<double>() == Approx(1.0).margin(0.02));  // unit variance
}

TEST_CASE("coordinate maps: registry, one log-density correction both ways, a user's map", "[boltzmann]") {
  const auto mol = read_pdb(kPdb);
  const auto z = zmatrix_for(mol);
  const auto x = mol.positions().reshape({1, -1}).repeat({3, 1}) +
                 0.01 * torch::randn({3, 66}, torch::kFloat64);
  for (const auto& name : {"internal", "cartesian"}) {
    INFO(name);
    const auto map = make_coordinate_map(name, z);
    CHECK(map->name() == name);
    const auto fwd = map->to_flow(x);
    CHECK(fwd.value.size(1) == 60);
    const auto back = map->from_flow(fwd.value);
    CHECK(torch::allclose(back.logdet, fwd.logdet, 1e-9, 1e-9));
    // x comes back up to the rigid motion both maps drop: the internal coordinates agree.
    CHECK(torch::allclose(to_internal(z, back.value).q, to_internal(z, x).q, 1e-8, 1e-8));
  }
  try {
    make_coordinate_map("polar", z);
    FAIL("no error");
  } catch (const UsageError& e) {
    CHECK(std::string(e.what()).find("expected one of cartesian, centred, internal") != std::string::npos);
  }
  // A map registered by a user serves generators and --coordinates like the built-in ones.
  struct Doubled : CoordinateMap {
    using CoordinateMap::CoordinateMap;
    std::string name() const override { return "internal-x2"; }
    Result to_flow(const torch::Tensor& xx) const override {
      auto r = to_internal(z_, xx);
      return {2.0 * r.q, r.logdet - 60.0 * std::log(2.0)};
    }
    Result from_flow(const torch::Tensor& c) const override {
      auto r = from_internal(z_, 0.5 * c);
      return {r.x, -r.logdet - 60.0 * std::log(2.0)};
    }
    std::shared_ptr<Flow> build_flow(const torch::Tensor& c, const ICFlowRecipe& rec) const override {
      return build_ic_flow(z_, 0.5 * c, rec);  // not a flow of the doubled coordinates; shape only
    }
  };
  register_coordinate_map("internal-x2", [](const ZMatrix& zz) { return std::make_shared<Doubled>(zz); });
  const auto names = coordinate_map_names();
  CHECK(std::find(names.begin(), names.end(), "internal-x2") != names.end());
  CHECK_THROWS_WITH(register_coordinate_map("", [](const ZMatrix& zz) { return std::make_shared<Doubled>(zz); }),
                    Catch::Contains("register_coordinate_map: needs a name and a factory"));
  BGTrainOptions o;
  o.coordinates = "internal-x2";
  CHECK_NOTHROW(o.check());
  const auto m = make_coordinate_map("internal-x2", z);
  const auto f = m->to_flow(x);
  CHECK(torch::allclose(m->from_flow(f.value).logdet, f.logdet, 1e-9, 1e-9));
}

TEST_CASE("internal-coordinate transform: the generic property test, restored through the registry", "[boltzmann][transforms]") {
  const auto types = transform_types();
  CHECK(std::find(types.begin(), types.end(), "internal_coordinates") != types.end());
  const auto z = zmatrix_for(read_pdb(kPdb));
  auto t = std::make_shared<InternalCoordinateTransform>(z);
  t->to(torch::kFloat64);
  check_transform_properties(t, ala2_batch(6, 0.01, 3), {}, 1e-9, 1e-6);
}

TEST_CASE("resume: bg train killed with SIGKILL resumes from its checkpoint to the same generator", "[boltzmann][cli]") {
  // As for flow train (test_trainer.cpp): the binary killed without warning after its third
  // checkpoint, then the same command again, ends with the weights of an uninterrupted run,
  // bit for bit (one thread, same seed).
  const auto md = temp_path("kill-md.h5");
  MDOptions o;
  o.walkers = 2;
  o.frames = 100;
  o.steps_per_frame = 20;
  o.quiet = true;
  run_md(kSystem, read_pdb(kPdb).positions(), o, md);
  auto args = [&](const std::string& out) {
    return std::vector<std::string>{NFKIT_BINARY, "bg", "train", "--pdb", kPdb, "--system", kSystem, "--md", md,
                                    "--out", out, "--layers", "1", "--hidden", "8", "--steps", "400",
                                    "--checkpoint-every", "10", "--eval-every", "100", "--batch-size", "32",
                                    "--seed", "3", "--threads", "1", "--quiet"};
  };
  const auto killed = temp_path("bg-killed.h5"), whole = temp_path("bg-whole.h5");
  REQUIRE(run_and_sigkill(args(killed), killed + ".ckpt", 3));
  CHECK(!file_exists(killed));
  REQUIRE(file_exists(killed + ".ckpt"));
  CHECK(nlohmann::json::parse(H5Reader(killed + ".ckpt").attr_string("/trainer", "state")).at("step").get<int64_t>() < 400);
  CHECK(std::system(shell_command(args(killed)).c_str()) == 0);
  CHECK(!file_exists(killed + ".ckpt"));
  CHECK(std::system(shell_command(args(whole)).c_str()) == 0);
  std::string what;
  const bool same = same_datasets(killed, whole, &what);
  INFO(what);
  CHECK(same);
}
