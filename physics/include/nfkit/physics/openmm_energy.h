#pragma once
// Reduced energies and forces of molecular configurations from OpenMM (Eastman et al., PLoS
// Comput. Biol. 2017), for Boltzmann generators.
//
// The System comes from OpenMM's serialized XML (XmlSerializer); positions are in nm,
// x [B, 3N] atom-major. A batch is split over a pool of Contexts, one per worker thread, each
// evaluating its rows in turn (OpenMM Contexts are not thread-safe, so each worker owns one).
// u = E / (k_B T) with E in kJ/mol; reduced forces F / (k_B T) in 1/nm.
//
// Platform choice (measured on the 2-core development machines, 22-atom alanine dipeptide in
// OBC implicit solvent, docs/benchmarks.md): "Reference" is the fastest for molecules this
// small (one energy+force ~36 us) and scales with workers; "CPU" is set to Threads=1 per
// Context because its default thread pool competes with the worker pool.
//
// Rows with non-finite coordinates, or whose energy or forces overflow, get u = +inf and zero
// force.
//
//   nfkit::OpenMMEnergy e("data/alanine_dipeptide/system.xml", 300.0);
//   torch::Tensor forces;
//   auto u = e.evaluate(x, &forces);
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "nfkit/physics/energy.h"

namespace OpenMM {
class Platform;
class System;
}

namespace nfkit {

struct OpenMMOptions {
  /// "Reference", "CPU" (plugins are loaded from OpenMM's default plugin directory), ...
  std::string platform = "Reference";
  /// Contexts in the pool (0 = one per hardware thread).
  int workers = 0;
};

class OpenMMEnergy : public Energy {
 public:
  /// system_xml: path of a serialized OpenMM System; temperature in K.
  OpenMMEnergy(const std::string& system_xml, double temperature,
               const OpenMMOptions& options = {});
  ~OpenMMEnergy() override;
  OpenMMEnergy(const OpenMMEnergy&) = delete;
  OpenMMEnergy& operator=(const OpenMMEnergy&) = delete;

  int64_t dim() const override;
  std::string name() const override;
  torch::Tensor evaluate(const torch::Tensor& x, torch::Tensor* forces = nullptr) override;

  int64_t atoms() const;
  /// Temperature in K and k_B T in kJ/mol.
  double temperature() const;
  double kT() const;
  int workers() const;
  const std::string& platform() const;
  /// Bonded pairs from the System's HarmonicBondForce (atom indices).
  std::vector<std::pair<int64_t, int64_t>> bonds() const;
  /// Potential energies in kJ/mol [B] of x [B, 3N] nm, on one Context (the single-Context
  /// loop of the throughput benchmark); forces in kJ/mol/nm if requested.
  torch::Tensor evaluate_serial(const torch::Tensor& x, torch::Tensor* forces = nullptr);
  const OpenMM::System& system() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Reads a serialized OpenMM System (XmlSerializer format); one-line errors naming the file.
std::unique_ptr<OpenMM::System> read_openmm_system(const std::string& path);

/// Number of particles of the serialized System in path (same errors as read_openmm_system).
int64_t openmm_system_atoms(const std::string& path);

/// An OpenMM platform by name (plugins loaded from OpenMM's default directory first), with
/// the Context properties nfkit uses for it (CPU: Threads=1, since nfkit runs one Context per
/// thread). Unknown names are a usage error listing the available platforms.
OpenMM::Platform& openmm_platform(const std::string& name,
                                  std::map<std::string, std::string>* properties = nullptr);

}  // namespace nfkit
