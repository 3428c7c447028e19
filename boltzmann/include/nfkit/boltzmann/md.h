#pragma once
// Reference molecular dynamics with OpenMM: independent Langevin walkers (the LangevinMiddle
// splitting of Zhang et al., J. Phys. Chem. A 2019) run in parallel threads, one Context each,
// from an energy-minimised start with Maxwell-Boltzmann velocities.
//
// Output (HDF5, nfkit_format "trajectory" v1; DESIGN.md):
//   /positions [T, N, 3] nm (float64)  /potential_energy [T] kJ/mol  /kinetic_energy [T] kJ/mol
//   /time [T] ps  /walker [T] (int64)  frames walker-major; time counts from the end of
//   equilibration.
//   attrs: temperature (K), timestep (ps), friction (1/ps), steps_per_frame, walkers, system,
//   platform, integrator, degrees_of_freedom (for the kinetic temperature 2 K / (dof k_B)),
//   openmm_version, options (JSON).
//
// Reproducible: the same options and seed give a bitwise-identical trajectory, whatever the
// number of threads. OpenMM's Langevin integrators draw their noise from one process-wide
// generator on the Reference platform, which walkers in parallel threads would share and race
// on. So on the Reference platform each block of a walker's frames runs in a forked child
// process (its own copy of that generator, reseeded for (seed, walker, block)) with OpenMM's
// native LangevinMiddleIntegrator; the child returns frames and final state through a pipe. On
// other platforms the walkers run in threads with the same splitting written as a
// CustomIntegrator whose Gaussian noise comes from each walker's own seeded generator (about
// 30% slower per step for alanine dipeptide).
// Resumable: every `checkpoint_seconds` the frames so far and each walker's positions and
// velocities go to "<out>.part" (atomically); a rerun with the same options continues from
// there and, the noise being keyed by block, ends with the same trajectory as an uninterrupted
// run.
//
//   nfkit::MDOptions o; o.walkers = 2; o.frames = 5000;
//   nfkit::run_md("system.xml", mol.positions(), o, "md.h5");
#include <torch/types.h>

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

namespace nfkit {

struct MDOptions {
  double temperature = 300.0;       ///< K
  double friction = 1.0;            ///< 1/ps
  double timestep = 0.001;          ///< ps (no constraints: 1 fs)
  int64_t walkers = 2;
  int64_t steps_per_frame = 500;    ///< integration steps between saved frames
  int64_t frames = 2000;            ///< saved frames per walker
  int64_t equilibration_frames = 20;  ///< discarded frames per walker
  std::string platform = "Reference";
  int threads = 0;                  ///< walkers run at once (0 = hardware threads)
  uint64_t seed = 1;
  double checkpoint_seconds = 30.0;
  bool quiet = false;
  nlohmann::json to_json() const;
};

struct MDReport {
  int64_t frames = 0;        ///< saved frames in the output (all walkers)
  double seconds = 0.0;      ///< wall time of this run
  double ns_simulated = 0.0; ///< total simulated time of this run (all walkers, with equilibration)
  bool interrupted = false;
  bool resumed = false;
};

/// Runs MD for the System in system_xml from positions [N, 3] nm and writes `out`.
/// should_stop is polled between blocks; on true the state is saved and interrupted is set.
MDReport run_md(const std::string& system_xml, const torch::Tensor& positions,
                const MDOptions& options, const std::string& out,
                const std::function<bool()>& should_stop = {});

/// A trajectory file read back: configurations x [T, 3N] nm (float64), potential energies [T]
/// kJ/mol, walker index [T] (int64; zeros when the file has none), the temperature (K; NaN when
/// the file does not say).
struct Trajectory {
  torch::Tensor x, energy, walker;
  double temperature = 0.0;
  std::string path;
};
/// Reads a "trajectory" v1 file of a molecule of `atoms` atoms (checked: a trajectory of another
/// molecule is a runtime error naming the file and both counts).
Trajectory read_trajectory(const std::string& path, int64_t atoms);
/// Frames held out for testing: the last `fraction` of each walker's frames (time-separated
/// from training). Returns {fit indices, held-out indices} (int64).
std::pair<torch::Tensor, torch::Tensor> split_held_out(const Trajectory& t, double fraction);

}  // namespace nfkit
