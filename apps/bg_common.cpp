#include "bg_common.h"

#include "flow_common.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <cstdio>
#include <iomanip>
#include <sstream>

#include "nfkit/boltzmann/reweight.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/progress.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/losses.h"
#include "nfkit/physics/openmm_energy.h"
#include "figures.h"

namespace nfkit::cli {


// ---- molecule -------------------------------------------------------------------------------

MoleculeSpec load_molecule(const std::string& pdb, const std::string& system, double temperature) {
  check_positive("--temperature", "value", temperature);
  MoleculeSpec m;
  m.pdb = pdb;
  m.system = system;
  m.temperature = temperature;
  m.mol = read_pdb(pdb);
  const int64_t atoms = openmm_system_atoms(system);
  if (atoms != m.mol.size())
    usage_error("--system", system + " has " + std::to_string(atoms) +
                                " atoms, but " + pdb + " has " + std::to_string(m.mol.size()));
  m.z = zmatrix_for(m.mol);
  return m;
}

po::options_description molecule_options() {
  po::options_description o("molecule");
  o.add_options()
      ("pdb", po::value<std::string>()->default_value("data/alanine_dipeptide/ala2.pdb"), "structure (PDB; a data/... path not found here is looked up in $NFKIT_DATA and the installed share/nfkit/data)")
      ("system", po::value<std::string>()->default_value("data/alanine_dipeptide/system.xml"), "OpenMM System (serialized XML)")
      ("temperature", po::value<double>()->default_value(300.0), "temperature in K");
  return o;
}

MoleculeSpec molecule_from(const po::variables_map& vm) {
  return load_molecule(find_data_file(vm["pdb"].as<std::string>()),
                       find_data_file(vm["system"].as<std::string>()), vm["temperature"].as<double>());
}

// ---- md -------------------------------------------------------------------------------------

po::options_description md_options(int64_t default_frames, int64_t default_walkers,
                                   int64_t default_steps_per_frame) {
  po::options_description o("molecular dynamics");
  o.add_options()
      ("walkers", po::value<int64_t>()->default_value(default_walkers), "independent walkers (run in parallel)")
      ("frames", po::value<int64_t>()->default_value(default_frames), "saved frames per walker")
      ("steps-per-frame", po::value<int64_t>()->default_value(default_steps_per_frame), "integration steps between frames")
      ("equilibration", po::value<int64_t>()->default_value(20), "frames discarded per walker at the start")
      ("timestep", po::value<double>()->default_value(0.001, "0.001"), "time step in ps")
      ("friction", po::value<double>()->default_value(1.0), "Langevin friction in 1/ps")
      ("platform", po::value<std::string>()->default_value("Reference"), "OpenMM platform (Reference, CPU)")
      ("checkpoint-seconds", po::value<double>()->default_value(30.0), "seconds between MD checkpoints (OUT.part; a killed run resumes from the last one)");
  return o;
}

MDOptions md_from(const po::variables_map& vm, const Context& ctx) {
  MDOptions o;
  o.temperature = vm["temperature"].as<double>();
  o.walkers = vm["walkers"].as<int64_t>();
  o.frames = vm["frames"].as<int64_t>();
  o.steps_per_frame = vm["steps-per-frame"].as<int64_t>();
  o.equilibration_frames = vm["equilibration"].as<int64_t>();
  o.timestep = vm["timestep"].as<double>();
  o.friction = vm["friction"].as<double>();
  o.platform = vm["platform"].as<std::string>();
  o.checkpoint_seconds = vm["checkpoint-seconds"].as<double>();
  o.threads = ctx.globals.threads;
  o.seed = ctx.globals.seed;
  o.quiet = ctx.globals.quiet;
  check_positive_int("--walkers", "value", o.walkers);
  check_positive_int("--frames", "value", o.frames);
  check_positive_int("--steps-per-frame", "value", o.steps_per_frame);
  check_nonnegative("--equilibration", "value", static_cast<double>(o.equilibration_frames));
  check_positive("--timestep", "value", o.timestep);
  check_positive("--friction", "value", o.friction);
  check_positive("--checkpoint-seconds", "value", o.checkpoint_seconds);
  return o;
}

// ---- train ----------------------------------------------------------------------------------

po::options_description fab_sampler_options() {
  po::options_description o("FAB (flow annealed importance sampling bootstrap)");
  o.add_options()
      ("alpha", po::value<double>()->default_value(2.0), "AIS target p^alpha q^(1-alpha) (FAB: 2)")
      ("ais-steps", po::value<int64_t>()->default_value(4), "intermediate AIS densities (FAB: 4)")
      ("ais-spacing", po::value<std::string>()->default_value("linear"), "inverse temperatures: linear or geometric")
      ("leapfrog", po::value<int64_t>()->default_value(5), "leapfrog steps per HMC move (FAB: 5)")
      ("step-size", po::value<double>()->default_value(1.0), "initial HMC step size, then adapted towards 65% acceptance")
      ("no-buffer", po::bool_switch(), "FAB without the replay buffer: one AIS run per step")
      ("buffer-size", po::value<int64_t>()->default_value(100000), "replay buffer length (points)")
      ("buffer-min", po::value<int64_t>()->default_value(10240), "points gathered before the first step")
      ("buffer-batches", po::value<int64_t>()->default_value(8), "gradient steps per AIS run (buffer)")
      ("w-adjust-clip", po::value<double>()->default_value(0.0), "clip of the buffer's weight correction (0 = off)")
      ("val-samples", po::value<int64_t>()->default_value(8192), "flow samples per validation (log 1/ESS)");
  return o;
}

void fab_sampler_from(const po::variables_map& vm, FabOptions& o) {
  o.buffer = !vm["no-buffer"].as<bool>();
  o.buffer_size = vm["buffer-size"].as<int64_t>();
  o.buffer_min = vm["buffer-min"].as<int64_t>();
  o.buffer_batches = vm["buffer-batches"].as<int64_t>();
  o.w_adjust_clip = vm["w-adjust-clip"].as<double>();
  o.val_samples = vm["val-samples"].as<int64_t>();
  o.ais.alpha = vm["alpha"].as<double>();
  o.ais.intermediate = vm["ais-steps"].as<int64_t>();
  o.ais.spacing = vm["ais-spacing"].as<std::string>();
  o.ais.hmc.leapfrog = vm["leapfrog"].as<int64_t>();
  o.ais.hmc.step_size = vm["step-size"].as<double>();
}

po::options_description bg_train_options() {
  po::options_description o("training");
  o.add_options()
      ("objective", po::value<std::string>()->default_value("kl"), "kl: forward KL on MD frames (plus --reverse-weight of reverse KL); fab: from the energy alone by FAB (no MD needed; --batch-size is FAB's batch)")
      ("anneal-from", po::value<double>(), "--objective fab: train first at this temperature (K), then at falling temperatures down to --temperature over --anneal-stages stages (temperature annealing; the steps are shared evenly)")
      ("anneal-stages", po::value<int64_t>()->default_value(4), "stages of --anneal-from (geometric temperatures, the last at --temperature)")
      ("pretrain-steps", po::value<int64_t>()->default_value(500), "--objective fab: maximum-likelihood steps on stand-in coordinates from the energy minimum (harmonic bonds and angles, torsion scans) before FAB")
      ("model", po::value<std::string>()->default_value(""), "the density model: nsf-ic (spline flow over internal coordinates), nsf-cartesian (spline flow over the canonical Cartesian frame), tarflow or arbg (transformers over all 3N Cartesian coordinates, centred, turned and shifted during training; SBG's TarFlow, ArBG's binned autoregressive model). Default: nsf over --coordinates")
      ("layers", po::value<int64_t>()->default_value(4), "blocks of four spline couplings")
      ("hidden", po::value<int64_t>()->default_value(128), "hidden units per conditioner layer")
      ("hidden-layers", po::value<int64_t>()->default_value(2), "hidden layers per conditioner")
      ("bins", po::value<int64_t>()->default_value(8), "spline bins")
      ("blocks", po::value<int64_t>()->default_value(4), "tarflow: transformer blocks (alternating token order)")
      ("transformer-layers", po::value<int64_t>()->default_value(2), "tarflow: transformer layers per block; arbg: twice this many in its one transformer")
      ("head-dim", po::value<int64_t>()->default_value(32), "tarflow, arbg: width of an attention head (--hidden must be a multiple)")
      ("tokens", po::value<std::string>()->default_value("atom"), "tarflow: atom (one token of x, y, z per atom, as SBG) or coordinate (one token per coordinate)")
      ("arbg-bins", po::value<int64_t>()->default_value(1024), "arbg: bins per coordinate (ArBG uses 4096 for alanine dipeptide)")
      ("token-order", po::value<std::string>()->default_value("atom"), "arbg: atom (x, y, z of each atom in the topology's order, ArBG's default) or axis (all x, then all y, then all z)")
      ("box-margin", po::value<double>()->default_value(0.05, "0.05"), "arbg: the bins' box beyond the training coordinates' range, as a fraction of it")
      ("steps", po::value<int64_t>()->default_value(1500), "optimizer steps")
      ("batch-size", po::value<int64_t>()->default_value(512), "minibatch size")
      ("lr", po::value<double>()->default_value(1e-3, "0.001"), "peak learning rate (AdamW)")
      ("warmup", po::value<int64_t>()->default_value(100), "warm-up steps")
      ("ema", po::value<double>()->default_value(0.0), "EMA decay (0 = off)")
      ("reverse-weight", po::value<double>()->default_value(0.0), "weight of the reverse KL on the energy (0 = forward KL on MD only, 1 = energy only)")
      ("eval-every", po::value<int64_t>()->default_value(100), "steps between validations (the best validated weights are kept)")
      ("checkpoint-every", po::value<int64_t>()->default_value(250), "steps between checkpoints (<out>.ckpt)")
      ("held-out", po::value<double>()->default_value(0.1, "0.1"), "fraction of each walker's last frames held out for testing")
      ("dtype", po::value<std::string>()->default_value("float32"), "float32 or float64 for training (weights are evaluated in float64 for reweighting)")
      ("coordinates", po::value<std::string>(), "what the model sees: internal (bonds, angles, torsions), cartesian (free coordinates in the canonical frame) or centred (all 3N coordinates, centre removed); default: the --model's (internal without one)")
      ("init", po::value<std::string>()->default_value(""), "start from this model's weights (fine-tuning), not a fresh flow")
      ("restart", po::bool_switch(), "ignore an existing checkpoint");
  o.add(fab_sampler_options());
  return o;
}

BGTrainOptions bg_train_from(const po::variables_map& vm, const std::string& out, Context& ctx) {
  BGTrainOptions o;
  const std::string dt = vm["dtype"].as<std::string>();
  if (dt != "float32" && dt != "float64")
    usage_error("--dtype", "'" + dt + "' is not a dtype, expected float32 or float64");
  o.dtype = dt == "float64" ? torch::kFloat64 : torch::kFloat32;
  o.device = ctx.globals.device;
  o.reverse_weight = vm["reverse-weight"].as<double>();
  o.held_out = vm["held-out"].as<double>();
  o.recipe.layers = vm["layers"].as<int64_t>();
  o.recipe.hidden = vm["hidden"].as<int64_t>();
  o.recipe.hidden_layers = vm["hidden-layers"].as<int64_t>();
  o.recipe.bins = vm["bins"].as<int64_t>();
  o.transformer.blocks = vm["blocks"].as<int64_t>();
  o.transformer.layers = vm["transformer-layers"].as<int64_t>();
  o.transformer.hidden = o.recipe.hidden;
  o.transformer.head_dim = vm["head-dim"].as<int64_t>();
  o.transformer.tokens = vm["tokens"].as<std::string>();
  o.transformer.bins = vm["arbg-bins"].as<int64_t>();
  o.transformer.order = vm["token-order"].as<std::string>();
  o.transformer.margin = vm["box-margin"].as<double>();
  // --model names a model and its coordinates; --coordinates alone keeps the spline flow.
  const std::string model = vm["model"].as<std::string>();
  const std::string given = vm.count("coordinates") ? vm["coordinates"].as<std::string>() : "";
  if (model.empty() || model == "nsf-ic" || model == "nsf-cartesian") {
    o.model = "nsf";
    const std::string implied = model == "nsf-cartesian" ? "cartesian" : "internal";
    if (!model.empty() && !given.empty() && given != implied)
      usage_error("--coordinates", model + " models " + implied + " coordinates, not " + given);
    o.coordinates = given.empty() ? implied : given;
  } else if (model == "tarflow" || model == "arbg") {
    o.model = model;
    o.coordinates = given.empty() ? "centred" : given;
  } else {
    usage_error("--model", "'" + model + "' is not a model, expected nsf-ic, nsf-cartesian, tarflow or arbg");
  }
  o.init = vm["init"].as<std::string>();
  o.restart = vm["restart"].as<bool>();
  o.pretrain_steps = vm["pretrain-steps"].as<int64_t>();
  if (vm.count("anneal-from")) {
    const double t_hot = vm["anneal-from"].as<double>(), t = vm["temperature"].as<double>();
    if (!(t_hot > t)) usage_error("--anneal-from", "must be above --temperature (" + std::to_string(t) + " K)");
    o.anneal_factor = t_hot / t;
    o.anneal_stages = vm["anneal-stages"].as<int64_t>();
  }
  o.seed = ctx.globals.seed;
  o.check();
  o.trainer = trainer_options_from(vm, out, ctx);
  return o;
}

namespace {

// Says where a resumed run resumes.
std::function<void(int64_t)> resume_message(const BGTrainOptions& o, Context& ctx) {
  return [&o, &ctx](int64_t step) {
    if (!ctx.globals.quiet)
      ctx.err << "resuming from " << o.trainer.checkpoint_path() << " at step " << step << std::endl;
  };
}

// After training: Interrupted when stopped (the checkpoint holds the progress), else the
// training-curve figure and the report.
json finish_bg_training(const BGTrainReport& rep, const BGTrainOptions& o, const std::string& out,
                        const std::string& title, const std::string& loss_label, Context& ctx,
                        const std::string& val_label = "") {
  if (rep.train.interrupted)
    throw Interrupted("interrupted at step " + std::to_string(rep.train.steps_done) +
                      "; progress saved to " + o.trainer.checkpoint_path() +
                      "; rerun the same command to resume");
  const std::string curve = training_figure_path(out, ctx.globals.figure_format);
  auto c = training_curve(rep.train, title, loss_label);
  c.val_label = val_label;
  training_curve_figure(curve, ctx.globals.figure_format, c);
  json r = rep.to_json();
  r["figure"] = curve;
  return r;
}

// FAB's options of bg train --objective fab (--batch-size is its batch), checked.
FabOptions bg_fab_from(const po::variables_map& vm, const BGTrainOptions& o) {
  FabOptions fab;
  fab.batch = vm["batch-size"].as<int64_t>();
  fab_sampler_from(vm, fab);
  fab.trainer = o.trainer;
  fab.check();
  return fab;
}

// bg train --objective fab: the generator from the energy alone, started at the PDB structure.
json bg_train_fab(const po::variables_map& vm, const MoleculeSpec& m, const BGTrainOptions& o,
                  const std::string& out, Context& ctx, const json& provenance) {
  const auto fab = bg_fab_from(vm, o);
  OpenMMEnergy energy(m.system, m.temperature, OpenMMOptions{"Reference", ctx.globals.threads});
  json extra = {{"pdb", m.pdb}, {"system", m.system}, {"temperature", m.temperature},
                {"options", o.to_json()}};
  if (!provenance.is_null()) extra["provenance"] = provenance;
  if (!ctx.globals.quiet)
    ctx.err << "bg train: FAB from the energy alone (" << m.system << ", " << m.temperature << " K), "
            << o.coordinates << " coordinates, " << o.trainer.steps() << " steps, batch " << fab.batch << ", AIS "
            << fab.ais.intermediate << " x HMC(" << fab.ais.hmc.leapfrog << " leapfrog), alpha " << fab.ais.alpha
            << (fab.buffer ? ", replay buffer" : ", no buffer");
  if (!ctx.globals.quiet && o.anneal_stages > 1)
    ctx.err << ", annealed from " << o.anneal_factor * m.temperature << " K in " << o.anneal_stages << " stages";
  if (!ctx.globals.quiet) ctx.err << std::endl;
  const auto t0 = std::chrono::steady_clock::now();
  const auto rep = train_generator_fab(m.z, energy, m.mol.positions().reshape({-1}), stereocentres(m.mol), o,
                                       fab, out, extra, [] { return stop_requested(); }, resume_message(o, ctx));
  json r = finish_bg_training(rep, o, out, "bg train (FAB): " + std::filesystem::path(m.system).filename().string() + " (" + o.coordinates + " coordinates)",
                              "FAB loss (weighted -log q, nats)", ctx, "log(1 / Kish ESS fraction)");
  r["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// --objective, checked against the options that belong to the other one.
std::string objective_from(const po::variables_map& vm, const BGTrainOptions& o) {
  const std::string objective = vm["objective"].as<std::string>();
  if (objective != "kl" && objective != "fab")
    usage_error("--objective", "'" + objective + "', expected kl or fab");
  if (objective == "fab" && o.reverse_weight > 0) usage_error("--reverse-weight", "applies to --objective kl only");
  if (objective == "kl" && o.anneal_stages > 1) usage_error("--anneal-from", "applies to --objective fab only");
  return objective;
}

}  // namespace

json bg_train_config(const po::variables_map& vm, const std::string& out, Context& ctx) {
  const auto o = bg_train_from(vm, out, ctx);
  json j = o.to_json();
  j["objective"] = objective_from(vm, o);
  if (j["objective"] == "fab") {
    j["fab"] = bg_fab_from(vm, o).to_json();
    j["fab"].erase("trainer");  // in j already
  }
  return j;
}

json bg_train(const po::variables_map& vm, const MoleculeSpec& m, const std::string& md_path,
              const std::string& out, Context& ctx, const json& provenance) {
  const auto o = bg_train_from(vm, out, ctx);
  check_writable(out);
  if (objective_from(vm, o) == "fab") {
    o.check_fab();  // before the progress line
    return bg_train_fab(vm, m, o, out, ctx, provenance);
  }
  if (md_path.empty()) usage_error("--md", "is required with --objective kl (forward KL trains on MD frames)");
  const auto traj = read_trajectory(md_path, m.mol.size());
  std::unique_ptr<OpenMMEnergy> energy;
  if (o.reverse_weight > 0.0)
    energy = std::make_unique<OpenMMEnergy>(m.system, m.temperature,
                                            OpenMMOptions{"Reference", ctx.globals.threads});
  json extra = {{"pdb", m.pdb}, {"system", m.system}, {"temperature", m.temperature},
                {"md", md_path}, {"options", o.to_json()}};
  if (!provenance.is_null()) extra["provenance"] = provenance;
  const auto rep = train_generator(m.z, traj, energy.get(), o, out, extra, [] { return stop_requested(); },
                                   resume_message(o, ctx));
  return finish_bg_training(rep, o, out, "bg train: " + std::filesystem::path(m.system).filename().string() + " (" + o.model + ", " + o.coordinates + " coordinates)",
                            o.reverse_weight > 0 ? "loss: NLL + reverse-KL term (nats)" : "negative log-likelihood (nats)",
                            ctx);
}

// A model of another molecule (atom count) or of another atom order / bond graph (Z-matrix):
// a usage error naming both files.
void check_generator_matches(BoltzmannGenerator& bg, const std::string& model, const MoleculeSpec& m) {
  if (bg.zmatrix().atoms() != m.mol.size())
    usage_error("--model", model + " is for " + std::to_string(bg.zmatrix().atoms()) +
                               " atoms, but " + m.pdb + " has " + std::to_string(m.mol.size()));
  if (bg.zmatrix().rows != m.z.rows)
    usage_error("--model", model + " was trained on another molecule (its Z-matrix differs from the one of " +
                               m.pdb + ")");
}

// ---- sample ---------------------------------------------------------------------------------

po::options_description bg_sample_options() {
  po::options_description o("sampling");
  o.add_options()
      ("n,n", po::value<int64_t>()->default_value(20000), "samples")
      ("batch", po::value<int64_t>()->default_value(4096), "samples per pass")
      ("smc", po::value<int64_t>()->default_value(0), "sequential Monte Carlo from the generator to the Boltzmann distribution (Sequential Boltzmann Generators) with this many intermediate densities; 0 = plain importance sampling")
      ("smc-kernel", po::value<std::string>()->default_value("mala"), "SMC moves: mala (Metropolis-adjusted Langevin), ula (unadjusted, as SBG) or hmc")
      ("smc-step", po::value<double>()->default_value(1e-3, "0.001"), "initial SMC step size (nm), adapted towards 65% acceptance (mala, hmc)")
      ("smc-leapfrog", po::value<int64_t>()->default_value(5), "leapfrog steps per HMC move (--smc-kernel hmc)")
      ("smc-moves", po::value<int64_t>()->default_value(1), "MCMC moves per intermediate density")
      ("smc-resample", po::value<double>()->default_value(0.5), "resample when the normalised ESS falls below this (0 = never: annealed importance sampling)")
      ("smc-resampling", po::value<std::string>()->default_value("systematic"), "systematic or multinomial")
      ("smc-energy-cut", po::value<double>(), "drop generator samples above this reduced energy before SMC (SBG's cut-off; default: none)");
  return o;
}

BGSampleOptions bg_sample_from(const po::variables_map& vm, Context& ctx) {
  BGSampleOptions o;
  o.n = vm["n"].as<int64_t>();
  o.batch = vm["batch"].as<int64_t>();
  o.seed = ctx.globals.seed;
  o.quiet = ctx.globals.quiet;
  check_positive_int("-n", "value", o.n);
  check_positive_int("--batch", "value", o.batch);
  o.smc_steps = vm["smc"].as<int64_t>();
  if (o.smc_steps < 0 || o.smc_steps > 10000) usage_error("--smc", "must be in 0..10000 (0 = off)");
  if (o.smc_steps > 0) {
    o.smc.intermediate = o.smc_steps;
    o.smc.kernel = vm["smc-kernel"].as<std::string>();
    if (o.smc.kernel != "mala" && o.smc.kernel != "ula" && o.smc.kernel != "hmc")
      usage_error("--smc-kernel", "'" + o.smc.kernel + "', expected mala, ula or hmc");
    o.smc.hmc.step_size = vm["smc-step"].as<double>();
    check_positive("--smc-step", "value", o.smc.hmc.step_size);
    o.smc.hmc.leapfrog = vm["smc-leapfrog"].as<int64_t>();
    check_positive_int("--smc-leapfrog", "value", o.smc.hmc.leapfrog);
    o.smc.moves = vm["smc-moves"].as<int64_t>();
    check_positive_int("--smc-moves", "value", o.smc.moves);
    o.smc.resample_threshold = vm["smc-resample"].as<double>();
    check_in_range("--smc-resample", "value", o.smc.resample_threshold, 0.0, 1.0);
    o.smc.resampling = vm["smc-resampling"].as<std::string>();
    if (o.smc.resampling != "systematic" && o.smc.resampling != "multinomial")
      usage_error("--smc-resampling", "'" + o.smc.resampling + "', expected systematic or multinomial");
    if (vm.count("smc-energy-cut")) o.smc.energy_cut = vm["smc-energy-cut"].as<double>();
    o.smc.check();
  }
  return o;
}

json bg_sample(const po::variables_map& vm, const MoleculeSpec& m, const std::string& model,
               const std::string& out, Context& ctx, const json& provenance) {
  const auto o = bg_sample_from(vm, ctx);
  check_writable(out);
  auto bg = load_generator(model);
  check_generator_matches(bg, model, m);
  OpenMMEnergy energy(m.system, m.temperature, OpenMMOptions{"Reference", ctx.globals.threads});
  auto rep = sample_generator(bg, energy, o, [] { return stop_requested(); });
  if (rep.interrupted) throw Interrupted("interrupted while sampling; nothing written");
  rep.samples.model = model;
  rep.samples.system = m.system;
  rep.samples.temperature_kelvin = m.temperature;
  rep.samples.provenance = provenance;
  // SMC weights are not -u - log q: the file says how they were made (bg run's stage
  // configuration already holds the SMC options).
  if (o.smc_steps > 0 && !(provenance.is_object() && provenance.contains("smc")))
    rep.samples.provenance["smc"] = rep.smc;
  write_samples(out, rep.samples);
  json r = rep.to_json();
  r["out"] = out;
  return r;
}

// ---- eval -----------------------------------------------------------------------------------

po::options_description bg_eval_options() {
  po::options_description o("evaluation");
  o.add_options()
      ("clip", po::value<double>()->default_value(0.0), "clip log-weights above this quantile, e.g. 0.999 (0 = off)")
      ("clip-top", po::value<double>()->default_value(0.0), "drop this fraction of the largest log-weights before resampling, as SBG and ArBG do (0.002); unclipped numbers are reported beside (0 = off)")
      ("chirality", po::value<std::string>()->default_value("exclude"), "samples with a wrong-handed stereocentre (D-amino acid): exclude (zero weight), mirror (their mirror images, weights kept) or keep")
      ("bootstrap", po::value<int64_t>()->default_value(200), "bootstrap rounds for error bars")
      ("w2-samples", po::value<int64_t>()->default_value(10000), "samples per side for T-W2 and TICA-W2 (exact optimal transport, certified)")
      ("w2-repeat-samples", po::value<int64_t>()->default_value(2000), "samples per side in each of the --w2-repeats subsamples")
      ("w2-repeats", po::value<int64_t>()->default_value(3), "independent subsamples for the W2 error bars")
      ("tica-lag", po::value<int64_t>()->default_value(100), "TICA lag in reference frames (capped at half the shortest walker)")
      ("energy-cut", po::value<double>(), "raw E-W2 and the raw energy histogram use BG samples with reduced energy below this (default: 20 above the reference's 99.9% quantile)");
  return o;
}

json bg_eval(const po::variables_map& vm, const MoleculeSpec& m, const std::string& samples,
             const std::string& reference, const std::string& model,
             const std::string& fig_prefix, Context& ctx) {
  BGEvalOptions o;
  o.temperature_kelvin = m.temperature;
  o.clip = vm["clip"].as<double>();
  o.clip_top = vm["clip-top"].as<double>();
  o.chirality = vm["chirality"].as<std::string>();
  o.w2_repeats = vm["w2-repeats"].as<int64_t>();
  o.tica_lag = vm["tica-lag"].as<int64_t>();
  o.bootstrap = vm["bootstrap"].as<int64_t>();
  o.w2_samples = vm["w2-samples"].as<int64_t>();
  o.w2_repeat_samples = vm["w2-repeat-samples"].as<int64_t>();
  if (vm.count("energy-cut")) o.energy_cut = vm["energy-cut"].as<double>();
  o.seed = ctx.globals.seed;
  o.check();
  auto s = read_samples(samples, m.mol.size());
  const auto traj = read_trajectory(reference, m.mol.size());
  std::optional<BoltzmannGenerator> bg;
  double held_out = 0.0;
  bool same_as_training = false;
  if (!model.empty()) {
    json meta;
    bg.emplace(load_generator(model, &meta));
    check_generator_matches(*bg, model, m);
    // The training trajectory: its held-out tail; any other file: every frame is unseen.
    std::error_code ec;
    const std::string trained_on = meta.value("md", std::string());
    same_as_training = !trained_on.empty() && std::filesystem::equivalent(trained_on, reference, ec);
    held_out = same_as_training ? meta.value("held_out", 0.2) : 1.0;
  }
  const auto rep = evaluate_generator(m.mol, s, traj, o, bg ? &*bg : nullptr, held_out);
  json res = rep.to_json();
  res["reference_kind"] = model.empty() ? "given" : same_as_training ? "the training trajectory (metrics) and its held-out tail (NLL)"
                                                                     : "independent of training";
  res["samples"] = samples;
  if (!fig_prefix.empty()) {
    const auto fmt = ctx.globals.figure_format;
    const std::string rama = figure_path(fig_prefix + "ramachandran", fmt);
    const std::string energy = figure_path(fig_prefix + "energy", fmt);
    const std::string weights = figure_path(fig_prefix + "log_weights", fmt);
    ramachandran_figure(rama, fmt, rep.rama_reference, rep.rama_samples, rep.log_w);
    const auto& u = rep.u_samples;
    const double lo = torch::quantile(rep.u_reference, 0.001).item<double>() - 5.0;
    const double hi = std::min(rep.e_w2_cut, torch::quantile(rep.u_reference, 0.999).item<double>() + 15.0);
    energy_figure(energy, fmt, rep.u_reference, u.masked_select(torch::isfinite(u)), rep.u_resampled, lo, hi);
    log_weight_figure(weights, fmt, rep.log_w, rep.ess_fraction,
                      o.clip > 0 ? "log-weights clipped at the " + std::to_string(o.clip) + " quantile" : "unclipped");
    res["figures"] = {{"ramachandran", rama}, {"energy", energy}, {"log_weights", weights}};
    if (rep.tica_reference.defined()) {
      const std::string tica = figure_path(fig_prefix + "tica", fmt);
      tica_figure(tica, fmt, rep.tica_reference, rep.tica_samples, rep.tica_resampled, rep.tica_lag,
                  rep.tica_eigenvalues);
      res["figures"]["tica"] = tica;
    }
  }
  return res;
}

void print_report(const json& r, std::ostream& os) {
  auto fmt = [](double v, double e) {
    std::ostringstream s;
    s << std::fixed << std::setprecision(2) << v << " ± " << e;
    return s.str();
  };
  os << std::fixed << std::setprecision(2);
  os << "samples: " << r["n_samples"].get<int64_t>() << ", Kish ESS "
     << 100.0 * r["ess_fraction"].get<double>() << "% of samples";
  if (r.contains("clip_quantile"))
    os << " (log-weights clipped at the " << r["clip_quantile"].get<double>()
       << " quantile; unclipped " << 100.0 * r["ess_fraction_unclipped"].get<double>() << "%)";
  os << ", " << r["infinite_energies"].get<int64_t>() << " with infinite energy\n";
  if (r.contains("clip_top"))
    os << "  (the largest " << r["clip_top"]["dropped"].get<int64_t>() << " log-weights dropped, --clip-top "
       << r["clip_top"]["fraction"].get<double>() << "; unclipped Kish ESS "
       << 100.0 * r["ess_fraction_unclipped"].get<double>() << "%)\n";
  const auto& ch = r["chirality"];
  os << "chirality: " << ch["wrong_samples"].get<int64_t>() << " samples ("
     << 100.0 * ch["wrong_fraction"].get<double>() << "%) with a wrong-handed stereocentre of "
     << ch["stereocentres"].get<int64_t>() << " (" << ch["policy"].get<std::string>() << "); "
     << ch["wrong_reference_frames"].get<int64_t>() << " in the reference\n";
  if (r.contains("reference_kind"))
    os << "reference: " << r["reference"].get<std::string>() << " (" << r["reference_kind"].get<std::string>() << ")\n";
  os << "free energies relative to C7eq/beta [k_B T]:\n";
  os << "  basin          MD reference      BG raw            BG reweighted\n";
  for (size_t b = 0; b < r["md"]["basins"].size(); ++b) {
    const auto& md = r["md"]["basins"][b];
    const auto& raw = r["bg_raw"]["basins"][b];
    const auto& rw = r["bg_reweighted"]["basins"][b];
    const std::string name = md["basin"].get<std::string>();
    os << "  " << name << std::string(name.size() < 15 ? 15 - name.size() : 1, ' ');
    for (const auto* s : {&md, &raw, &rw}) {
      const std::string t = fmt((*s)["delta_f"]["value"].get<double>(),
                                (*s)["delta_f"]["error"].get<double>());
      os << t << std::string(t.size() < 18 ? 18 - t.size() : 1, ' ');
    }
    os << "\n";
  }
  os << std::setprecision(3);
  os << "E-W2 (reduced energy): raw ";
  if (r["e_w2"]["raw"].is_null())
    os << "none";
  else
    os << r["e_w2"]["raw"].get<double>();
  os << " (samples with u < "
     << std::setprecision(1) << r["e_w2"]["raw_energy_cut"].get<double>() << "; "
     << r["e_w2"]["raw_excluded"].get<int64_t>() << " above it excluded), reweighted " << std::setprecision(3)
     << r["e_w2"]["reweighted"].get<double>() << "\n";
  auto pm = [](const json& e) {
    std::ostringstream s;
    s << std::fixed << std::setprecision(3) << e["value"].get<double>() << " ± " << e["error"].get<double>();
    return s.str();
  };
  const auto& tw = r["t_w2"];
  os << "T-W2 (phi/psi torus, " << tw["samples"].get<int64_t>() << " samples): raw "
     << tw["raw"].get<double>() << ", reweighted " << tw["reweighted"].get<double>() << "; over "
     << tw["repeats"].get<int64_t>() << " random subsamples of " << tw["repeat_samples"].get<int64_t>() << " raw "
     << pm(tw["raw_repeats"]) << ", reweighted " << pm(tw["reweighted_repeats"]) << "\n";
  const auto& ti = r["tica_w2"];
  if (ti.contains("error"))
    os << "TICA-W2: none (" << ti["error"].get<std::string>() << ")\n";
  else
    os << "TICA-W2 (2 slowest TICA components of the reference, lag " << ti["lag_frames"].get<int64_t>()
       << " frames, " << ti["samples"].get<int64_t>() << " samples): raw " << ti["raw"].get<double>()
       << ", reweighted " << ti["reweighted"].get<double>() << "; over " << ti["repeats"].get<int64_t>()
       << " random subsamples of " << ti["repeat_samples"].get<int64_t>() << " raw " << pm(ti["raw_repeats"])
       << ", reweighted " << pm(ti["reweighted_repeats"]) << "\n";
  os << "KL(MD || BG) Ramachandran: raw " << r["rama_kl"]["raw"].get<double>() << ", reweighted "
     << r["rama_kl"]["reweighted"].get<double>() << "\n";
  if (r.contains("held_out_nll"))
    os << "held-out MD NLL: " << r["held_out_nll"]["value"].get<double>() << " ± "
       << r["held_out_nll"]["error"].get<double>() << " nats ("
       << r["held_out_nll"]["frames"].get<int64_t>() << " frames)\n";
  if (r.contains("figures"))
    os << "figures: " << r["figures"]["ramachandran"].get<std::string>()
       << " (MD / BG raw / BG reweighted, ln density), " << r["figures"]["energy"].get<std::string>()
       << " (reduced-energy histograms), " << r["figures"]["log_weights"].get<std::string>()
       << " (log-weight histogram)"
       << (r["figures"].contains("tica") ? ", " + r["figures"]["tica"].get<std::string>() + " (TICA components)" : std::string())
       << "\n";
}

}  // namespace nfkit::cli
