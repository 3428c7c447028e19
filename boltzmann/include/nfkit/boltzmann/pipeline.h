#pragma once
// The Boltzmann-generator pipeline as library functions (Noé, Olsson, Köhler & Wu, Science
// 2019): train a generator on MD frames and/or an energy, sample it with importance weights,
// evaluate the samples against a reference. Any nfkit::Energy over Cartesian configurations
// [B, 3N] (nm) serves: OpenMM's (physics/openmm_energy.h) or one of your own. `nfkit bg train |
// sample | eval | run` are thin readers of options around these functions.
//
// Files (HDF5; DESIGN.md):
//   trajectory (nfkit md, md.h: read_trajectory)       /positions /potential_energy /walker
//   samples (write_samples / read_samples, v1)          /x [n, 3N] nm, /log_q, /u (reduced),
//     /log_w = -u - log q; attrs model, system, temperature_kelvin (K), provenance (JSON)
//   generator (save_generator / load_generator)         a flow checkpoint whose metadata holds
//     kind "boltzmann_generator", coordinates, zmatrix
//
//   auto z = nfkit::zmatrix_for(mol);
//   nfkit::BGTrainOptions o;  o.trainer.steps(1500);
//   auto rep = nfkit::train_generator(z, nfkit::read_trajectory("md.h5", mol.size()), nullptr,
//                                     o, "model.h5");
//   auto bg = nfkit::load_generator("model.h5");
//   auto s = nfkit::sample_generator(bg, energy, nfkit::BGSampleOptions{});
//   nfkit::write_samples("samples.h5", s.samples);
#include <torch/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nfkit/boltzmann/ais.h"
#include "nfkit/boltzmann/analysis.h"
#include "nfkit/boltzmann/cartesian.h"
#include "nfkit/boltzmann/fab.h"
#include "nfkit/boltzmann/generator.h"
#include "nfkit/boltzmann/md.h"
#include "nfkit/flows/trainer.h"
#include "nfkit/physics/energy.h"
#include "nfkit/physics/molecule.h"

