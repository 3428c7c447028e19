#include "nfkit/physics/openmm_energy.h"

#include <OpenMM.h>

#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/core/runtime.h"

namespace nfkit {

namespace {

void load_plugins_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    try {
      OpenMM::Platform::loadPluginsFromDirectory(OpenMM::Platform::getDefaultPluginsDirectory());
    } catch (const std::exception&) {
      // The Reference platform is built in; other platforms are reported as unknown later.
    }
  });
}

std::string available_platforms() {
  std::string s;
  for (int i = 0; i < OpenMM::Platform::getNumPlatforms(); ++i) {
    if (i) s += ", ";
    s += OpenMM::Platform::getPlatform(i).getName();
  }
  return s;
}

}  // namespace

std::unique_ptr<OpenMM::System> read_openmm_system(const std::string& path) {
  std::ifstream in(path);
  if (!in) runtime_error("openmm", path + ": cannot open the system file");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  if (text.find("<System") == std::string::npos)
    runtime_error("openmm", path + ": not a serialized OpenMM System (no <System> element)");
  try {
    std::istringstream is(text);
    std::unique_ptr<OpenMM::System> sys(OpenMM::XmlSerializer::deserialize<OpenMM::System>(is));
    if (!sys || sys->getNumParticles() == 0)
      runtime_error("openmm", path + ": the System has no particles");
    return sys;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    runtime_error("openmm", path + ": cannot read the System: " + std::string(e.what()));
  }
}

OpenMM::Platform& openmm_platform(const std::string& name,
                                  std::map<std::string, std::string>* properties) {
  load_plugins_once();
  OpenMM::Platform* platform = nullptr;
  try {
    platform = &OpenMM::Platform::getPlatformByName(name);
  } catch (const std::exception&) {
    usage_error("openmm", "unknown platform '" + name + "', expected one of " +
                              available_platforms());
  }
  if (properties) {
    properties->clear();
    if (name == "CPU") (*properties)["Threads"] = "1";
  }
  return *platform;
}

int64_t openmm_system_atoms(const std::string& path) {
  return read_openmm_system(path)->getNumParticles();
}

struct OpenMMEnergy::Impl {
  std::string path;
  std::unique_ptr<OpenMM::System> system;
  double temperature = 300.0, kT = 0.0;
  std::string platform;
  struct Slot {
    std::unique_ptr<OpenMM::VerletIntegrator> integrator;
    std::unique_ptr<OpenMM::Context> context;
  };
  std::vector<Slot> pool;
  int64_t n = 0;

  // Energy (kJ/mol) and forces (kJ/mol/nm) of rows [lo, hi) on one Context; +inf and zero
  // forces where the row cannot be evaluated.
  void run(Slot& slot, const double* x, double* e, double* f, int64_t lo, int64_t hi) const {
    std::vector<OpenMM::Vec3> pos(n);
    const int types = OpenMM::State::Energy | (f ? OpenMM::State::Forces : 0);
    for (int64_t r = lo; r < hi; ++r) {
      const double* xr = x + r * 3 * n;
      bool finite = true;
      for (int64_t i = 0; i < 3 * n; ++i) finite = finite && std::isfinite(xr[i]);
      double* fr = f ? f + r * 3 * n : nullptr;
      if (fr) std::fill(fr, fr + 3 * n, 0.0);
      if (!finite) {
        e[r] = INFINITY;
        continue;
      }
      for (int64_t i = 0; i < n; ++i) pos[i] = OpenMM::Vec3(xr[3 * i], xr[3 * i + 1], xr[3 * i + 2]);
      try {
        slot.context->setPositions(pos);
        const OpenMM::State st = slot.context->getState(types);
        double energy = st.getPotentialEnergy();
        bool ok = std::isfinite(energy);
        if (ok && fr) {
          const auto& F = st.getForces();
          for (int64_t i = 0; i < n && ok; ++i)
            for (int d = 0; d < 3; ++d) {
              fr[3 * i + d] = F[i][d];
              ok = ok && std::isfinite(F[i][d]);
            }
        }
        if (!ok) {
          energy = INFINITY;
          if (fr) std::fill(fr, fr + 3 * n, 0.0);
        }
        e[r] = energy;
      } catch (const std::exception&) {
        e[r] = INFINITY;
        if (fr) std::fill(fr, fr + 3 * n, 0.0);
      }
    }
  }
};

