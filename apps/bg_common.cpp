#include "bg_common.h"

#include "flow_common.h"

#include <torch/torch.h>

#include <cmath>
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
  std::vector<bool> heavy;
  for (const auto& a : m.mol.atoms) heavy.push_back(a.element != "H");
  m.z = zmatrix_from_bonds(m.mol.size(), guess_bonds(m.mol), heavy);
  return m;
}

po::options_description molecule_options() {
  po::options_description o("molecule");
  o.add_options()
      ("pdb", po::value<std::string>()->default_value("data/alanine_dipeptide/ala2.pdb"), "structure (PDB)")
      ("system", po::value<std::string>()->default_value("data/alanine_dipeptide/system.xml"), "OpenMM System (serialized XML)")
      ("temperature", po::value<double>()->default_value(300.0), "temperature in K");
  return o;
}

MoleculeSpec molecule_from(const po::variables_map& vm) {
  return load_molecule(vm["pdb"].as<std::string>(), vm["system"].as<std::string>(),
                       vm["temperature"].as<double>());
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
      ("platform", po::value<std::string>()->default_value("Reference"), "OpenMM platform (Reference, CPU)");
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
  o.threads = ctx.globals.threads;
  o.seed = ctx.globals.seed;
  o.quiet = ctx.globals.quiet;
  check_positive_int("--walkers", "value", o.walkers);
  check_positive_int("--frames", "value", o.frames);
  check_positive_int("--steps-per-frame", "value", o.steps_per_frame);
  check_nonnegative("--equilibration", "value", static_cast<double>(o.equilibration_frames));
  check_positive("--timestep", "value", o.timestep);
  check_positive("--friction", "value", o.friction);
  return o;
}

