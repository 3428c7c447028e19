#pragma once
// Shared stages of the Boltzmann-generator commands (nfkit md, nfkit bg train|sample|eval|run):
// option tables, readers of options into the library's structs (boltzmann/pipeline.h), and
// printing. Each stage reads and writes files, so `bg run` chains them with caching and each
// command can run alone.
#include <string>

#include "cli.h"
#include "nfkit/boltzmann/analysis.h"
#include "nfkit/boltzmann/fab.h"
#include "nfkit/boltzmann/generator.h"
#include "nfkit/boltzmann/md.h"
#include "nfkit/boltzmann/pipeline.h"
#include "nfkit/flows/trainer.h"
#include "nfkit/physics/molecule.h"

namespace nfkit::cli {

/// A molecule ready for Boltzmann generation: structure, System, temperature, Z-matrix.
struct MoleculeSpec {
  std::string pdb, system;
  double temperature = 300.0;  ///< K
  Molecule mol;
  ZMatrix z;
};
/// Reads the PDB and checks it against the System (atom count); Z-matrix from the PDB's bonds.
MoleculeSpec load_molecule(const std::string& pdb, const std::string& system, double temperature);

/// Options shared by the commands that need a molecule: --pdb --system --temperature.
po::options_description molecule_options();
MoleculeSpec molecule_from(const po::variables_map& vm);

/// md options (all but the molecule) and their MDOptions.
po::options_description md_options(int64_t default_frames, int64_t default_walkers,
                                   int64_t default_steps_per_frame);
MDOptions md_from(const po::variables_map& vm, const Context& ctx);

/// FAB's sampler and buffer options (--alpha --ais-steps --ais-spacing --leapfrog --step-size
/// --no-buffer --buffer-size --buffer-min --buffer-batches --w-adjust-clip --val-samples),
/// shared by `fab train` and `bg train --objective fab`.
po::options_description fab_sampler_options();
/// Reads them into o (o.batch and o.trainer are the caller's).
void fab_sampler_from(const po::variables_map& vm, FabOptions& o);

po::options_description bg_train_options();
/// The training options read from the command line (checked), checkpoint at <out>.ckpt.
BGTrainOptions bg_train_from(const po::variables_map& vm, const std::string& out, Context& ctx);
/// What bg train's options ask for (the training options, --objective and FAB's options):
/// bg run's cache key of the model stage.
json bg_train_config(const po::variables_map& vm, const std::string& out, Context& ctx);
/// Trains a Boltzmann generator on MD frames (and/or the energy), or with --objective fab from
/// the energy alone (md_path may then be ""), resuming from <out>.ckpt.
/// `provenance` (bg run's stage configuration) is stored in the model's metadata.
json bg_train(const po::variables_map& vm, const MoleculeSpec& m, const std::string& md_path,
              const std::string& out, Context& ctx, const json& provenance = json());

po::options_description bg_sample_options();
/// `provenance` is stored in the samples file (attribute "provenance").
json bg_sample(const po::variables_map& vm, const MoleculeSpec& m, const std::string& model,
               const std::string& out, Context& ctx, const json& provenance = json());
/// The sampling options read from the command line (checked).
BGSampleOptions bg_sample_from(const po::variables_map& vm, Context& ctx);

po::options_description bg_eval_options();
/// Metrics of samples (from bg_sample) against a reference trajectory; figures into fig_dir
/// ("" = none). model = "" skips the held-out NLL.
json bg_eval(const po::variables_map& vm, const MoleculeSpec& m, const std::string& samples,
             const std::string& reference, const std::string& model, const std::string& fig_prefix,
             Context& ctx);

/// Prints the human-readable report of bg_eval's results.
void print_report(const json& r, std::ostream& os);

}  // namespace nfkit::cli