namespace nfkit {

/// The Z-matrix of a molecule from its bond graph (covalent radii of the structure), rooted at
/// the heavy atom with most heavy neighbours (physics/internal_coordinates.h).
ZMatrix zmatrix_for(const Molecule& mol);

// ---- samples --------------------------------------------------------------------------------

/// Generated configurations with their importance weights.
struct SampleSet {
  torch::Tensor x;      ///< [n, 3N] nm
  torch::Tensor log_q;  ///< [n] log density of the generator (reduced space)
  torch::Tensor u;      ///< [n] reduced energies (+inf where the energy failed)
  torch::Tensor log_w;  ///< [n] -u - log q (-inf where u is not finite)
  std::string model, system;
  double temperature_kelvin = NAN;
  nlohmann::json provenance;  ///< what made them (attribute "provenance"; null = none)
};
/// Writes kind "samples" v1 atomically.
void write_samples(const std::string& path, const SampleSet& s);
/// Reads a samples file, checking /x /log_q /u /log_w and, when atoms > 0, 3N coordinates.
SampleSet read_samples(const std::string& path, int64_t atoms = 0);

// ---- generators -----------------------------------------------------------------------------

/// Saves a generator for inference; metadata gets kind, coordinates and zmatrix.
void save_generator(const std::string& path, BoltzmannGenerator& bg, nlohmann::json metadata);
/// Loads a generator written by save_generator or train_generator (float64, CPU).
BoltzmannGenerator load_generator(const std::string& path, nlohmann::json* metadata = nullptr);

// ---- training -------------------------------------------------------------------------------

struct BGTrainOptions {
  /// The density model: "nsf" (spline flow, sized by recipe), "tarflow" or "arbg" (sized by
  /// transformer; cartesian.h).
  std::string model = "nsf";
  ICFlowRecipe recipe;                   ///< internal coordinates; the Cartesian flow is the same size
  TransformerRecipe transformer;
  /// internal, cartesian (the canonical frame) or centred (all 3N coordinates, centre removed,
  /// turned and shifted during training; cartesian.h)
  std::string coordinates = "internal";
  double reverse_weight = 0.0;           ///< 0 forward KL on MD, 1 reverse KL on the energy only
  double held_out = 0.1;                 ///< each walker's last frames kept from training
  torch::Dtype dtype = torch::kFloat32;  ///< training dtype (weights are used in float64)
  torch::Device device = torch::kCPU;
  TrainerOptions trainer;                ///< its checkpoint_path is the resume file
  std::string init;                      ///< start from this generator's weights ("" = fresh)
  bool restart = false;                  ///< ignore an existing checkpoint
  uint64_t seed = 1;
  /// FAB from the energy alone (train_generator_fab): maximum-likelihood steps on the stand-in
  /// coordinates of energy_only_start before FAB (0 = none).
  int64_t pretrain_steps = 500;
  /// FAB temperature annealing (after Schopmans & Friederich, "Temperature-annealed Boltzmann
  /// generators", ICML 2025, with FAB in place of reverse KL): anneal_stages stages at
  /// temperatures from anneal_factor x T down to T (geometric), each with its share of the
  /// steps and a fresh replay buffer, each starting from the previous stage's flow. 1 stage:
  /// train at T (anneal_factor must be 1).
  double anneal_factor = 1.0;
  int64_t anneal_stages = 1;
  /// Checks the values, naming the option (usage errors).
  void check() const;
  /// check() and what FAB needs (a spline flow, not in centred coordinates).
  void check_fab() const;
  nlohmann::json to_json() const;
};

struct BGTrainReport {
  std::string model;  ///< the file written
  TrainReport train;
  int64_t n_train = 0, n_val = 0, dim = 0;
  /// train_generator_fab: FabReport::to_json() and the energy-only start (null otherwise).
  nlohmann::json fab;
  nlohmann::json to_json() const;
};

/// Trains a generator for the molecule of Z-matrix z on the MD frames (the fit part, see
/// split_held_out) and/or on `energy` (required when reverse_weight > 0), resuming from
/// options.trainer.checkpoint_path(), and writes it to `out` with `metadata` added. `stop` is
/// polled between steps; report.train.interrupted says it stopped (the checkpoint holds the
/// progress, nothing is written to `out`).
BGTrainReport train_generator(const ZMatrix& z, const Trajectory& md, Energy* energy,
                              const BGTrainOptions& options, const std::string& out,
                              const nlohmann::json& metadata = nlohmann::json::object(),
                              const std::function<bool()>& stop = {},
                              const std::function<void(int64_t step)>& on_resume = {});

// ---- training from the energy alone ----------------------------------------------------------

/// A local minimum of `energy` near x0 [D] (L-BFGS with a strong-Wolfe line search on the
/// reduced energy, at most `iterations` iterations): the configuration [D] and its reduced
/// energy. A start whose energy is not finite is a runtime error.
std::pair<torch::Tensor, double> minimize_energy(Energy& energy, const torch::Tensor& x0,
                                                 int64_t iterations = 500);

/// What the energy alone says about the flow's coordinates near a minimum, for training where
/// no MD exists: c at the minimum; per-coordinate widths 1 / sqrt(d2 u_flow / dc_i^2) from
/// central differences of the forces (clamped to [1e-4, 1]; 1 where the curvature is not
/// positive), the harmonic widths at the target temperature, which scale the moves of AIS; and
/// for each periodic coordinate (torsion) a rigid scan: the energy with that torsion alone
/// turned through the circle, every other coordinate at the minimum. Stand-in training
/// coordinates drawn from these (bonds and angles Gaussian with the harmonic widths, each
/// torsion from its scan's Boltzmann factor, mixed with the uniform density) standardise a
/// fresh flow and pretrain it by maximum likelihood, so that FAB starts from a flow that
/// already places the stiff torsions (amide planes, the phase offsets of sibling atoms) and the
/// methyl rotors' three wells instead of from uniform torsions, nearly all of whose samples
/// clash.
struct EnergyOnlyStart {
  torch::Tensor x_min;   ///< [3N] nm, the minimised configuration
  double u_min = NAN;    ///< its reduced energy
  torch::Tensor c_min;   ///< [D] flow coordinates of x_min
  torch::Tensor scales;  ///< [D]
  std::vector<int64_t> periodic;  ///< the map's periodic columns
  /// [P, G] u_flow - u_min along each periodic column's scan, at the cell centres
  /// -pi + (g + 1/2) 2 pi / G (+inf where the energy failed).
  torch::Tensor scans;
  /// n stand-in coordinates [n, D]: c_min + scales * N(0, 1) for the other columns; each
  /// periodic column from its scan's exp(-u) (a cell, then uniform within it) with probability
  /// 1 - uniform, else uniform on (-pi, pi].
  torch::Tensor stand_in(int64_t n, double uniform = 0.1) const;
};
/// grid: points of each torsion scan; stereocentres: keep their handedness (scan points of
/// the other get +inf; FlowCoordinateEnergy).
EnergyOnlyStart energy_only_start(const CoordinateMap& map, Energy& energy, const torch::Tensor& x0,
                                  int64_t grid = 72, const std::vector<Stereocentre>& stereocentres = {});

/// Trains a generator for the molecule of Z-matrix z from `energy` alone by FAB (fab.h) in the
/// flow's coordinates (FlowCoordinateEnergy: torsions wrapped, moves scaled by the harmonic
/// widths of energy_only_start at the minimum near x0 [3N]; the stereocentres keep their
/// handedness, as in MD), resuming from
/// options.trainer.checkpoint_path(), and writes it to `out`. A fresh flow (no init, no
/// checkpoint to resume) is first fitted by maximum likelihood to the start's stand-in
/// coordinates for options.pretrain_steps, and with options.anneal_stages > 1 trained at falling
/// temperatures (the start and its widths are those of T). options.trainer, recipe, coordinates, dtype, device,
/// init, restart and seed apply; reverse_weight and held_out do not. fab.trainer is replaced
/// by options.trainer, and fab.ais.hmc.scales, when empty, by the start's widths.
BGTrainReport train_generator_fab(const ZMatrix& z, Energy& energy, const torch::Tensor& x0,
                                  const std::vector<Stereocentre>& stereocentres, const BGTrainOptions& options, FabOptions fab, const std::string& out,
                                  const nlohmann::json& metadata = nlohmann::json::object(),
                                  const std::function<bool()>& stop = {},
                                  const std::function<void(int64_t step)>& on_resume = {});

// ---- sampling -------------------------------------------------------------------------------

struct BGSampleOptions {
  int64_t n = 20000;
  int64_t batch = 4096;  ///< samples per pass
  uint64_t seed = 1;
  bool quiet = false;    ///< no progress on stderr
  /// Sequential Monte Carlo from the generator to the Boltzmann distribution (Sequential
  /// Boltzmann Generators, ais.h) with this many intermediate densities; 0 = plain importance
  /// sampling. The n samples are the SMC population, moved in Cartesian coordinates and
  /// returned in the canonical frame with their SMC log-weights as /log_w.
  int64_t smc_steps = 0;
  /// The SMC's kernel, step size, resampling and energy cut (intermediate = smc_steps, alpha 1).
  AisOptions smc = [] {
    AisOptions a;
    a.kernel = "mala";
    a.hmc.step_size = 1e-3;
    a.resample_threshold = 0.5;
    return a;
  }();
};

struct BGSampleReport {
  SampleSet samples;
  double ess_fraction = NAN;  ///< Kish ESS / n
  /// Samples whose energy was +inf (clashes) or that the energy could not evaluate (NaN, or the
  /// energy threw for its batch): zero weight, counted here.
  int64_t infinite_energies = 0, failed_energies = 0;
  bool interrupted = false;   ///< `stop` asked; samples is empty
  /// SMC only: energy evaluations (rows, forces included), resamplings, log Z, particles
  /// dropped by the energy cut, mean acceptance and ESS per density (null without SMC).
  nlohmann::json smc;
  nlohmann::json to_json() const;
};

/// n samples of the generator with reduced energies from `energy` and log-weights.
BGSampleReport sample_generator(BoltzmannGenerator& bg, Energy& energy,
                                const BGSampleOptions& options,
                                const std::function<bool()>& stop = {});

// ---- evaluation -----------------------------------------------------------------------------

struct BGEvalOptions {
  double temperature_kelvin = 300.0;     ///< of the reference's energies (u = E / k_B T)
  double clip = 0.0;                     ///< clip log-weights above this quantile (0 = off)
  /// Drop (zero weight) the largest log-weights, this fraction of the finite ones, before
  /// resampling, as SBG and ArBG do (0.002); the unclipped numbers are reported beside.
  double clip_top = 0.0;
  /// Samples whose stereocentres have the wrong handedness: "exclude" (zero weight, left out of
  /// the raw metrics), "mirror" (replaced by their mirror images, weights kept, as ArBG does),
  /// or "keep".
  std::string chirality = "exclude";
  int64_t tica_lag = 100;                ///< frames of the reference (capped at half a walker)
  int64_t w2_repeats = 3;                ///< subsample draws for the W2 error bars
  int64_t bootstrap = 200;               ///< rounds for error bars
  /// Per side for the headline T-W2 and TICA-W2 (exact OT, nfkit::exact_transport): the
  /// literature's 10^4 by default.
  int64_t w2_samples = 10000;
  int64_t w2_repeat_samples = 2000;      ///< per side for each of the w2_repeats subsamples
  std::optional<double> energy_cut;      ///< raw E-W2 cut (default: reference 99.9% + 20)
  uint64_t seed = 1;
  void check() const;
};

/// The numbers of an evaluation (JSON layout: docs/boltzmann.md), with the arrays the figures
/// need.
struct BGEvalReport {
  int64_t n_samples = 0;
  double ess_fraction = NAN, ess_fraction_unclipped = NAN;
  double clip_quantile = 0.0;  ///< 0: unclipped
  int64_t infinite_energies = 0;
  int64_t md_frames = 0, md_bootstrap_block = 1;
  std::vector<BasinStats> md_basins, raw_basins, reweighted_basins;
  std::optional<double> e_w2_raw;  ///< none when no sample lies below the cut
  double e_w2_cut = NAN, e_w2_reweighted = NAN;
  int64_t e_w2_excluded = 0;
  Estimate e_w2_raw_spread, e_w2_reweighted_spread;  ///< bootstrap mean +- std (w2_repeats)
  int64_t t_w2_samples = 0, w2_repeats = 0, w2_repeat_samples = 0;
  /// T-W2 and TICA-W2 on t_w2_samples per side (evenly spaced reference frames; the first
  /// samples, or the first resampled ones).
  double t_w2_raw = NAN, t_w2_reweighted = NAN, tica_w2_raw = NAN, tica_w2_reweighted = NAN;
  /// The same over w2_repeats random subsamples of w2_repeat_samples per side: mean +- std.
  Estimate t_w2_raw_repeats, t_w2_reweighted_repeats;
  Estimate tica_w2_raw_repeats, tica_w2_reweighted_repeats;
  int64_t tica_lag = 0;
  std::vector<double> tica_eigenvalues;
  std::string tica_error;  ///< why TICA-W2 is missing ("" when present)
  /// Chirality: samples and reference frames with a wrong-handed stereocentre, the policy.
  int64_t stereocentres = 0, wrong_chirality = 0, reference_wrong_chirality = 0;
  std::string chirality;
  /// clip_top: how many samples it dropped, and the numbers without it.
  int64_t clipped_top = 0;
  double clip_top = 0.0;
  std::vector<BasinStats> reweighted_basins_unclipped;
  double rama_kl_raw = NAN, rama_kl_reweighted = NAN;
  struct Nll {
    int64_t frames = 0;
    double value = NAN, error = NAN;
  };
  std::optional<Nll> held_out_nll;
  std::string samples_file, reference_file;
  /// For figures: (phi, psi) of the reference and the samples, reduced energies of the
  /// reference, samples and resampled samples, the (clipped) log-weights.
  torch::Tensor rama_reference, rama_samples, u_reference, u_samples, u_resampled, log_w;
  /// The two slowest TICA components [*, 2] of the reference, the samples and the resampled
  /// samples (undefined when TICA failed).
  torch::Tensor tica_reference, tica_samples, tica_resampled;
  nlohmann::json to_json() const;
};

/// Metrics of samples against a reference trajectory of molecule `mol` (backbone dihedrals,
/// basins, E-W2, T-W2, Ramachandran KL) and, with a model, its NLL on the reference frames held
/// out from training (the held_out fraction stored in the model).
BGEvalReport evaluate_generator(const Molecule& mol, const SampleSet& samples,
                                const Trajectory& reference, const BGEvalOptions& options,
                                BoltzmannGenerator* model = nullptr, double held_out = 0.0);

}  // namespace nfkit