Trajectory read_trajectory(const std::string& path, int64_t atoms) {
  H5Reader r(path);
  r.expect_format("trajectory", 1);
  Trajectory t;
  const auto P = r.read("/positions");
  if (P.dim() != 3 || P.size(1) != atoms || P.size(2) != 3)
    runtime_error(path, "/positions has shape " + shape_string(P) + ", expected [T, " +
                            std::to_string(atoms) + ", 3]");
  t.x = P.to(torch::kFloat64).reshape({P.size(0), 3 * atoms});
  t.energy = r.read("/potential_energy").to(torch::kFloat64);
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

// ---- train ----------------------------------------------------------------------------------

po::options_description bg_train_options() {
  po::options_description o("training");
  o.add_options()
      ("layers", po::value<int64_t>()->default_value(4), "blocks of four spline couplings")
      ("hidden", po::value<int64_t>()->default_value(128), "hidden units per conditioner layer")
      ("hidden-layers", po::value<int64_t>()->default_value(2), "hidden layers per conditioner")
      ("bins", po::value<int64_t>()->default_value(8), "spline bins")
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
      ("coordinates", po::value<std::string>()->default_value("internal"), "what the flow models: internal (bonds, angles, torsions) or cartesian (free coordinates in the canonical frame)")
      ("init", po::value<std::string>()->default_value(""), "start from this model's weights (fine-tuning), not a fresh flow")
      ("restart", po::bool_switch(), "ignore an existing checkpoint");
  return o;
}

json bg_train(const po::variables_map& vm, const MoleculeSpec& m, const std::string& md_path,
              const std::string& out, Context& ctx) {
  const std::string dt = vm["dtype"].as<std::string>();
  if (dt != "float32" && dt != "float64")
    usage_error("--dtype", "'" + dt + "' is not a dtype, expected float32 or float64");
  const auto dtype = dt == "float64" ? torch::kFloat64 : torch::kFloat32;
  const double rw = vm["reverse-weight"].as<double>();
  check_in_range("--reverse-weight", "value", rw, 0.0, 1.0);
  const double held = vm["held-out"].as<double>();
  check_in_range("--held-out", "value", held, 0.0, 0.9);
  ICFlowRecipe recipe;
  recipe.layers = vm["layers"].as<int64_t>();
  recipe.hidden = vm["hidden"].as<int64_t>();
  recipe.hidden_layers = vm["hidden-layers"].as<int64_t>();
  recipe.bins = vm["bins"].as<int64_t>();
  recipe.seed = derive_seed(ctx.globals.seed, 31, 0);
  check_positive_int("--layers", "value", recipe.layers);
  check_positive_int("--hidden", "value", recipe.hidden);
  if (recipe.bins < 2) usage_error("--bins", "must be >= 2");
  auto opts = trainer_options_from(vm, out, ctx);
  check_writable(out);

  const std::string coords = vm["coordinates"].as<std::string>();
  if (coords != "internal" && coords != "cartesian")
    usage_error("--coordinates", "'" + coords + "', expected internal or cartesian");
  const auto traj = read_trajectory(md_path, m.mol.size());
  auto [fit_idx, test_idx] = split_held_out(traj, held);
  const auto x_fit = traj.x.index_select(0, fit_idx);
  const auto q_all = coords == "cartesian" ? to_canonical(m.z, x_fit).c : to_internal(m.z, x_fit).q;
  const int64_t N = q_all.size(0);
  if (N < 20) runtime_error(md_path, "has " + std::to_string(N) + " training frames, too few");
  seed_all(derive_seed(ctx.globals.seed, 32, 0));
  const auto perm = torch::randperm(N, torch::kInt64);
  const int64_t n_val = std::max<int64_t>(1, N / 10);
  const auto val = q_all.index_select(0, perm.narrow(0, 0, n_val));
  const auto train = q_all.index_select(0, perm.narrow(0, n_val, N - n_val));

  seed_all(derive_seed(ctx.globals.seed, 32, 1));
  std::shared_ptr<Flow> flow;
  const std::string init = vm["init"].as<std::string>();
  if (!init.empty()) {
    json init_meta;
    auto g = load_generator(init, &init_meta);
    if (g.zmatrix().rows != m.z.rows)
      usage_error("--init", init + " was trained with another Z-matrix (another molecule?)");
    if (g.coordinates() != coords)
      usage_error("--init", init + " models " + g.coordinates() + " coordinates, not " + coords);
    flow = g.flow_ptr();
  } else {
    if (coords == "cartesian") {
      FlowRecipe fr;
      fr.kind = "nsf";
      fr.dim = m.z.internal_dim();
      fr.layers = 4 * recipe.layers;  // as many couplings as the internal-coordinate flow
      fr.hidden = recipe.hidden;
      fr.hidden_layers = recipe.hidden_layers;
      fr.bins = recipe.bins;
      fr.bound = 5.0;
      fr.seed = recipe.seed;
      flow = build_flow(fr, train);
    } else {
      flow = build_ic_flow(m.z, train, recipe);
    }
  }
  flow->to(ctx.globals.device, dtype);

  std::unique_ptr<OpenMMEnergy> energy;
  Objective obj;
  obj.reverse_weight = rw;
  if (rw < 1.0) {
    obj.train = train;
    // With an energy term, validation is the reverse-KL estimate (it tracks the weights).
    if (rw == 0.0) obj.val = val;
  }
  if (rw > 0.0) {
    energy = std::make_unique<OpenMMEnergy>(m.system, m.temperature,
                                            OpenMMOptions{"Reference", ctx.globals.threads});
    OpenMMEnergy* e = energy.get();
    const ZMatrix z = m.z;
    if (coords == "cartesian") {
      obj.energy = [e, z](const torch::Tensor& c) {
        torch::Tensor x;
        const auto cc = from_canonical(z, c, &x);
        // Outside the canonical frame: the cut's maximum (zero gradient).
        const auto u = reduced_energy(*e, x) + torch::nan_to_num(cc.logdet, 1e12);
        return linlog_cut(u);
      };
    } else {
      obj.energy = [e, z](const torch::Tensor& q) {
        return linlog_cut(
            internal_energy(z, q, [e](const torch::Tensor& x) { return reduced_energy(*e, x); }));
      };
    }
  }
  const json metadata = {
      {"kind", "boltzmann_generator"}, {"coordinates", coords}, {"zmatrix", m.z.to_json()}, {"pdb", m.pdb},
      {"system", m.system}, {"temperature", m.temperature}, {"md", md_path},
      {"held_out", held}, {"n_train", train.size(0)}, {"n_val", val.size(0)},
      {"reverse_weight", rw}, {"init", init},
      {"recipe", {{"layers", recipe.layers}, {"hidden", recipe.hidden},
                  {"hidden_layers", recipe.hidden_layers}, {"bins", recipe.bins}}},
      {"trainer", opts.to_json()}, {"nfkit_version", version_string()}};
  Trainer trainer(flow, opts, obj, metadata);
  trainer.should_stop = [](int64_t) { return stop_requested(); };
  if (!vm["restart"].as<bool>() && file_exists(opts.checkpoint_path())) {
    trainer.load_checkpoint(opts.checkpoint_path());
    if (!ctx.globals.quiet)
      ctx.err << "resuming from " << opts.checkpoint_path() << " at step " << trainer.step()
              << std::endl;
  }
  const auto rep = trainer.train();
  if (rep.interrupted)
    throw Interrupted("interrupted at step " + std::to_string(rep.steps_done) +
                      "; progress saved to " + opts.checkpoint_path() +
                      "; rerun the same command to resume");
  json meta = metadata;
  meta["best_step"] = rep.best_step;
  meta["best_val"] = rep.best_val;
  flow->to(torch::kCPU, torch::kFloat64);
  save_flow(out, *flow, meta);
  std::remove(opts.checkpoint_path().c_str());
  const std::string curve = training_figure_path(out, ctx.globals.figure_format);
  training_curve_figure(curve, ctx.globals.figure_format,
                        training_curve(rep, "bg train: " + m.system + " (" + coords + " coordinates)",
                                       rw > 0 ? "loss: NLL + reverse-KL term (nats)" : "negative log-likelihood (nats)"));
  return {{"model", out}, {"steps", rep.steps_done}, {"best_step", rep.best_step},
          {"best_val", rep.best_val}, {"n_train", train.size(0)}, {"n_val", val.size(0)},
          {"dim", flow->dim()}, {"figure", curve}};
}

BoltzmannGenerator load_generator(const std::string& path, json* metadata) {
  auto loaded = load_flow(path);
  if (!loaded.metadata.contains("zmatrix"))
    runtime_error(path, "is not a Boltzmann-generator model (no zmatrix in its metadata)");
  if (metadata) *metadata = loaded.metadata;
  loaded.flow->to(torch::kCPU, torch::kFloat64);
  return BoltzmannGenerator(ZMatrix::from_json(loaded.metadata.at("zmatrix")), loaded.flow,
                            loaded.metadata.value("coordinates", std::string("internal")));
}

// ---- sample ---------------------------------------------------------------------------------

po::options_description bg_sample_options() {
  po::options_description o("sampling");
  o.add_options()
      ("n,n", po::value<int64_t>()->default_value(20000), "samples")
      ("batch", po::value<int64_t>()->default_value(4096), "samples per pass");
  return o;
}

json bg_sample(const po::variables_map& vm, const MoleculeSpec& m, const std::string& model,
               const std::string& out, Context& ctx) {
  const int64_t n = vm["n"].as<int64_t>();
  check_positive_int("-n", "value", n);
  const int64_t batch = vm["batch"].as<int64_t>();
  check_positive_int("--batch", "value", batch);
  check_writable(out);
  auto bg = load_generator(model);
  if (bg.zmatrix().atoms() != m.mol.size())
    usage_error("--model", model + " is for " + std::to_string(bg.zmatrix().atoms()) +
                               " atoms, but " + m.pdb + " has " + std::to_string(m.mol.size()));
  OpenMMEnergy energy(m.system, m.temperature, OpenMMOptions{"Reference", ctx.globals.threads});
  seed_all(derive_seed(ctx.globals.seed, 33, 0));
  ProgressOptions po;
  po.quiet = ctx.globals.quiet;
  Progress progress("sample", n, po);
  std::vector<torch::Tensor> xs, lqs, us;
  for (int64_t done = 0; done < n; done += batch) {
    if (stop_requested()) throw Interrupted("interrupted while sampling; nothing written");
    auto [x, lq] = bg.sample(std::min(batch, n - done));
    xs.push_back(x);
    lqs.push_back(lq);
    us.push_back(energy.evaluate(x));
    progress.update(std::min(n, done + batch));
  }
  progress.finish();
  const auto x = torch::cat(xs), log_q = torch::cat(lqs), u = torch::cat(us);
  auto log_w = -u - log_q;
  log_w = torch::where(torch::isnan(log_w), torch::full_like(log_w, -INFINITY), log_w);
  H5Writer w(out, "samples", 1);
  w.write("/x", x);
  w.write("/log_q", log_q);
  w.write("/u", u);
  w.write("/log_w", log_w);
  w.set_attr("/", "model", model);
  w.set_attr("/", "system", m.system);
  w.set_attr("/", "temperature", m.temperature);
  w.commit();
  const double ess = ess_fraction(log_w);
  const int64_t infinite = (~torch::isfinite(u)).sum().item<int64_t>();
  return {{"out", out}, {"n", n}, {"ess_fraction", ess}, {"infinite_energies", infinite}};
}

// ---- eval -----------------------------------------------------------------------------------

po::options_description bg_eval_options() {
  po::options_description o("evaluation");
  o.add_options()
      ("clip", po::value<double>()->default_value(0.0), "clip log-weights above this quantile, e.g. 0.999 (0 = off)")
      ("bootstrap", po::value<int64_t>()->default_value(200), "bootstrap rounds for error bars")
      ("w2-samples", po::value<int64_t>()->default_value(1000), "samples per side for T-W2 (exact assignment, O(n^3))")
      ("energy-cut", po::value<double>(), "raw E-W2 and the raw energy histogram use BG samples with reduced energy below this (default: 20 above the reference's 99.9% quantile)");
  return o;
}

namespace {

json estimate(const Estimate& e) { return {{"value", e.value}, {"error", e.error}}; }

json basins_json(const std::vector<BasinStats>& b) {
  json j = json::array();
  for (const auto& s : b)
    j.push_back({{"basin", s.name}, {"probability", estimate(s.probability)},
                 {"delta_f", estimate(s.delta_f)}});
  return j;
}

torch::Tensor evenly(int64_t n, int64_t m) {
  return torch::linspace(0, static_cast<double>(n - 1), std::min(n, m), torch::kFloat64)
      .round()
      .to(torch::kInt64);
}

}  // namespace

json bg_eval(const po::variables_map& vm, const MoleculeSpec& m, const std::string& samples,
             const std::string& reference, const std::string& model,
             const std::string& fig_prefix, Context& ctx) {
  const double clip = vm["clip"].as<double>();
  check_in_range("--clip", "value", clip, 0.0, 1.0);
  const int64_t rounds = vm["bootstrap"].as<int64_t>();
  const int64_t n_w2 = vm["w2-samples"].as<int64_t>();
  check_positive_int("--w2-samples", "value", n_w2);
  const auto dih = backbone_dihedrals(m.mol);
  const double kT = kBoltzmann * m.temperature;

  H5Reader r(samples);
  r.expect_format("samples", 1);
  for (const char* d : {"/x", "/log_q", "/u", "/log_w"})
    if (!r.exists(d)) runtime_error(samples, std::string("has no ") + d + " (write it with nfkit bg sample)");
  const auto x = r.read("/x").to(torch::kFloat64);
  const auto u = r.read("/u").to(torch::kFloat64);
  auto log_w = r.read("/log_w").to(torch::kFloat64);
  if (x.size(1) != 3 * m.mol.size())
    runtime_error(samples, "/x has " + std::to_string(x.size(1)) + " coordinates, expected " +
                               std::to_string(3 * m.mol.size()));
  const int64_t n = x.size(0);
  json res;
  res["samples"] = samples;
  res["reference"] = reference;
  res["n_samples"] = n;
  res["ess_fraction_unclipped"] = ess_fraction(log_w);
  if (clip > 0) {
    log_w = clip_log_weights(log_w, clip);
    res["clip_quantile"] = clip;
  }
  res["ess_fraction"] = ess_fraction(log_w);
  res["ess"] = res["ess_fraction"].get<double>() * static_cast<double>(n);
  res["infinite_energies"] = (~torch::isfinite(u)).sum().item<int64_t>();

  const auto traj = read_trajectory(reference, m.mol.size());
  const auto u_md = traj.energy / kT;
  const auto rama_md = ramachandran(traj.x, dih);
  const auto rama_bg = ramachandran(x, dih);
  const uint64_t seed = derive_seed(ctx.globals.seed, 41, 0);
  // MD frames are correlated: moving-block bootstrap with 20 blocks' worth of frames per block
  // (walker-major order, so blocks are stretches of one walker's trajectory).
  const int64_t md_block = std::max<int64_t>(1, traj.x.size(0) / 20);
  res["md"] = {{"frames", traj.x.size(0)},
               {"bootstrap_block", md_block},
               {"basins", basins_json(basin_free_energies(rama_md, {}, rounds, seed, md_block))}};
  res["bg_raw"] = {{"basins", basins_json(basin_free_energies(rama_bg, {}, rounds, seed))}};
  res["bg_reweighted"] = {
      {"basins", basins_json(basin_free_energies(rama_bg, log_w, rounds, seed))}};

  // Resampled (unweighted) reweighted samples for W2 and histograms.
  const auto idx_rw = resample(log_w, n, derive_seed(ctx.globals.seed, 41, 1));
  // The raw BG samples' energies have a far tail (a few clashes at 1e9 k_B T) that would make
  // the raw E-W2 meaningless: as the literature does (ArBG, SBG), the raw metric uses the
  // samples below an energy cut-off, reported with the number it excluded.
  const double u_cut = vm.count("energy-cut") ? vm["energy-cut"].as<double>()
                                              : torch::quantile(u_md, 0.999).item<double>() + 20.0;
  if (!std::isfinite(u_cut)) usage_error("--energy-cut", "must be a finite reduced energy");
  const auto below = torch::isfinite(u) & (u < u_cut);
  const auto u_raw = u.masked_select(below);
  // no sample below the cut (an untrained model): no raw number rather than a meaningless one
  res["e_w2"] = {{"raw", u_raw.numel() > 0 ? json(wasserstein2_1d(u_md, u_raw)) : json(nullptr)},
                 {"raw_energy_cut", u_cut},
                 {"raw_excluded", n - u_raw.numel()},
                 {"reweighted", wasserstein2_1d(u_md, u.index_select(0, idx_rw))}};
  const auto sel_md = evenly(traj.x.size(0), n_w2);
  const int64_t k = sel_md.size(0);
  const auto a = rama_md.index_select(0, sel_md);
  res["t_w2"] = {
      {"samples", k},
      {"raw", torus_wasserstein2(a, rama_bg.index_select(0, evenly(n, k)))},
      {"reweighted", torus_wasserstein2(a, rama_bg.index_select(0, idx_rw.narrow(0, 0, k)))}};
  res["rama_kl"] = {{"raw", ramachandran_kl(rama_md, rama_bg)},
                    {"reweighted", ramachandran_kl(rama_md, rama_bg.index_select(0, idx_rw))}};
  if (!model.empty()) {
    json meta;
    auto bg = load_generator(model, &meta);
    const double frac = meta.value("held_out", 0.2);
    const auto test_idx = split_held_out(traj, frac).second;
    if (test_idx.numel() > 0) {
      torch::NoGradGuard ng;
      const auto lq = bg.log_prob(traj.x.index_select(0, test_idx));
      res["held_out_nll"] = {{"frames", test_idx.numel()},
                             {"value", -lq.mean().item<double>()},
                             {"error", lq.std().item<double>() / std::sqrt(static_cast<double>(test_idx.numel()))}};
    }
  }
  if (!fig_prefix.empty()) {
    const auto fmt = ctx.globals.figure_format;
    const std::string rama = figure_path(fig_prefix + "ramachandran", fmt);
    const std::string energy = figure_path(fig_prefix + "energy", fmt);
    const std::string weights = figure_path(fig_prefix + "log_weights", fmt);
    ramachandran_figure(rama, fmt, rama_md, rama_bg, log_w);
    const double lo = torch::quantile(u_md, 0.001).item<double>() - 5.0;
    const double hi = std::min(u_cut, torch::quantile(u_md, 0.999).item<double>() + 15.0);
    energy_figure(energy, fmt, u_md, u.masked_select(torch::isfinite(u)), u.index_select(0, idx_rw), lo, hi);
    log_weight_figure(weights, fmt, log_w, res["ess_fraction"].get<double>(),
                      clip > 0 ? "log-weights clipped at the " + std::to_string(clip) + " quantile" : "unclipped");
    res["figures"] = {{"ramachandran", rama}, {"energy", energy}, {"log_weights", weights}};
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
  os << "T-W2 (phi/psi torus, " << r["t_w2"]["samples"].get<int64_t>() << " samples): raw "
     << r["t_w2"]["raw"].get<double>() << ", reweighted " << r["t_w2"]["reweighted"].get<double>()
     << "\n";
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
       << " (log-weight histogram)\n";
}

}  // namespace nfkit::cli