OpenMMEnergy::OpenMMEnergy(const std::string& system_xml, double temperature,
                           const OpenMMOptions& options)
    : impl_(std::make_unique<Impl>()) {
  check_positive("OpenMMEnergy", "temperature", temperature);
  impl_->path = system_xml;
  impl_->system = read_openmm_system(system_xml);
  impl_->temperature = temperature;
  impl_->kT = kBoltzmann * temperature;
  impl_->n = impl_->system->getNumParticles();
  std::map<std::string, std::string> props;
  OpenMM::Platform& platform = openmm_platform(options.platform, &props);
  impl_->platform = options.platform;
  const int workers = options.workers > 0 ? options.workers : hardware_threads();
  for (int w = 0; w < workers; ++w) {
    Impl::Slot s;
    s.integrator = std::make_unique<OpenMM::VerletIntegrator>(0.001);
    try {
      s.context = std::make_unique<OpenMM::Context>(*impl_->system, *s.integrator, platform,
                                                    props);
    } catch (const std::exception& e) {
      runtime_error("openmm", system_xml + ": cannot create a " + options.platform +
                                  " Context: " + std::string(e.what()));
    }
    impl_->pool.push_back(std::move(s));
  }
}

OpenMMEnergy::~OpenMMEnergy() = default;

int64_t OpenMMEnergy::dim() const { return 3 * impl_->n; }
int64_t OpenMMEnergy::atoms() const { return impl_->n; }
std::string OpenMMEnergy::name() const { return "openmm:" + impl_->path; }
double OpenMMEnergy::temperature() const { return impl_->temperature; }
double OpenMMEnergy::kT() const { return impl_->kT; }
int OpenMMEnergy::workers() const { return static_cast<int>(impl_->pool.size()); }
const std::string& OpenMMEnergy::platform() const { return impl_->platform; }
const OpenMM::System& OpenMMEnergy::system() const { return *impl_->system; }

std::vector<std::pair<int64_t, int64_t>> OpenMMEnergy::bonds() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int k = 0; k < impl_->system->getNumForces(); ++k) {
    auto* hb = dynamic_cast<const OpenMM::HarmonicBondForce*>(&impl_->system->getForce(k));
    if (!hb) continue;
    for (int b = 0; b < hb->getNumBonds(); ++b) {
      int i, j;
      double r0, kb;
      hb->getBondParameters(b, i, j, r0, kb);
      out.emplace_back(std::min(i, j), std::max(i, j));
    }
  }
  return out;
}

namespace {
torch::Tensor checked_positions(const std::string& fn, const torch::Tensor& x, int64_t n) {
  check_dim(fn, "x", x, 2);
  if (x.size(1) != 3 * n)
    usage_error(fn, "x has " + std::to_string(x.size(1)) + " coordinates per configuration, "
                    "but the System has " + std::to_string(n) + " atoms (expected " +
                    std::to_string(3 * n) + ")");
  return x.detach().to(torch::kCPU, torch::kFloat64).contiguous();
}
}  // namespace

torch::Tensor OpenMMEnergy::evaluate_serial(const torch::Tensor& x, torch::Tensor* forces) {
  const auto xd = checked_positions("OpenMMEnergy", x, impl_->n);
  const int64_t B = xd.size(0);
  auto e = torch::empty({B}, torch::kFloat64);
  if (forces) *forces = torch::empty({B, 3 * impl_->n}, torch::kFloat64);
  impl_->run(impl_->pool[0], xd.data_ptr<double>(), e.data_ptr<double>(),
             forces ? forces->data_ptr<double>() : nullptr, 0, B);
  return e;
}

torch::Tensor OpenMMEnergy::evaluate(const torch::Tensor& x, torch::Tensor* forces) {
  const auto xd = checked_positions("OpenMMEnergy", x, impl_->n);
  const int64_t B = xd.size(0);
  auto e = torch::empty({B}, torch::kFloat64);
  torch::Tensor f;
  if (forces) f = torch::empty({B, 3 * impl_->n}, torch::kFloat64);
  const double* xp = xd.data_ptr<double>();
  double* ep = e.data_ptr<double>();
  double* fp = forces ? f.data_ptr<double>() : nullptr;
  const int64_t W = std::min<int64_t>(static_cast<int64_t>(impl_->pool.size()), B);
  if (W <= 1) {
    impl_->run(impl_->pool[0], xp, ep, fp, 0, B);
  } else {
    std::vector<std::thread> threads;
    threads.reserve(W - 1);
    const int64_t chunk = (B + W - 1) / W;
    for (int64_t w = 1; w < W; ++w) {
      const int64_t lo = w * chunk, hi = std::min(B, lo + chunk);
      if (lo >= hi) break;
      threads.emplace_back([&, w, lo, hi] { impl_->run(impl_->pool[w], xp, ep, fp, lo, hi); });
    }
    impl_->run(impl_->pool[0], xp, ep, fp, 0, std::min(B, chunk));
    for (auto& t : threads) t.join();
  }
  const double inv_kT = 1.0 / impl_->kT;
  e.mul_(inv_kT);
  if (forces) *forces = f.mul_(inv_kT);
  return e;
}

}  // namespace nfkit
