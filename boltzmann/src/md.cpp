#include "nfkit/boltzmann/md.h"

#include <OpenMM.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/progress.h"
#include "nfkit/core/runtime.h"
#include "nfkit/physics/openmm_energy.h"

namespace OpenMM {
// The seed setter of the Reference platform's process-wide random generator, exported by
// libOpenMM (openmm/reference/SimTKOpenMMUtilities.h declares it, but that header includes
// sfmt/SFMT.h, which Debian does not install).
class SimTKOpenMMUtilities {
 public:
  static void setRandomNumberSeed(uint32_t seed);
};
}  // namespace OpenMM

namespace nfkit {

nlohmann::json MDOptions::to_json() const {
  return {{"temperature", temperature}, {"friction", friction}, {"timestep", timestep},
          {"walkers", walkers}, {"steps_per_frame", steps_per_frame}, {"frames", frames},
          {"equilibration_frames", equilibration_frames}, {"platform", platform},
          {"seed", seed}};
}

namespace {

// The LangevinMiddle splitting (Zhang, Liu, Jiang, Qi & Shi, J. Phys. Chem. A 2019) for one
// time step dt, as OpenMM's LangevinMiddleIntegrator does it:
//   v <- v + dt f / m;  x <- x + dt/2 v;  v <- a v + sqrt((1 - a^2) kT / m) xi;  x <- x + dt/2 v
// with a = exp(-gamma dt) and xi ~ N(0, 1) per degree of freedom. Written as a CustomIntegrator
// because OpenMM's own Langevin integrators draw xi from a process-wide generator on the
// Reference platform (walkers in threads would share and race on it); here xi comes from the
// walker's own seeded generator, set before every step (about 30% slower than the native
// integrator for alanine dipeptide, and bitwise reproducible).
std::unique_ptr<OpenMM::CustomIntegrator> langevin_middle(double temperature, double friction,
                                                          double dt) {
  auto ci = std::make_unique<OpenMM::CustomIntegrator>(dt);
  const double a = std::exp(-friction * dt);
  ci->addGlobalVariable("a", a);
  ci->addGlobalVariable("b", std::sqrt(1.0 - a * a));
  ci->addGlobalVariable("kT", 0.0083144626 * temperature);  // kJ/mol
  ci->addPerDofVariable("xi", 0.0);  // index 0: the noise of the next step
  ci->addPerDofVariable("x1", 0.0);
  ci->addUpdateContextState();
  ci->addComputePerDof("v", "v + dt*f/m");
  ci->addConstrainVelocities();
  ci->addComputePerDof("x", "x + 0.5*dt*v");
  ci->addComputePerDof("v", "a*v + b*sqrt(kT/m)*xi");
  ci->addComputePerDof("x", "x + 0.5*dt*v");
  ci->addComputePerDof("x1", "x");
  ci->addConstrainPositions();
  ci->addComputePerDof("v", "v + (x-x1)/dt");
  return ci;
}

struct Walker {
  std::unique_ptr<OpenMM::Integrator> integrator;
  OpenMM::CustomIntegrator* custom = nullptr;  // the CustomIntegrator path (not Reference)
  std::unique_ptr<OpenMM::Context> context;
  std::mt19937_64 rng;
  std::vector<OpenMM::Vec3> xi;
  std::vector<double> positions;  // frames * N * 3
  std::vector<double> energies;   // frames (potential)
  std::vector<double> kinetic;    // frames

