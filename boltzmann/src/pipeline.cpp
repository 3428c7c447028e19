#include "nfkit/boltzmann/pipeline.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "nfkit/boltzmann/reweight.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/progress.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/optimal_transport.h"

namespace nfkit {

using json = nlohmann::json;

ZMatrix zmatrix_for(const Molecule& mol) {
  std::vector<bool> heavy;
  for (const auto& a : mol.atoms) heavy.push_back(a.element != "H");
  return zmatrix_from_bonds(mol.size(), guess_bonds(mol), heavy);
}

// ---- samples --------------------------------------------------------------------------------

void write_samples(const std::string& path, const SampleSet& s) {
  H5Writer w(path, "samples", 1);
  w.write("/x", s.x);
  w.write("/log_q", s.log_q);
  w.write("/u", s.u);
  w.write("/log_w", s.log_w);
  w.set_attr("/", "model", s.model);
  w.set_attr("/", "system", s.system);
  w.set_attr("/", "temperature_kelvin", s.temperature_kelvin);
  if (!s.provenance.is_null()) w.set_attr("/", "provenance", s.provenance.dump());
  w.commit();
}

SampleSet read_samples(const std::string& path, int64_t atoms) {
  H5Reader r(path);
  r.expect_format("samples", 1);
  for (const char* d : {"/x", "/log_q", "/u", "/log_w"})
    if (!r.exists(d))
      runtime_error(path, std::string("has no ") + d +
                              " (Boltzmann-generator samples need /x /log_q /u /log_w; write them "
                              "with nfkit bg sample)");
  SampleSet s;
  s.x = r.read("/x").to(torch::kFloat64);
  s.log_q = r.read("/log_q").to(torch::kFloat64);
  s.u = r.read("/u").to(torch::kFloat64);
  s.log_w = r.read("/log_w").to(torch::kFloat64);
  if (s.x.dim() != 2) runtime_error(path, "/x has shape " + shape_string(s.x) + ", expected [n, 3N]");
  const int64_t n = s.x.size(0);
  for (const auto* t : {&s.log_q, &s.u, &s.log_w})
    if (t->dim() != 1 || t->size(0) != n)
      runtime_error(path, "has " + std::to_string(n) + " samples in /x but a per-sample dataset of shape " +
                              shape_string(*t));
  if (atoms > 0 && s.x.size(1) != 3 * atoms)
    runtime_error(path, "/x has " + std::to_string(s.x.size(1)) + " coordinates, expected " +
                            std::to_string(3 * atoms) + " (samples of another molecule?)");
  if (r.has_attr("/", "model")) s.model = r.attr_string("/", "model");
  if (r.has_attr("/", "system")) s.system = r.attr_string("/", "system");
  if (r.has_attr("/", "provenance")) {
    try {
      s.provenance = json::parse(r.attr_string("/", "provenance"));
    } catch (const std::exception&) {
      runtime_error(path, "attribute provenance is not JSON");
    }
  }
  // Files before the rename called the kelvin temperature "temperature".
  if (r.has_attr("/", "temperature_kelvin"))
    s.temperature_kelvin = r.attr_double("/", "temperature_kelvin");
  else if (r.has_attr("/", "temperature"))
    s.temperature_kelvin = r.attr_double("/", "temperature");
  return s;
}

// ---- generators -----------------------------------------------------------------------------

void save_generator(const std::string& path, BoltzmannGenerator& bg, json metadata) {
  metadata["kind"] = "boltzmann_generator";
  metadata["coordinates"] = bg.coordinates();
  metadata["zmatrix"] = bg.zmatrix().to_json();
  const auto map_config = bg.coordinate_map().config();
  if (!map_config.is_null()) metadata["coordinate_map"] = map_config;
  save_flow(path, bg.model(), metadata);
}

BoltzmannGenerator load_generator(const std::string& path, json* metadata) {
  auto loaded = load_distribution(path);
  if (!loaded.metadata.contains("zmatrix"))
    runtime_error(path, "is not a Boltzmann-generator model (no zmatrix in its metadata)");
  if (metadata) *metadata = loaded.metadata;
  loaded.model->to(torch::kCPU, torch::kFloat64);
  try {
    const auto z = ZMatrix::from_json(loaded.metadata.at("zmatrix"));
    const auto map = make_coordinate_map(loaded.metadata.value("coordinates", std::string("internal")), z,
                                         loaded.metadata.value("coordinate_map", json(nullptr)));
    return BoltzmannGenerator(map, loaded.model);
  } catch (const json::exception& e) {
    runtime_error(path, std::string("metadata zmatrix or coordinates is malformed (") + e.what() + ")");
  }
}

// ---- training -------------------------------------------------------------------------------

void BGTrainOptions::check() const {
  const auto names = coordinate_map_names();
  if (std::find(names.begin(), names.end(), coordinates) == names.end()) {
    std::string known;
    for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
    usage_error("--coordinates", "'" + coordinates + "' is not a coordinate map, expected one of " + known);
  }
  check_in_range("--reverse-weight", "value", reverse_weight, 0.0, 1.0);
  check_in_range("--held-out", "value", held_out, 0.0, 0.9);
  if (pretrain_steps < 0) usage_error("--pretrain-steps", "must be >= 0");
  if (!(anneal_factor >= 1.0) || !std::isfinite(anneal_factor))
    usage_error("--anneal-from", "must be a temperature at or above the target temperature");
  if (anneal_stages < 1 || anneal_stages > 100) usage_error("--anneal-stages", "must be in 1..100");
  if (anneal_stages == 1 && anneal_factor != 1.0)
    usage_error("--anneal-stages", "must be at least 2 to anneal from another temperature");
  model_type(model);
  if (model != "nsf") transformer.check();
  check_positive_int("--layers", "value", recipe.layers);
  check_positive_int("--hidden", "value", recipe.hidden);
  if (recipe.bins < 2) usage_error("--bins", "must be >= 2");
  if (dtype != torch::kFloat32 && dtype != torch::kFloat64)
    usage_error("--dtype", "expected float32 or float64");
}

void BGTrainOptions::check_fab() const {
  check();
  if (model != "nsf")
    usage_error("--model", "FAB trains the spline flows (nsf); " + model + " models train on MD frames");
  if (coordinates == "centred")
    usage_error("--coordinates", "FAB works in internal or cartesian coordinates, not centred");
}

json BGTrainOptions::to_json() const {
  return {{"model", model}, {"transformer", transformer.to_json()},
          {"coordinates", coordinates}, {"reverse_weight", reverse_weight}, {"held_out", held_out},
          {"dtype", dtype == torch::kFloat64 ? "float64" : "float32"}, {"init", init},
          {"seed", seed}, {"pretrain_steps", pretrain_steps},
          {"anneal_factor", anneal_factor}, {"anneal_stages", anneal_stages},
          {"recipe", {{"layers", recipe.layers}, {"hidden", recipe.hidden},
                      {"hidden_layers", recipe.hidden_layers}, {"bins", recipe.bins}}},
          {"trainer", trainer.to_json()}};
}

json BGTrainReport::to_json() const {
  json j = {{"model", model}, {"steps", train.steps_done}, {"best_step", train.best_step},
            {"best_val", train.best_val}, {"n_train", n_train}, {"n_val", n_val}, {"dim", dim}};
  if (!fab.is_null()) j["fab"] = fab;
  return j;
}

namespace {

// The generator of options.init (checked against the molecule and the coordinates), or none
// for a fresh one.
std::optional<BoltzmannGenerator> init_generator(const BGTrainOptions& o, const ZMatrix& z) {
  if (o.init.empty()) return std::nullopt;
  auto g = load_generator(o.init);
  if (g.zmatrix().rows != z.rows)
    usage_error("--init", o.init + " was trained with another Z-matrix (another molecule?)");
  if (g.coordinates() != o.coordinates)
    usage_error("--init", o.init + " models " + g.coordinates() + " coordinates, not " + o.coordinates);
  return g;
}

std::shared_ptr<Flow> init_flow(const BGTrainOptions& o, const ZMatrix& z) {
  auto g = init_generator(o, z);
  if (!g) return nullptr;
  auto flow = g->flow_ptr();
  if (!flow) usage_error("--init", o.init + " holds a " + g->model().config().value("type", std::string("?")) + " model, not a flow");
  return flow;
}

}  // namespace

BGTrainReport train_generator(const ZMatrix& z, const Trajectory& md, Energy* energy,
                              const BGTrainOptions& o, const std::string& out,
                              const json& extra, const std::function<bool()>& stop,
                              const std::function<void(int64_t step)>& on_resume) {
  o.check();
  check_writable(out);
  if (md.x.size(1) != 3 * z.atoms())
    runtime_error(md.path, "holds configurations of " + std::to_string(md.x.size(1) / 3) +
                               " atoms, but the molecule has " + std::to_string(z.atoms()));
  if (o.reverse_weight > 0.0) {
    if (!energy) usage_error("--reverse-weight", "> 0 needs an energy");
    if (energy->dim() != 3 * z.atoms())
      usage_error("energy", energy->name() + " has dimension " + std::to_string(energy->dim()) +
                                ", expected 3N = " + std::to_string(3 * z.atoms()));
  }
  auto [fit_idx, test_idx] = split_held_out(md, o.held_out);
  const auto x_fit = md.x.index_select(0, fit_idx);
  auto map = make_coordinate_map(o.coordinates, z);
  const auto q_all = map->to_flow(x_fit).value;
  const int64_t N = q_all.size(0);
  if (N < 20) runtime_error(md.path, "has " + std::to_string(N) + " training frames, too few");
  seed_all(derive_seed(o.seed, 32, 0));
  const auto perm = torch::randperm(N, torch::kInt64);
  const int64_t n_val = std::max<int64_t>(1, N / 10);
  const auto val = q_all.index_select(0, perm.narrow(0, 0, n_val));
  const auto train = q_all.index_select(0, perm.narrow(0, n_val, N - n_val));

  seed_all(derive_seed(o.seed, 32, 1));
  ICFlowRecipe recipe = o.recipe;
  recipe.seed = derive_seed(o.seed, 31, 0);
  std::shared_ptr<Distribution> flow;
  if (auto g = init_generator(o, z)) {
    if (g->model().config().value("type", std::string()) != model_type(o.model))
      usage_error("--init", o.init + " holds a " + g->model().config().value("type", std::string("?")) +
                                " model, not the " + o.model + " model asked for");
    map = make_coordinate_map(o.coordinates, z, g->coordinate_map().config());
    flow = g->model_ptr();
  } else {
    map->fit(train);
    flow = build_generator_model(o.model, *map, train, recipe, o.transformer);
  }
  flow->to(o.device, o.dtype);

  Objective obj;
  obj.reverse_weight = o.reverse_weight;
  obj.augment = [map](const torch::Tensor& x, const torch::Tensor& ctx) {
    return std::make_tuple(map->augment(x), ctx);
  };
  if (o.reverse_weight < 1.0) {
    obj.train = train;
    // With an energy term, validation is the reverse-KL estimate (it tracks the weights).
    if (o.reverse_weight == 0.0) obj.val = val;
  }
  if (o.reverse_weight > 0.0) {
    Energy* e = energy;
    // Outside the map's range the energy is 1e12: the cut's maximum, with zero gradient.
    obj.energy = [e, map](const torch::Tensor& c) {
      return linlog_cut(map->flow_energy(c, [e](const torch::Tensor& x) { return reduced_energy(*e, x); }));
    };
  }
  json metadata = extra;
  metadata["kind"] = "boltzmann_generator";
  metadata["coordinates"] = o.coordinates;
  if (!map->config().is_null()) metadata["coordinate_map"] = map->config();
  metadata["model"] = o.model;
  metadata["zmatrix"] = z.to_json();
  metadata["held_out"] = o.held_out;
  metadata["n_train"] = train.size(0);
  metadata["n_val"] = val.size(0);
  metadata["reverse_weight"] = o.reverse_weight;
  metadata["init"] = o.init;
  metadata["recipe"] = o.to_json()["recipe"];
  metadata["trainer"] = o.trainer.to_json();
  if (!metadata.contains("energy") && energy) metadata["energy"] = energy->name();
  metadata["nfkit_version"] = version_string();

  BGTrainReport rep;
  rep.model = out;
  rep.n_train = train.size(0);
  rep.n_val = val.size(0);
  rep.dim = flow->dim();
  rep.train = train_resuming(flow, o.trainer, obj, metadata, o.restart, stop, on_resume);
  if (rep.train.interrupted) return rep;
  flow->to(torch::kCPU, torch::kFloat64);
  save_trained(out, *flow, metadata, rep.train, o.trainer.checkpoint_path());
  return rep;
}

// ---- training from the energy alone ----------------------------------------------------------

std::pair<torch::Tensor, double> minimize_energy(Energy& energy, const torch::Tensor& x0, int64_t iterations) {
  check_positive_int("minimize_energy", "iterations", iterations);
  if (x0.numel() != energy.dim())
    usage_error("minimize_energy", "start has " + std::to_string(x0.numel()) + " coordinates, the energy " +
                                       energy.name() + " " + std::to_string(energy.dim()));
  auto x = x0.detach().to(torch::kFloat64).reshape({1, -1}).clone().requires_grad_(true);
  const double u0 = energy.evaluate(x.detach())[0].item<double>();
  if (!std::isfinite(u0))
    runtime_error(energy.name(), "the start configuration has a non-finite energy (" + std::to_string(u0) + ")");
  torch::optim::LBFGS opt({x}, torch::optim::LBFGSOptions(1.0)
                                   .max_iter(iterations)
                                   .history_size(20)
                                   .tolerance_grad(1e-6)
                                   .tolerance_change(1e-12)
                                   .line_search_fn("strong_wolfe"));
  auto closure = [&] {
    opt.zero_grad();
    auto u = reduced_energy(energy, x).sum();
    u.backward();
    return u;
  };
  opt.step(closure);
  torch::NoGradGuard ng;
  const auto xm = x.detach().reshape({-1});
  const double um = energy.evaluate(xm.unsqueeze(0))[0].item<double>();
  // A line search that wandered into a worse point (it does not) would leave the start.
  if (!(um <= u0)) return {x0.detach().to(torch::kFloat64).reshape({-1}), u0};
  return {xm, um};
}

torch::Tensor EnergyOnlyStart::stand_in(int64_t n, double uniform) const {
  check_positive_int("EnergyOnlyStart::stand_in", "n", n);
  check_in_range("EnergyOnlyStart::stand_in", "uniform", uniform, 0.0, 1.0);
  auto c = c_min.unsqueeze(0) + scales.unsqueeze(0) * torch::randn({n, c_min.size(0)}, torch::kFloat64);
  const int64_t grid = scans.defined() ? scans.size(1) : 0;
  const double cell = grid > 0 ? 2 * M_PI / static_cast<double>(grid) : 0.0;
  for (size_t k = 0; k < periodic.size(); ++k) {
    auto col = (torch::rand({n}, torch::kFloat64) * 2.0 - 1.0) * M_PI;
    const auto u = scans[static_cast<int64_t>(k)];
    if (torch::isfinite(u).any().item<bool>()) {
      const auto p = torch::softmax(-torch::nan_to_num(u, INFINITY, INFINITY), 0);
      const auto g = torch::multinomial(p, n, true).to(torch::kFloat64);
      const auto from_scan = -M_PI + (g + torch::rand({n}, torch::kFloat64)) * cell;
      col = torch::where(torch::rand({n}, torch::kFloat64) < uniform, col, from_scan);
    }
    c.select(1, periodic[k]).copy_(col);
  }
  return c;
}

EnergyOnlyStart energy_only_start(const CoordinateMap& map, Energy& energy, const torch::Tensor& x0,
                                  int64_t grid, const std::vector<Stereocentre>& stereocentres) {
  check_positive_int("energy_only_start", "grid", grid);
  EnergyOnlyStart s;
  std::tie(s.x_min, s.u_min) = minimize_energy(energy, x0);
  torch::NoGradGuard ng;
  const auto r = map.to_flow(s.x_min.unsqueeze(0));
  s.c_min = r.value[0];
  const int64_t d = map.dim();
  FlowCoordinateEnergy fe(std::shared_ptr<const CoordinateMap>(&map, [](const CoordinateMap*) {}), energy,
                          stereocentres);
  // Curvatures d2u/dc_i^2 = -(F_i(c + h e_i) - F_i(c - h e_i)) / 2h, all 2D points in one batch.
  constexpr double h = 1e-4;
  const auto eye = torch::eye(d, torch::kFloat64) * h;
  const auto pts = torch::cat({s.c_min.unsqueeze(0) + eye, s.c_min.unsqueeze(0) - eye});
  torch::Tensor f;
  fe.evaluate(pts, &f);
  const auto idx = torch::arange(d, torch::kInt64);
  const auto fp = f.narrow(0, 0, d).index({idx, idx});
  const auto fm = f.narrow(0, d, d).index({idx, idx});
  const auto curv = -(fp - fm) / (2.0 * h);
  auto sc = torch::where(curv > 0, curv.clamp_min(1e-300).rsqrt(), torch::ones_like(curv));
  s.scales = torch::nan_to_num(sc, 1.0, 1.0, 1.0).clamp(1e-4, 1.0);
  // Rigid scans of the periodic columns, all in one batch.
  s.periodic = map.periodic();
  const int64_t np = static_cast<int64_t>(s.periodic.size());
  if (np > 0) {
    const auto theta = -M_PI + (torch::arange(grid, torch::kFloat64) + 0.5) * (2 * M_PI / static_cast<double>(grid));
    auto c = s.c_min.unsqueeze(0).repeat({np * grid, 1});
    for (int64_t k = 0; k < np; ++k) c.narrow(0, k * grid, grid).select(1, s.periodic[static_cast<size_t>(k)]).copy_(theta);
    const auto u0 = fe.evaluate(s.c_min.unsqueeze(0))[0].item<double>();
    s.scans = (torch::nan_to_num(fe.evaluate(c), INFINITY, INFINITY) - u0).reshape({np, grid});
  }
  return s;
}

BGTrainReport train_generator_fab(const ZMatrix& z, Energy& energy, const torch::Tensor& x0,
                                  const std::vector<Stereocentre>& stereocentres, const BGTrainOptions& o, FabOptions fab, const std::string& out,
                                  const json& extra, const std::function<bool()>& stop,
                                  const std::function<void(int64_t step)>& on_resume) {
  o.check_fab();
  check_writable(out);
  if (energy.dim() != 3 * z.atoms())
    usage_error("energy", energy.name() + " has dimension " + std::to_string(energy.dim()) +
                              ", expected 3N = " + std::to_string(3 * z.atoms()));
  if (x0.numel() != 3 * z.atoms())
    usage_error("train_generator_fab", "start configuration has " + std::to_string(x0.numel()) +
                                           " coordinates, expected 3N = " + std::to_string(3 * z.atoms()));
  const auto map = make_coordinate_map(o.coordinates, z);
  if (!stereocentres.empty() && !chirality_ok(x0.reshape({1, -1}).to(torch::kFloat64), stereocentres)[0].item<bool>())
    usage_error("train_generator_fab", "the start configuration does not have the stereocentres' handedness");
  const auto start = energy_only_start(*map, energy, x0, 72, stereocentres);
  fab.trainer = o.trainer;
  if (fab.ais.hmc.scales.empty()) {
    const auto sc = start.scales.contiguous();
    fab.ais.hmc.scales.assign(sc.data_ptr<double>(), sc.data_ptr<double>() + sc.numel());
  }
  fab.check();

  ICFlowRecipe recipe = o.recipe;
  recipe.seed = derive_seed(o.seed, 31, 0);
  std::shared_ptr<Flow> flow = init_flow(o, z);
  if (!flow) {
    seed_all(derive_seed(o.seed, 34, 0));
    const auto fit = start.stand_in(50000), val = start.stand_in(5000);
    seed_all(derive_seed(o.seed, 32, 1));
    flow = map->build_flow(fit, recipe);
    flow->to(o.device, o.dtype);
    // Pretraining: only for a fresh run (a checkpoint to resume holds weights past it).
    const bool resuming = !o.restart && std::filesystem::exists(o.trainer.checkpoint_path());
    if (o.pretrain_steps > 0 && !resuming) {
      Objective ml;
      ml.train = fit;
      ml.val = val;
      auto to = TrainerOptions()
                    .steps(o.pretrain_steps)
                    .batch_size(512)
                    .lr(1e-3)
                    .warmup_steps(std::min<int64_t>(50, o.pretrain_steps / 10))
                    .eval_every(std::max<int64_t>(1, o.pretrain_steps / 5))
                    .seed(derive_seed(o.seed, 34, 1))
                    .quiet(o.trainer.quiet());
      Trainer pre(flow, to, ml);
      pre.should_stop = [&stop](int64_t) { return stop && stop(); };
      const auto pr = pre.train();
      if (pr.interrupted) {
        BGTrainReport rep;
        rep.model = out;
        rep.train = pr;
        return rep;
      }
    }
  }
  flow->to(o.device, o.dtype);

  json metadata = extra;
  metadata["kind"] = "boltzmann_generator";
  metadata["objective"] = "fab";
  metadata["coordinates"] = o.coordinates;
  metadata["zmatrix"] = z.to_json();
  metadata["held_out"] = 0.0;
  metadata["init"] = o.init;
  metadata["recipe"] = o.to_json()["recipe"];
  metadata["trainer"] = o.trainer.to_json();
  metadata["fab"] = fab.to_json();
  metadata["fab"]["ais"].erase("scales");  // the start's widths, below
  json centres = json::array();
  for (const auto& c : stereocentres) centres.push_back(c.name);
  metadata["energy_only_start"] = {{"u_min", start.u_min}, {"scales", fab.ais.hmc.scales},
                                   {"stereocentres_kept", centres},
                                   {"pretrain_steps", o.init.empty() ? o.pretrain_steps : 0}};
  if (!metadata.contains("energy")) metadata["energy"] = energy.name();
  metadata["nfkit_version"] = version_string();

  // Temperature annealing: stage k of K trains at T_k = T * anneal_factor^((K-1-k)/(K-1)),
  // i.e. against u * T / T_k, for its share of the steps, starting from the previous stage's
  // flow (a fresh replay buffer: stored weights belong to their temperature). A finished
  // stage's flow is kept beside the checkpoint until the whole run is done, so an interrupted
  // run resumes in the stage it stopped in.
  const int64_t stages = o.anneal_stages;
  const int64_t total = o.trainer.steps();
  BGTrainReport rep;
  rep.model = out;
  rep.dim = flow->dim();
  json stage_log = json::array();
  std::vector<std::string> stage_files;
  for (int64_t k = 0; k < stages; ++k) {
    const bool last = k == stages - 1;
    const double t_ratio =
        stages == 1 ? 1.0 : std::pow(o.anneal_factor, static_cast<double>(stages - 1 - k) / static_cast<double>(stages - 1));
    const std::string stage_model = o.trainer.checkpoint_path() + ".stage" + std::to_string(k) + ".h5";
    FabOptions fk = fab;
    fk.trainer.steps(last ? total - (stages - 1) * (total / stages) : total / stages);
    if (!last) {
      fk.trainer.checkpoint_path(o.trainer.checkpoint_path() + ".stage" + std::to_string(k));
      stage_files.push_back(stage_model);
      if (!o.restart && std::filesystem::exists(stage_model)) {
        flow = load_generator(stage_model).flow_ptr();
        flow->to(o.device, o.dtype);
        stage_log.push_back({{"stage", k}, {"temperature_factor", t_ratio}, {"resumed_from", stage_model}});
        continue;
      }
    }
    ScaledEnergy at_tk(energy, 1.0 / t_ratio);
    FlowCoordinateEnergy fe(map, at_tk, stereocentres);
    json mk = metadata;
    mk["anneal"] = {{"stage", k}, {"stages", stages}, {"temperature_factor", t_ratio}};
    const auto fr = train_fab(flow, fe, fk, mk, o.restart, stop, on_resume);
    rep.train = fr.train;
    rep.fab = fr.to_json();
    if (fr.train.interrupted) return rep;
    stage_log.push_back({{"stage", k}, {"temperature_factor", t_ratio}, {"steps", fr.train.steps_done},
                         {"best_val_log_inverse_ess", fr.train.best_val}, {"energy_evaluations", fr.energy_evaluations}});
    if (!last) {
      save_trained(stage_model, *flow, mk, fr.train, fk.trainer.checkpoint_path(), "best_val_log_inverse_ess");
      flow->to(o.device, o.dtype);
    }
  }
  rep.fab["u_min"] = start.u_min;
  if (stages > 1) rep.fab["anneal"] = stage_log;
  metadata["anneal"] = {{"stages", stages}, {"factor", o.anneal_factor}};
  flow->to(torch::kCPU, torch::kFloat64);
  save_trained(out, *flow, metadata, rep.train, o.trainer.checkpoint_path(), "best_val_log_inverse_ess");
  for (const auto& f : stage_files) std::filesystem::remove(f);
  return rep;
}

// ---- sampling -------------------------------------------------------------------------------

json BGSampleReport::to_json() const {
  json j = {{"n", samples.x.defined() ? samples.x.size(0) : 0}, {"ess_fraction", ess_fraction},
            {"infinite_energies", infinite_energies}, {"failed_energies", failed_energies}};
  if (!smc.is_null()) j["smc"] = smc;
  return j;
}

namespace {

// u of x [B, 3N] with the failures isolated: an energy that throws for a batch is asked again
// one configuration at a time, and whatever still throws or is NaN becomes NaN here.
torch::Tensor energies_or_nan(Energy& energy, const torch::Tensor& x) {
  try {
    return energy.evaluate(x).to(torch::kFloat64);
  } catch (const std::exception&) {
    auto u = torch::empty({x.size(0)}, torch::kFloat64);
    for (int64_t i = 0; i < x.size(0); ++i) {
      try {
        u[i] = energy.evaluate(x.narrow(0, i, 1)).to(torch::kFloat64)[0];
      } catch (const std::exception&) {
        u[i] = NAN;
      }
    }
    return u;
  }
}

}  // namespace

namespace {

// SMC from the generator (Sequential Boltzmann Generators): the population moves in Cartesian
// coordinates under E_t = (1 - t) (-log q) + t u, both invariant under rigid motions, and
// returns to the canonical frame at the end.
BGSampleReport sample_generator_smc(BoltzmannGenerator& bg, Energy& energy, const BGSampleOptions& o,
                                    const std::function<bool()>& stop) {
  AisOptions so = o.smc;
  so.intermediate = o.smc_steps;
  so.alpha = 1.0;
  const auto& map = bg.coordinate_map();
  AnnealedImportanceSampler smc(
      energy.dim(), [&](int64_t n) { return bg.sample(n, o.batch).first; },
      [&](const torch::Tensor& x) { return bg.log_prob(x); }, energy, so);
  auto r = smc.run(o.n, stop, !o.quiet);
  BGSampleReport rep;
  if (r.interrupted) {
    rep.interrupted = true;
    return rep;
  }
  auto& s = rep.samples;
  {
    torch::NoGradGuard ng;
    s.x = r.x.size(0) > 0 ? map.from_flow(map.to_flow(r.x).value).value : r.x;
  }
  s.log_q = r.log_q;
  s.u = r.u;
  s.log_w = r.log_w;
  s.system = energy.name();
  rep.infinite_energies = r.failed;
  rep.ess_fraction = ess_fraction_or_zero(r.log_w);
  rep.smc = {{"steps", o.smc_steps},
             {"options", so.to_json()},
             {"energy_evaluations", r.energy_evaluations},
             {"resamplings", r.resamplings},
             {"log_z", r.log_z},
             {"dropped_infinite", r.failed},
             {"dropped_energy_cut", r.cut},
             {"accept", r.accept},
             {"ess", r.ess},
             {"final_step_sizes", smc.step_sizes()}};
  return rep;
}

}  // namespace

BGSampleReport sample_generator(BoltzmannGenerator& bg, Energy& energy, const BGSampleOptions& o,
                                const std::function<bool()>& stop) {
  check_positive_int("-n", "value", o.n);
  check_positive_int("--batch", "value", o.batch);
  if (energy.dim() != 3 * bg.zmatrix().atoms())
    usage_error("energy", energy.name() + " has dimension " + std::to_string(energy.dim()) +
                              ", but the generator is for " + std::to_string(bg.zmatrix().atoms()) + " atoms");
  if (o.smc_steps > 0 && bg.coordinates() == "centred")
    usage_error("--smc-steps", "SMC needs the generator's density of a configuration, which centred-coordinate "
                               "models (tarflow, arbg) give only with their centre (extended space); sample them without SMC");
  seed_all(derive_seed(o.seed, 33, 0));
  if (o.smc_steps > 0) return sample_generator_smc(bg, energy, o, stop);
  ProgressOptions po;
  po.quiet = o.quiet;
  Progress progress("sample", o.n, po);
  std::vector<torch::Tensor> xs, lqs, us;
  BGSampleReport rep;
  for (int64_t done = 0; done < o.n; done += o.batch) {
    if (stop && stop()) {
      rep.interrupted = true;
      return rep;
    }
    auto [x, lq] = bg.sample(std::min(o.batch, o.n - done));
    xs.push_back(x);
    lqs.push_back(lq);
    us.push_back(energies_or_nan(energy, x));
    progress.update(std::min(o.n, done + o.batch));
  }
  progress.finish();
  auto& s = rep.samples;
  s.x = torch::cat(xs);
  s.log_q = torch::cat(lqs);
  s.u = torch::cat(us);
  const auto failed = torch::isnan(s.u);
  rep.failed_energies = failed.sum().item<int64_t>();
  s.u = torch::where(failed, torch::full_like(s.u, INFINITY), s.u);
  rep.infinite_energies = (~torch::isfinite(s.u)).sum().item<int64_t>() - rep.failed_energies;
  s.log_w = log_importance_weights(s.u, s.log_q);
  s.system = energy.name();
  rep.ess_fraction = ess_fraction_or_zero(s.log_w);
  return rep;
}

// ---- evaluation -----------------------------------------------------------------------------

void BGEvalOptions::check() const {
  check_positive("--temperature", "value", temperature_kelvin);
  check_in_range("--clip", "value", clip, 0.0, 1.0);
  check_in_range("--clip-top", "value", clip_top, 0.0, 0.5);
  check_nonnegative("--bootstrap", "value", static_cast<double>(bootstrap));
  check_positive_int("--w2-samples", "value", w2_samples);
  check_positive_int("--w2-repeat-samples", "value", w2_repeat_samples);
  check_positive_int("--w2-repeats", "value", w2_repeats);
  check_positive_int("--tica-lag", "value", tica_lag);
  if (chirality != "exclude" && chirality != "mirror" && chirality != "keep")
    usage_error("--chirality", "'" + chirality + "', expected exclude, mirror or keep");
  if (energy_cut && !std::isfinite(*energy_cut))
    usage_error("--energy-cut", "must be a finite reduced energy");
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

// Mean and standard deviation of f(r) over r = 0..repeats-1.
Estimate spread(int64_t repeats, const std::function<double(int64_t)>& f) {
  std::vector<double> v;
  for (int64_t r = 0; r < repeats; ++r) v.push_back(f(r));
  const auto t = torch::tensor(v, torch::kFloat64);
  return {t.mean().item<double>(), repeats > 1 ? t.std().item<double>() : 0.0};
}

}  // namespace

json BGEvalReport::to_json() const {
  json r;
  r["samples"] = samples_file;
  r["reference"] = reference_file;
  r["n_samples"] = n_samples;
  r["ess_fraction_unclipped"] = ess_fraction_unclipped;
  if (clip_quantile > 0) r["clip_quantile"] = clip_quantile;
  if (clip_top > 0)
    r["clip_top"] = {{"fraction", clip_top}, {"dropped", clipped_top},
                     {"bg_reweighted_unclipped", {{"basins", basins_json(reweighted_basins_unclipped)}}}};
  r["ess_fraction"] = ess_fraction;
  r["ess"] = ess_fraction * static_cast<double>(n_samples);
  r["infinite_energies"] = infinite_energies;
  r["chirality"] = {{"policy", chirality}, {"stereocentres", stereocentres},
                    {"wrong_samples", wrong_chirality},
                    {"wrong_fraction", n_samples > 0 ? static_cast<double>(wrong_chirality) / n_samples : 0.0},
                    {"wrong_reference_frames", reference_wrong_chirality}};
  r["md"] = {{"frames", md_frames}, {"bootstrap_block", md_bootstrap_block},
             {"basins", basins_json(md_basins)}};
  r["bg_raw"] = {{"basins", basins_json(raw_basins)}};
  r["bg_reweighted"] = {{"basins", basins_json(reweighted_basins)}};
  r["e_w2"] = {{"raw", e_w2_raw ? json(*e_w2_raw) : json(nullptr)},
               {"raw_bootstrap", estimate(e_w2_raw_spread)},
               {"raw_energy_cut", e_w2_cut},
               {"raw_excluded", e_w2_excluded},
               {"reweighted", e_w2_reweighted},
               {"reweighted_bootstrap", estimate(e_w2_reweighted_spread)}};
  r["t_w2"] = {{"samples", t_w2_samples}, {"raw", t_w2_raw}, {"reweighted", t_w2_reweighted},
               {"repeats", w2_repeats}, {"repeat_samples", w2_repeat_samples},
               {"raw_repeats", estimate(t_w2_raw_repeats)},
               {"reweighted_repeats", estimate(t_w2_reweighted_repeats)}};
  if (tica_error.empty())
    r["tica_w2"] = {{"samples", t_w2_samples}, {"raw", tica_w2_raw}, {"reweighted", tica_w2_reweighted},
                    {"repeats", w2_repeats}, {"repeat_samples", w2_repeat_samples},
                    {"raw_repeats", estimate(tica_w2_raw_repeats)},
                    {"reweighted_repeats", estimate(tica_w2_reweighted_repeats)},
                    {"lag_frames", tica_lag}, {"eigenvalues", tica_eigenvalues}};
  else
    r["tica_w2"] = {{"error", tica_error}};
  r["rama_kl"] = {{"raw", rama_kl_raw}, {"reweighted", rama_kl_reweighted}};
  if (held_out_nll)
    r["held_out_nll"] = {{"frames", held_out_nll->frames}, {"value", held_out_nll->value},
                         {"error", held_out_nll->error}};
  return r;
}

BGEvalReport evaluate_generator(const Molecule& mol, const SampleSet& s, const Trajectory& traj,
                                const BGEvalOptions& o, BoltzmannGenerator* model, double held_out) {
  o.check();
  if (s.x.size(1) != 3 * mol.size())
    runtime_error("samples", "/x has " + std::to_string(s.x.size(1)) + " coordinates, expected " +
                                 std::to_string(3 * mol.size()));
  if (traj.x.size(1) != 3 * mol.size())
    runtime_error(traj.path, "holds another molecule (" + std::to_string(traj.x.size(1) / 3) + " atoms, expected " +
                                 std::to_string(mol.size()) + ")");
  if (traj.x.size(0) < 2) runtime_error(traj.path, "has fewer than 2 frames, too few for the metrics");
  const auto dih = backbone_dihedrals(mol);
  const double kT = kBoltzmann * o.temperature_kelvin;
  BGEvalReport r;
  const int64_t n = s.x.size(0);
  r.n_samples = n;
  r.reference_file = traj.path;
  r.infinite_energies = (~torch::isfinite(s.u)).sum().item<int64_t>();

  // Chirality: count, then exclude (zero weight; the raw metrics use the right-handed samples),
  // mirror, or keep.
  const auto centres = stereocentres(mol);
  r.stereocentres = static_cast<int64_t>(centres.size());
  r.chirality = o.chirality;
  const auto ok = chirality_ok(s.x, centres);
  r.wrong_chirality = n - ok.sum().item<int64_t>();
  r.reference_wrong_chirality = traj.x.size(0) - chirality_ok(traj.x, centres).sum().item<int64_t>();
  auto x = s.x;
  auto log_w = s.log_w;
  auto raw_rows = torch::arange(n, torch::kInt64);
  if (r.wrong_chirality > 0) {
    if (o.chirality == "exclude") {
      log_w = torch::where(ok, log_w, torch::full_like(log_w, -INFINITY));
      raw_rows = torch::nonzero(ok).flatten();
    } else if (o.chirality == "mirror") {
      x = torch::where(ok.unsqueeze(1), x, mirror_image(x));
    }
  }
  const auto& u = s.u;
  if (!torch::isfinite(log_w).any().item<bool>())
    runtime_error(s.model.empty() ? "samples" : s.model,
                  "every sample has zero weight (infinite energies" +
                      std::string(o.chirality == "exclude" ? " or wrong chirality" : "") + "): nothing to reweight");
  r.ess_fraction_unclipped = ess_fraction(log_w);
  const auto log_w_unclipped = log_w;
  if (o.clip_top > 0) {
    const auto finite = torch::isfinite(log_w);
    const int64_t m = static_cast<int64_t>(std::floor(o.clip_top * finite.sum().item<double>()));
    if (m > 0) {
      const auto top = std::get<1>(torch::topk(torch::where(finite, log_w, torch::full_like(log_w, -INFINITY)), m));
      log_w = log_w.index_fill(0, top, -INFINITY);
    }
    r.clipped_top = m;
    r.clip_top = o.clip_top;
  }
  if (o.clip > 0) {
    log_w = clip_log_weights(log_w, o.clip);
    r.clip_quantile = o.clip;
  }
  r.ess_fraction = ess_fraction(log_w);
  r.log_w = log_w;

  const auto u_md = traj.energy / kT;
  const auto rama_md = ramachandran(traj.x, dih);
  const auto rama_bg = ramachandran(x, dih);
  const auto rama_raw = rama_bg.index_select(0, raw_rows);
  const auto u_raw_rows = u.index_select(0, raw_rows);
  const int64_t n_raw = raw_rows.size(0);
  const uint64_t seed = derive_seed(o.seed, 41, 0);
  // MD frames are correlated: moving-block bootstrap with 20 blocks' worth of frames per block
  // (walker-major order, so blocks are stretches of one walker's trajectory).
  r.md_frames = traj.x.size(0);
  r.md_bootstrap_block = std::max<int64_t>(1, traj.x.size(0) / 20);
  r.md_basins = basin_free_energies(rama_md, {}, o.bootstrap, seed, r.md_bootstrap_block);
  r.raw_basins = basin_free_energies(rama_raw, {}, o.bootstrap, seed);
  r.reweighted_basins = basin_free_energies(rama_bg, log_w, o.bootstrap, seed);
  if (o.clip_top > 0)
    r.reweighted_basins_unclipped = basin_free_energies(rama_bg, log_w_unclipped, o.bootstrap, seed);

  // Resampled (unweighted) reweighted samples for W2 and histograms.
  const auto idx_rw = resample(log_w, n, derive_seed(o.seed, 41, 1));
  // The raw BG samples' energies have a far tail (a few clashes at 1e9 k_B T) that would make
  // the raw E-W2 meaningless: as the literature does (ArBG, SBG), the raw metric uses the
  // samples below an energy cut-off, reported with the number it excluded.
  r.e_w2_cut = o.energy_cut ? *o.energy_cut : torch::quantile(u_md, 0.999).item<double>() + 20.0;
  const auto below = torch::isfinite(u_raw_rows) & (u_raw_rows < r.e_w2_cut);
  const auto u_raw = u_raw_rows.masked_select(below);
  r.e_w2_excluded = n - u_raw.numel();
  r.u_resampled = u.index_select(0, idx_rw);
  r.e_w2_reweighted = wasserstein2_1d(u_md, r.u_resampled);
  r.w2_repeats = o.w2_repeats;
  // Bootstrap spreads of E-W2: both sides resampled with replacement.
  auto boot = [&](const torch::Tensor& a, const torch::Tensor& b, uint64_t key) {
    return spread(o.w2_repeats, [&](int64_t k) {
      auto g = torch::make_generator<torch::CPUGeneratorImpl>(derive_seed(o.seed, key, static_cast<uint64_t>(k)));
      const auto ia = torch::randint(a.size(0), {a.size(0)}, g, torch::kInt64);
      const auto ib = torch::randint(b.size(0), {b.size(0)}, g, torch::kInt64);
      return wasserstein2_1d(a.index_select(0, ia), b.index_select(0, ib));
    });
  };
  // no sample below the cut (an untrained model): no raw number rather than a meaningless one
  if (u_raw.numel() > 0) {
    r.e_w2_raw = wasserstein2_1d(u_md, u_raw);
    r.e_w2_raw_spread = boot(u_md, u_raw, 42);
  }
  r.e_w2_reweighted_spread = boot(u_md, r.u_resampled, 43);

  // T-W2 and TICA-W2: exact OT (nfkit::wasserstein2, certified optimal) between k reference
  // frames and k samples. The headline numbers use evenly spaced reference frames and the first
  // k (resampled) samples; the repeats draw kr of each at random.
  const int64_t T = traj.x.size(0);
  const int64_t k = std::min({o.w2_samples, T, n_raw});
  const int64_t kr = std::min({o.w2_repeat_samples, T, n_raw});
  r.t_w2_samples = k;
  r.w2_repeat_samples = kr;
  const auto md_even = evenly(T, k), raw_even = evenly(n_raw, k), rw_first = idx_rw.narrow(0, 0, k);
  r.t_w2_raw = torus_wasserstein2(rama_md.index_select(0, md_even), rama_raw.index_select(0, raw_even));
  r.t_w2_reweighted = torus_wasserstein2(rama_md.index_select(0, md_even), rama_bg.index_select(0, rw_first));
  auto pick = [&](int64_t from, int64_t key, int64_t rep) {
    auto g = torch::make_generator<torch::CPUGeneratorImpl>(derive_seed(o.seed, static_cast<uint64_t>(key), static_cast<uint64_t>(rep)));
    return torch::randperm(from, g, torch::kInt64).narrow(0, 0, kr);
  };
  auto rw_pick = [&](int64_t rep) { return resample(log_w, kr, derive_seed(o.seed, 47, static_cast<uint64_t>(rep))); };
  r.t_w2_raw_repeats = spread(o.w2_repeats, [&](int64_t rep) {
    return torus_wasserstein2(rama_md.index_select(0, pick(T, 44, rep)), rama_raw.index_select(0, pick(n_raw, 45, rep)));
  });
  r.t_w2_reweighted_repeats = spread(o.w2_repeats, [&](int64_t rep) {
    return torus_wasserstein2(rama_md.index_select(0, pick(T, 44, rep)), rama_bg.index_select(0, rw_pick(rep)));
  });
  // TICA on the reference, the lag capped at half the shortest walker.
  try {
    const auto counts = std::get<2>(torch::unique_consecutive(traj.walker, false, true));
    const int64_t shortest = counts.min().item<int64_t>();
    r.tica_lag = std::max<int64_t>(1, std::min(o.tica_lag, shortest / 2));
    const auto f_md = tica_features(traj.x, mol, dih);
    const auto tica = fit_tica(f_md, traj.walker, r.tica_lag, 2);
    const auto tic_md = tica.project(f_md);
    const auto tic_bg = tica.project(tica_features(x, mol, dih));
    const auto tic_raw = tic_bg.index_select(0, raw_rows);
    for (int64_t c = 0; c < tica.eigenvalues.size(0); ++c) r.tica_eigenvalues.push_back(tica.eigenvalues[c].item<double>());
    r.tica_reference = tic_md;
    r.tica_samples = tic_raw;
    r.tica_resampled = tic_bg.index_select(0, idx_rw);
    r.tica_w2_raw = wasserstein2(tic_md.index_select(0, md_even), tic_raw.index_select(0, raw_even));
    r.tica_w2_reweighted = wasserstein2(tic_md.index_select(0, md_even), tic_bg.index_select(0, rw_first));
    r.tica_w2_raw_repeats = spread(o.w2_repeats, [&](int64_t rep) {
      return wasserstein2(tic_md.index_select(0, pick(T, 44, rep)), tic_raw.index_select(0, pick(n_raw, 45, rep)));
    });
    r.tica_w2_reweighted_repeats = spread(o.w2_repeats, [&](int64_t rep) {
      return wasserstein2(tic_md.index_select(0, pick(T, 44, rep)), tic_bg.index_select(0, rw_pick(rep)));
    });
  } catch (const Error& e) {
    r.tica_error = e.what();
  }
  r.rama_kl_raw = ramachandran_kl(rama_md, rama_raw);
  r.rama_kl_reweighted = ramachandran_kl(rama_md, rama_bg.index_select(0, idx_rw));
  if (model) {
    const auto test_idx = split_held_out(traj, held_out).second;
    if (test_idx.numel() > 0) {
      torch::NoGradGuard ng;
      const auto lq = model->log_prob(traj.x.index_select(0, test_idx));
      const double m = static_cast<double>(test_idx.numel());
      r.held_out_nll = BGEvalReport::Nll{test_idx.numel(), -lq.mean().item<double>(),
                                         lq.std().item<double>() / std::sqrt(m)};
    }
  }
  r.rama_reference = rama_md;
  r.rama_samples = rama_bg;
  r.u_reference = u_md;
  r.u_samples = u;
  return r;
}

}  // namespace nfkit