  void step(int64_t n) {
    if (!custom) {
      integrator->step(static_cast<int>(n));
      return;
    }
    std::normal_distribution<double> normal;
    for (int64_t s = 0; s < n; ++s) {
      for (auto& v : xi) v = OpenMM::Vec3(normal(rng), normal(rng), normal(rng));
      custom->setPerDofVariable(0, xi);
      custom->step(1);
    }
  }
  // m frames of `steps` steps: positions, potential and kinetic energies appended to `out`
  // (m * (3N + 2) values), then the final positions and velocities (6N).
  void run_frames(int64_t m, int64_t steps, int64_t N, std::vector<double>& out) {
    for (int64_t f = 0; f < m; ++f) {
      step(steps);
      const auto st = context->getState(OpenMM::State::Positions | OpenMM::State::Energy);
      const auto& p = st.getPositions();
      for (int64_t i = 0; i < N; ++i)
        for (int d = 0; d < 3; ++d) out.push_back(p[i][d]);
      out.push_back(st.getPotentialEnergy());
      out.push_back(st.getKineticEnergy());
    }
    const auto st = context->getState(OpenMM::State::Positions | OpenMM::State::Velocities);
    for (const auto* v : {&st.getPositions(), &st.getVelocities()})
      for (int64_t i = 0; i < N; ++i)
        for (int d = 0; d < 3; ++d) out.push_back((*v)[i][d]);
  }
  // Takes in the output of run_frames (from this process or a child).
  void absorb(const std::vector<double>& out, int64_t m, int64_t N) {
    const double* p = out.data();
    for (int64_t f = 0; f < m; ++f) {
      positions.insert(positions.end(), p, p + 3 * N);
      energies.push_back(p[3 * N]);
      kinetic.push_back(p[3 * N + 1]);
      p += 3 * N + 2;
    }
    std::vector<OpenMM::Vec3> x(N), v(N);
    for (int64_t i = 0; i < N; ++i) x[i] = OpenMM::Vec3(p[3 * i], p[3 * i + 1], p[3 * i + 2]);
    p += 3 * N;
    for (int64_t i = 0; i < N; ++i) v[i] = OpenMM::Vec3(p[3 * i], p[3 * i + 1], p[3 * i + 2]);
    context->setPositions(x);
    context->setVelocities(v);
  }
};

// On the Reference platform the walkers of a block run in forked child processes, each with its
// own copy of OpenMM's process-wide random generator, reseeded for (walker, block); OpenMM's
// native LangevinMiddleIntegrator then keeps its full speed and the run stays bitwise
// reproducible. A child only steps its Context and writes doubles to a pipe (no torch, no
// HDF5), then leaves with _exit.
void run_block_forked(std::vector<Walker>& walkers, int64_t w0, int64_t w1, int64_t m,
                      int64_t steps, int64_t N, const std::vector<uint32_t>& seeds) {
  struct Child {
    pid_t pid = -1;
    int fd = -1;
  };
  std::vector<Child> kids;
  const size_t expect = static_cast<size_t>(m * (3 * N + 2) + 6 * N);
  for (int64_t w = w0; w < w1; ++w) {
    int fds[2];
    if (::pipe(fds) != 0) runtime_error("md", std::string("cannot create a pipe: ") + std::strerror(errno));
    const pid_t pid = ::fork();
    if (pid < 0) runtime_error("md", std::string("cannot fork a walker: ") + std::strerror(errno));
    if (pid == 0) {
      ::close(fds[0]);
      int code = 0;
      try {
        OpenMM::SimTKOpenMMUtilities::setRandomNumberSeed(seeds[static_cast<size_t>(w - w0)]);
        std::vector<double> out;
        out.reserve(expect);
        walkers[static_cast<size_t>(w)].run_frames(m, steps, N, out);
        const char* b = reinterpret_cast<const char*>(out.data());
        size_t left = out.size() * sizeof(double);
        while (left > 0) {
          const ssize_t k = ::write(fds[1], b, left);
          if (k <= 0) {
            code = 3;
            break;
          }
          b += k;
          left -= static_cast<size_t>(k);
        }
      } catch (...) {
        code = 2;
      }
      ::close(fds[1]);
      ::_exit(code);
    }
    ::close(fds[1]);
    kids.push_back({pid, fds[0]});
  }
  std::string failure;
  for (size_t c = 0; c < kids.size(); ++c) {
    std::vector<double> out(expect);
    char* b = reinterpret_cast<char*>(out.data());
    size_t got = 0, want = expect * sizeof(double);
    while (got < want) {
      const ssize_t k = ::read(kids[c].fd, b + got, want - got);
      if (k <= 0) break;
      got += static_cast<size_t>(k);
    }
    ::close(kids[c].fd);
    int status = 0;
    ::waitpid(kids[c].pid, &status, 0);
    if (got != want || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      if (failure.empty())
        failure = "walker " + std::to_string(w0 + static_cast<int64_t>(c)) + " failed in its process (exit status " +
                  std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")";
      continue;
    }
    walkers[static_cast<size_t>(w0) + c].absorb(out, m, N);
  }
  if (!failure.empty()) runtime_error("md", failure);
}

}  // namespace

MDReport run_md(const std::string& system_xml, const torch::Tensor& positions,
                const MDOptions& o, const std::string& out,
                const std::function<bool()>& should_stop) {
  check_positive("md", "temperature", o.temperature);
  check_positive("md", "friction", o.friction);
  check_positive("md", "timestep", o.timestep);
  check_positive_int("md", "walkers", o.walkers);
  check_positive_int("md", "steps_per_frame", o.steps_per_frame);
  check_positive_int("md", "frames", o.frames);
  check_nonnegative("md", "equilibration_frames", static_cast<double>(o.equilibration_frames));
  check_writable(out);
  auto system = read_openmm_system(system_xml);
  const int64_t N = system->getNumParticles();
  // Degrees of freedom of the kinetic temperature 2 K / (dof k_B): 3N, less constraints, less 3
  // when a CMMotionRemover holds the centre of mass still.
  int64_t dof = 3 * N - system->getNumConstraints();
  for (int i = 0; i < system->getNumForces(); ++i)
    if (dynamic_cast<const OpenMM::CMMotionRemover*>(&system->getForce(i))) dof -= 3;
  check_dim("md", "positions", positions, 2);
  if (positions.size(0) != N || positions.size(1) != 3)
    usage_error("md", "the structure has " + std::to_string(positions.size(0)) +
                          " atoms, but " + system_xml + " has " + std::to_string(N));
  std::map<std::string, std::string> props;
  OpenMM::Platform& platform = openmm_platform(o.platform, &props);

  const int64_t W = o.walkers;
  const int64_t total_frames = o.equilibration_frames + o.frames;  // per walker
  std::vector<Walker> walkers(W);
  const auto pos0 = positions.to(torch::kFloat64).contiguous();
  std::vector<OpenMM::Vec3> start(N);
  for (int64_t i = 0; i < N; ++i)
    start[i] = OpenMM::Vec3(pos0[i][0].item<double>(), pos0[i][1].item<double>(),
                            pos0[i][2].item<double>());
  for (int64_t w = 0; w < W; ++w) {
    auto& wk = walkers[w];
    if (o.platform == "Reference") {
      auto li = std::make_unique<OpenMM::LangevinMiddleIntegrator>(o.temperature, o.friction, o.timestep);
      li->setRandomNumberSeed(1);  // reseeded per (walker, block) in the walker's process
      wk.integrator = std::move(li);
    } else {
      auto ci = langevin_middle(o.temperature, o.friction, o.timestep);
      wk.custom = ci.get();
      wk.integrator = std::move(ci);
      wk.xi.resize(N);
    }
    wk.context = std::make_unique<OpenMM::Context>(*system, *wk.integrator, platform, props);
  }

  // Resume or start.
  const std::string part = out + ".part";
  int64_t done = 0;  // frames per walker done (equilibration included)
  MDReport rep;
  if (file_exists(part)) {
    H5Reader r(part);
    r.expect_format("md-state", 2);
    if (nlohmann::json::parse(r.attr_string("/", "options")) != o.to_json())
      usage_error("md", part + " was written with other options; delete it or rerun with the same options");
    done = r.attr_int("/", "frames_done");
    const auto P = r.read("/positions").contiguous();    // [W, done, N, 3]
    const auto E = r.read("/potential_energy").contiguous();  // [W, done]
    const auto K = r.read("/kinetic_energy").contiguous();    // [W, done]
    const auto SP = r.read("/state_positions").contiguous();  // [W, N, 3]
    const auto SV = r.read("/state_velocities").contiguous();
    for (int64_t w = 0; w < W; ++w) {
      auto& wk = walkers[w];
      const double* pp = P.data_ptr<double>() + w * done * N * 3;
      wk.positions.assign(pp, pp + done * N * 3);
      const double* ep = E.data_ptr<double>() + w * done;
      wk.energies.assign(ep, ep + done);
      const double* kp = K.data_ptr<double>() + w * done;
      wk.kinetic.assign(kp, kp + done);
      std::vector<OpenMM::Vec3> p(N), v(N);
      const double* sp = SP.data_ptr<double>() + w * N * 3;
      const double* sv = SV.data_ptr<double>() + w * N * 3;
      for (int64_t i = 0; i < N; ++i) {
        p[i] = OpenMM::Vec3(sp[3 * i], sp[3 * i + 1], sp[3 * i + 2]);
        v[i] = OpenMM::Vec3(sv[3 * i], sv[3 * i + 1], sv[3 * i + 2]);
      }
      wk.context->setPositions(p);
      wk.context->setVelocities(v);
    }
    rep.resumed = true;
  } else {
    for (int64_t w = 0; w < W; ++w) {
      auto& wk = walkers[w];
      wk.context->setPositions(start);
      OpenMM::LocalEnergyMinimizer::minimize(*wk.context, 1.0, 500);
      wk.context->setVelocitiesToTemperature(o.temperature,
                                             static_cast<int>(derive_seed(o.seed, 21, w) & 0x7fffffff));
    }
  }

  auto save_part = [&]() {
    H5Writer wr(part, "md-state", 2);
    wr.set_attr("/", "options", o.to_json().dump());
    wr.set_attr("/", "frames_done", done);
    auto P = torch::empty({W, done, N, 3}, torch::kFloat64);
    auto E = torch::empty({W, done}, torch::kFloat64);
    auto K = torch::empty({W, done}, torch::kFloat64);
    auto SP = torch::empty({W, N, 3}, torch::kFloat64);
    auto SV = torch::empty({W, N, 3}, torch::kFloat64);
    for (int64_t w = 0; w < W; ++w) {
      auto& wk = walkers[w];
      if (done > 0) {
        std::copy(wk.positions.begin(), wk.positions.end(), P[w].data_ptr<double>());
        std::copy(wk.energies.begin(), wk.energies.end(), E[w].data_ptr<double>());
        std::copy(wk.kinetic.begin(), wk.kinetic.end(), K[w].data_ptr<double>());
      }
      const auto st = wk.context->getState(OpenMM::State::Positions | OpenMM::State::Velocities);
      const auto& p = st.getPositions();
      const auto& v = st.getVelocities();
      double* sp = SP.data_ptr<double>() + w * N * 3;
      double* sv = SV.data_ptr<double>() + w * N * 3;
      for (int64_t i = 0; i < N; ++i)
        for (int d = 0; d < 3; ++d) {
          sp[3 * i + d] = p[i][d];
          sv[3 * i + d] = v[i][d];
        }
    }
    wr.write("/positions", P);
    wr.write("/potential_energy", E);
    wr.write("/kinetic_energy", K);
    wr.write("/state_positions", SP);
    wr.write("/state_velocities", SV);
    wr.commit();
  };

  const int threads = o.threads > 0 ? o.threads : hardware_threads();
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(total_frames / 100 + 1, 50));
  ProgressOptions po;
  po.quiet = o.quiet;
  Progress progress("md", total_frames, po);
  progress.set_start(done);
  const auto t0 = std::chrono::steady_clock::now();
  auto last_save = t0;
  int64_t blocks_run = 0;
  while (done < total_frames) {
    if (should_stop && should_stop()) {
      save_part();
      rep.interrupted = true;
      break;
    }
    const int64_t m = std::min(block, total_frames - done);
    // A fresh random stream per block, keyed by (seed, walker, frames done): an interrupted and
    // resumed run draws the same noise as an uninterrupted one.
    auto block_seed = [&](int64_t w) { return derive_seed(o.seed, 22 + static_cast<uint64_t>(w), done); };
    auto work = [&](int64_t w) {
      auto& wk = walkers[w];
      wk.rng.seed(block_seed(w));
      std::vector<double> out;
      wk.run_frames(m, o.steps_per_frame, N, out);
      wk.absorb(out, m, N);
    };
    for (int64_t w0 = 0; w0 < W; w0 += threads) {
      const int64_t w1 = std::min<int64_t>(W, w0 + threads);
      if (o.platform == "Reference") {
        std::vector<uint32_t> seeds;
        for (int64_t w = w0; w < w1; ++w) seeds.push_back(static_cast<uint32_t>(block_seed(w) % 2147483646u) + 1u);
        run_block_forked(walkers, w0, w1, m, o.steps_per_frame, N, seeds);
      } else {
        std::vector<std::thread> pool;
        for (int64_t w = w0 + 1; w < w1; ++w) pool.emplace_back(work, w);
        work(w0);
        for (auto& t : pool) t.join();
      }
    }
    done += m;
    ++blocks_run;
    rep.ns_simulated += static_cast<double>(W * m * o.steps_per_frame) * o.timestep / 1000.0;
    const double e = walkers[0].energies.back();
    char status[96];
    std::snprintf(status, sizeof status, "%lld walkers, E = %.1f kJ/mol",
                  static_cast<long long>(W), e);
    progress.update(done, status);
    const auto now = std::chrono::steady_clock::now();
    if (done < total_frames &&
        std::chrono::duration<double>(now - last_save).count() > o.checkpoint_seconds) {
      save_part();
      last_save = now;
    }
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (rep.interrupted) return rep;
  progress.finish();

  // Write the trajectory without the equilibration frames.
  const int64_t F = o.frames, skip = o.equilibration_frames;
  auto P = torch::empty({W * F, N, 3}, torch::kFloat64);
  auto E = torch::empty({W * F}, torch::kFloat64);
  auto KE = torch::empty({W * F}, torch::kFloat64);
  auto T = torch::empty({W * F}, torch::kFloat64);
  auto Wk = torch::empty({W * F}, torch::kInt64);
  const double frame_ps = static_cast<double>(o.steps_per_frame) * o.timestep;
  for (int64_t w = 0; w < W; ++w) {
    const auto& wk = walkers[w];
    std::copy(wk.positions.begin() + skip * N * 3, wk.positions.end(),
              P.data_ptr<double>() + w * F * N * 3);
    std::copy(wk.energies.begin() + skip, wk.energies.end(), E.data_ptr<double>() + w * F);
    std::copy(wk.kinetic.begin() + skip, wk.kinetic.end(), KE.data_ptr<double>() + w * F);
    for (int64_t f = 0; f < F; ++f) {
      T[w * F + f] = static_cast<double>(f + 1) * frame_ps;
      Wk[w * F + f] = w;
    }
  }
  {
    H5Writer wr(out, "trajectory", 1);
    wr.write("/positions", P);
    wr.write("/potential_energy", E);
    wr.write("/kinetic_energy", KE);
    wr.write("/time", T);
    wr.write("/walker", Wk);
    wr.set_attr("/", "temperature", o.temperature);
    wr.set_attr("/", "timestep", o.timestep);
    wr.set_attr("/", "friction", o.friction);
    wr.set_attr("/", "steps_per_frame", o.steps_per_frame);
    wr.set_attr("/", "walkers", W);
    wr.set_attr("/", "system", system_xml);
    wr.set_attr("/", "platform", o.platform);
    wr.set_attr("/", "integrator", o.platform == "Reference"
                                       ? "LangevinMiddleIntegrator (a process per walker and block, reseeded)"
                                       : "LangevinMiddle (CustomIntegrator, per-walker noise)");
    wr.set_attr("/", "degrees_of_freedom", dof);
    wr.set_attr("/", "openmm_version", OpenMM::Platform::getOpenMMVersion());
    wr.set_attr("/", "options", o.to_json().dump());
    wr.commit();
  }
  std::remove(part.c_str());
  rep.frames = W * F;
  return rep;
}

Trajectory read_trajectory(const std::string& path, int64_t atoms) {
  H5Reader r(path);
  r.expect_format("trajectory", 1);
  Trajectory t;
  t.path = path;
  const auto P = r.read("/positions");
  if (P.dim() != 3 || P.size(1) != atoms || P.size(2) != 3)
    runtime_error(path, "/positions has shape " + shape_string(P) + ", expected [T, " +
                            std::to_string(atoms) + ", 3] (a trajectory of another molecule?)");
  t.x = P.to(torch::kFloat64).reshape({P.size(0), 3 * atoms});
  t.energy = r.read("/potential_energy").to(torch::kFloat64);
  if (t.energy.dim() != 1 || t.energy.size(0) != P.size(0))
    runtime_error(path, "/potential_energy has shape " + shape_string(t.energy) + ", expected [" +
                            std::to_string(P.size(0)) + "]");
  t.walker = r.exists("/walker") ? r.read("/walker").to(torch::kInt64)
                                 : torch::zeros({P.size(0)}, torch::kInt64);
  t.temperature = r.has_attr("/", "temperature") ? r.attr_double("/", "temperature") : NAN;
  return t;
}

std::pair<torch::Tensor, torch::Tensor> split_held_out(const Trajectory& t, double fraction) {
  const int64_t T = t.walker.size(0);
  std::vector<int64_t> train, test;
  const auto w = t.walker.contiguous();
  const int64_t* pw = w.data_ptr<int64_t>();
  // Frames are walker-major: find each walker's run and hold out its tail.
  int64_t start = 0;
  while (start < T) {
    int64_t end = start;
    while (end < T && pw[end] == pw[start]) ++end;
    const int64_t n = end - start;
    const int64_t n_test = static_cast<int64_t>(std::floor(fraction * static_cast<double>(n)));
    for (int64_t i = start; i < end - n_test; ++i) train.push_back(i);
    for (int64_t i = end - n_test; i < end; ++i) test.push_back(i);
    start = end;
  }
  return {torch::tensor(train, torch::kInt64), torch::tensor(test, torch::kInt64)};
}

}  // namespace nfkit
