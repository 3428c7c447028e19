// nfkit cfm train|sample|eval: continuous flows trained by flow matching (flows/flow_matching.h),
// sampled with any solver, evaluated by exact W2, NFE, straightness and exact NLL.
#include <torch/torch.h>

#include <cstdio>
#include <iomanip>
#include <sstream>

#include "flow_common.h"
#include "figures.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/boss.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/continuous_flow.h"
#include "nfkit/flows/flow_map.h"
#include "nfkit/flows/flow_matching.h"
#include "nfkit/flows/optimal_transport.h"
#include "nfkit/flows/sources.h"
#include "nfkit/flows/trainer.h"
#include "nfkit/flows/wflow.h"

namespace nfkit::cli {

namespace {

// The source distribution: the Normal base, a built-in density (exact log-density), or the
// rows of a file (no density).
DistributionPtr make_source(const std::string& spec, int64_t dim, const DataSource* rows) {
  if (spec == "normal") return std::make_shared<StandardNormal>(dim);
  if (is_toy_density(spec)) return std::make_shared<ToyDistribution>(spec);
  NFKIT_ASSERT(rows != nullptr, "file source without rows");
  return std::make_shared<Empirical>(rows->x);
}

// Rows for the training loss: x1 alone, or [x0, x1] pairs (reflow).
struct RoundData {
  torch::Tensor train, val;
  bool paired = false;
};

Objective cfm_objective(const std::shared_ptr<ContinuousFlow>& cnf, const CfmOptions& cfm,
                        const RoundData& d, uint64_t val_seed) {
  const int64_t D = cnf->dim();
  auto source = cnf->base();
  auto split = [D, paired = d.paired, source](const torch::Tensor& x) -> std::pair<torch::Tensor, torch::Tensor> {
    if (paired) return {x.narrow(1, 0, D), x.narrow(1, D, D)};
    torch::Tensor x0;
    {
      torch::NoGradGuard ng;
      x0 = source->sample(x.size(0)).to(x.options());
    }
    return {x0, x};
  };
  Objective obj;
  obj.train = d.train;
  obj.loss = [cnf, cfm, split](const torch::Tensor& x, const torch::Tensor& c) {
    auto [x0, x1] = split(x);
    return cfm_loss(*cnf->velocity(), cfm, x0, x1, c);
  };
  const auto val = d.val.to(cnf->tensor_options());
  obj.validate = [cnf, cfm, split, val, val_seed] {
    torch::NoGradGuard ng;
    torch::manual_seed(val_seed);
    double total = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < val.size(0); i += 1024) {
      const auto x = val.narrow(0, i, std::min<int64_t>(1024, val.size(0) - i));
      auto [x0, x1] = split(x);
      total += cfm_loss(*cnf->velocity(), cfm, x0, x1).item<double>() * x.size(0);
      n += x.size(0);
    }
    return total / n;
  };
  return obj;
}

// One training run through the trainer, resumed from <out>.ckpt unless --restart.
TrainReport run_round(const std::shared_ptr<Distribution>& model, Objective objective,
                      const TrainerOptions& topts, const json& metadata, bool restart, Context& ctx) {
  auto rep = train_command(model, topts, std::move(objective), metadata, restart, ctx);
  const auto& ckpt = topts.checkpoint_path();
  std::remove(ckpt.c_str());
  return rep;
}

po::options_description train_opts() {
  po::options_description o;
  o.add_options()
      ("target", po::value<std::string>()->required(), "target data (t = 1): a built-in (8gaussians, moons, scurve, "
                                                       "rings, banana[:D], ...), file.csv or file.h5:/dataset")
      ("source", po::value<std::string>()->default_value("normal"), "source (t = 0): normal, a built-in or a file")
      ("out", po::value<std::string>()->required(), "model file to write (HDF5 checkpoint)")
      ("method", po::value<std::string>()->default_value("icfm"), "icfm, otcfm, sbcfm, fm, vpcfm, wcfm, rf, flowmap, "
                                                                  "or wflow (a one-step generator, Han et al. 2026)")
      ("sigma", po::value<double>(), "path noise (default 0.1; 0 for rf and flowmap; sbcfm needs > 0)")
      ("diagonal-fraction", po::value<double>()->default_value(0.75), "flowmap: fraction of each batch on the diagonal s = t "
                                                                       "(flow matching); the rest carries the Lagrangian self-distillation loss")
      ("wcfm-eps", po::value<double>(), "wcfm Gibbs-kernel eps (default: the mean squared distance "
                                        "between independent source and target training samples)")
      ("sinkhorn-iters", po::value<int64_t>()->default_value(500), "sbcfm, wflow: Sinkhorn sweeps per minibatch plan (epsilon scaling included)")
      ("wflow-eps", po::value<double>(), "wflow: entropic regularisation of the Sinkhorn divergence, units of |x - y|^2/2 "
                                          "(default: 1% of the target's mean |y - y'|^2/2)")
      ("wflow-step", po::value<double>()->default_value(1.0), "wflow: particle step eta of the target x + eta V(x)")
      ("time", po::value<std::string>()->default_value("uniform"), "time distribution: uniform or ushaped (Lee et al. 2024, a = 4)")
      ("loss", po::value<std::string>()->default_value("mse"), "mse or pseudo-huber (c = 0.00054 sqrt(d))")
      ("reflow", po::value<int64_t>()->default_value(0), "reflow rounds after the first training (rectified flow)")
      ("reflow-pairs", po::value<int64_t>(), "(z0, ODE(z0)) pairs per reflow round, and source samples of the BOSS "
                                             "straightening (default: the training rows)")
      ("boss-straighten", po::value<int64_t>()->default_value(0), "after training (and reflow): fine-tune the field on the BOSS "
                                                                 "schedule of K Euler steps (Nguyen et al. 2024); the model then "
                                                                 "samples by Euler on that schedule (0 = off)")
      ("boss-fine", po::value<int64_t>()->default_value(100), "BOSS straightening: RK4 steps of the fine reference trajectory")
      ("n-samples", po::value<int64_t>()->default_value(11000), "samples drawn from a built-in target")
      ("n-val", po::value<int64_t>()->default_value(1000), "rows held out for validation (at most 10%)")
      ("steps", po::value<int64_t>()->default_value(10000), "optimizer steps per round")
      ("batch-size", po::value<int64_t>()->default_value(512), "minibatch size")
      ("lr", po::value<double>()->default_value(1e-3, "0.001"), "learning rate (AdamW)")
      ("weight-decay", po::value<double>()->default_value(0.0), "AdamW decoupled weight decay")
      ("warmup", po::value<int64_t>()->default_value(0), "linear warm-up steps before cosine decay")
      ("ema", po::value<double>()->default_value(0.0), "EMA decay of the weights (0 = off)")
      ("eval-every", po::value<int64_t>(), "steps between validations (default: steps/20)")
      ("checkpoint-every", po::value<int64_t>()->default_value(500), "steps between checkpoints (<out>.ckpt)")
      ("restart", po::bool_switch(), "ignore existing checkpoints and start over")
      ("hidden", po::value<int64_t>()->default_value(64), "hidden units per layer of the velocity MLP")
      ("hidden-layers", po::value<int64_t>()->default_value(3), "hidden layers of the velocity MLP")
      ("activation", po::value<std::string>()->default_value("selu"), "selu or silu")
      ("time-embedding", po::value<std::string>()->default_value("concat"), "concat or sinusoidal")
      ("divergence", po::value<std::string>()->default_value("auto"), "log-density divergence: auto (exact up to 16 dimensions), exact, hutchinson")
      ("probes", po::value<int64_t>()->default_value(1), "Hutchinson probes")
      ("dtype", po::value<std::string>()->default_value("float32"), "float32 or float64");
  add_solver_options(o, "solver-steps");
  return o;
}

// The optimizer options shared by every kind of model cfm train writes (checked).
TrainerOptions trainer_options_from(const po::variables_map& vm, const std::string& out, bool quiet) {
  const int64_t steps = vm["steps"].as<int64_t>();
  check_positive_int("--steps", "value", steps);
  check_positive_int("--batch-size", "value", vm["batch-size"].as<int64_t>());
  check_positive("--lr", "value", vm["lr"].as<double>());
  check_nonnegative("--weight-decay", "value", vm["weight-decay"].as<double>());
  if (vm["warmup"].as<int64_t>() < 0) usage_error("--warmup", "must be >= 0");
  const int64_t eval_every = vm.count("eval-every") ? vm["eval-every"].as<int64_t>() : std::max<int64_t>(1, steps / 20);
  check_positive_int("--eval-every", "value", eval_every);
  check_positive_int("--n-val", "value", vm["n-val"].as<int64_t>());
  return TrainerOptions()
      .steps(steps)
      .batch_size(vm["batch-size"].as<int64_t>())
      .lr(vm["lr"].as<double>())
      .weight_decay(vm["weight-decay"].as<double>())
      .warmup_steps(vm["warmup"].as<int64_t>())
      .ema_decay(vm["ema"].as<double>())
      .eval_every(eval_every)
      .checkpoint_every(vm["checkpoint-every"].as<int64_t>())
      .checkpoint_path(out + ".ckpt")
      .quiet(quiet);
}

// Held-out validation rows (at most 10%) and the training rows of the target, shuffled.
std::pair<torch::Tensor, torch::Tensor> split_target(const DataSource& target, int64_t n_val_req, uint64_t seed) {
  const int64_t N = target.x.size(0);
  const int64_t n_val = std::min<int64_t>(n_val_req, std::max<int64_t>(1, N / 10));
  if (N - n_val < 2) runtime_error(target.description, "has " + std::to_string(N) + " rows, too few to train and validate");
  seed_all(seed);
  const auto perm = torch::randperm(N, torch::kInt64);
  return {target.x.index_select(0, perm.narrow(0, n_val, N - n_val)), target.x.index_select(0, perm.narrow(0, 0, n_val))};
}

// --method wflow: a one-step generator trained along the Sinkhorn-divergence gradient flow
// (flows/wflow.h), from the Normal reference; validated by the exact W2 to held-out rows.
void run_train_wflow(const po::variables_map& vm, Context& ctx) {
  const std::string out = vm["out"].as<std::string>();
  if (vm["source"].as<std::string>() != "normal")
    usage_error("--source", "wflow trains a generator from the Normal reference; use icfm or otcfm between data sets");
  if (vm["reflow"].as<int64_t>() != 0) usage_error("--reflow", "applies to velocity fields, not to a one-step generator (wflow)");
  WFlowOptions wo;
  wo.step(vm["wflow-step"].as<double>()).sinkhorn_iters(vm["sinkhorn-iters"].as<int64_t>());
  if (vm.count("wflow-eps")) wo.eps(vm["wflow-eps"].as<double>());
  wo.validate();
  auto topts = trainer_options_from(vm, out, ctx.globals.quiet);
  OneStepGeneratorOptions gopts(1);
  gopts.hidden(vm["hidden"].as<int64_t>()).hidden_layers(vm["hidden-layers"].as<int64_t>())
      .activation(vm["activation"].as<std::string>());
  gopts.validate();
  const auto dtype = parse_dtype(vm["dtype"].as<std::string>());
  const bool restart = vm["restart"].as<bool>();

  seed_all(derive_seed(ctx.globals.seed, 3, 0));
  auto target = load_data(vm["target"].as<std::string>(), vm["n-samples"].as<int64_t>(), "--target");
  const int64_t D = target.x.size(1);
  check_writable(out);
  torch::Tensor train, val;
  std::tie(train, val) = split_target(target, vm["n-val"].as<int64_t>(), derive_seed(ctx.globals.seed, 3, 1));
  if (!vm.count("wflow-eps")) {  // 1% of the target's mean |y - y'|^2 / 2 (twice its total variance / 2)
    const int64_t m = std::min<int64_t>(4096, train.size(0));
    const auto y = train.narrow(0, 0, m).to(torch::kFloat64);
    wo.eps(0.01 * 0.5 * (y - y.roll(1, 0)).pow(2).sum(1).mean().item<double>());
  }
  seed_all(derive_seed(ctx.globals.seed, 3, 2));
  auto G = std::make_shared<OneStepGenerator>(std::make_shared<StandardNormal>(D), gopts.dim(D));
  G->to(ctx.globals.device, dtype);

  Objective obj;
  obj.train = train;
  obj.loss = [G, wo](const torch::Tensor& x, const torch::Tensor&) { return wflow_loss(*G, wo, x); };
  const auto vrows = val.narrow(0, 0, std::min<int64_t>(1000, val.size(0))).to(torch::kFloat64);
  const uint64_t vseed = derive_seed(ctx.globals.seed, 9, 0);
  obj.validate = [G, vrows, vseed] {
    torch::NoGradGuard ng;
    torch::manual_seed(vseed);
    return wasserstein2(G->sample(vrows.size(0)).to(torch::kCPU, torch::kFloat64), vrows);
  };
  topts.seed(derive_seed(ctx.globals.seed, 6, 0));
  json metadata = {{"target", target.description}, {"source", "normal"}, {"method", "wflow"},
                   {"wflow", wo.to_json()}, {"trainer", topts.to_json()}, {"n_train", train.size(0)},
                   {"n_val", val.size(0)}, {"nfkit_version", version_string()}};
  if (!ctx.globals.quiet)
    ctx.err << "cfm: wflow (one-step generator), Sinkhorn eps " << wo.eps() << ", normal -> " << target.description
            << ", dim " << D << ", " << train.size(0) << " training rows, " << topts.steps() << " steps" << std::endl;
  const auto rep = run_round(G, obj, topts, metadata, restart, ctx);
  save_trained(out, *G, metadata, rep, "", "best_val_w2");
  ctx.results = {{"model", out}, {"method", "wflow"}, {"target", target.description}, {"source", "normal"},
                 {"dim", D}, {"steps", rep.steps_done}, {"best_step", rep.best_step}, {"val_w2", rep.best_val},
                 {"wflow", wo.to_json()}, {"bad_steps", rep.bad_steps}};
  ctx.out << std::setprecision(5) << "model written to " << out << " (wflow one-step generator, dim " << D << ", "
          << topts.steps() << " steps)\nvalidation W2 " << rep.best_val << " (best, step " << rep.best_step << ")\n";
}

// A finished stage of cfm train (a reflow round or the BOSS straightening) kept in `stage`:
// its weights go into the model (same configuration: the run that wrote it); returns the
// stage's best validation loss.
double read_stage(const std::string& stage, ContinuousFlow& cnf) {
  H5Reader rd(stage);
  rd.expect_format("checkpoint", kCheckpointVersion);
  read_state(rd, "/model", cnf);
  return json::parse(rd.attr_string("/", "metadata")).value("best_val", NAN);
}

void write_stage(const std::string& stage, const ContinuousFlow& cnf, json metadata, double best_val) {
  metadata["best_val"] = best_val;
  save_flow(stage, cnf, metadata);
}

void run_train(const po::variables_map& vm, Context& ctx) {
  if (vm["method"].as<std::string>() == "wflow") return run_train_wflow(vm, ctx);
  const std::string out = vm["out"].as<std::string>();
  // Every option is checked before any data is read or work done.
  CfmOptions cfm;
  cfm.method(parse_cfm_method(vm["method"].as<std::string>()));
  cfm.sigma(vm.count("sigma") ? vm["sigma"].as<double>() : cfm_default_sigma(cfm.method()));
  cfm.time(vm["time"].as<std::string>()).loss(vm["loss"].as<std::string>());
  if (vm.count("wcfm-eps")) cfm.wcfm_eps(vm["wcfm-eps"].as<double>());
  cfm.sinkhorn_iters(vm["sinkhorn-iters"].as<int64_t>());
  cfm.diagonal_fraction(vm["diagonal-fraction"].as<double>());
  cfm.validate();
  const auto ode = solver_from(vm, "solver-steps");
  auto copts = ContinuousFlowOptions().ode(ode).path(cfm_method_name(cfm.method()))
                   .divergence(vm["divergence"].as<std::string>()).probes(vm["probes"].as<int64_t>());
  copts.validate();
  const auto dtype = parse_dtype(vm["dtype"].as<std::string>());
  const int64_t reflow = vm["reflow"].as<int64_t>();
  if (reflow < 0) usage_error("--reflow", "must be >= 0");
  const bool flow_map = cfm.method() == CfmMethod::kFlowMap;
  if (flow_map && reflow > 0)
    usage_error("--reflow", "applies to velocity fields; a flow map (--method flowmap) already jumps in few steps");
  const int64_t boss_k = vm["boss-straighten"].as<int64_t>(), boss_fine = vm["boss-fine"].as<int64_t>();
  if (boss_k < 0) usage_error("--boss-straighten", "must be >= 0");
  check_positive_int("--boss-fine", "value", boss_fine);
  if (boss_k > boss_fine) usage_error("--boss-straighten", "must be at most --boss-fine (" + std::to_string(boss_fine) + ")");
  if (flow_map && boss_k > 0)
    usage_error("--boss-straighten", "applies to velocity fields; a flow map (--method flowmap) already jumps in few steps");
  const int64_t stages = reflow + (boss_k > 0 ? 1 : 0);  // rounds after the first
  const auto topts = trainer_options_from(vm, out, ctx.globals.quiet);
  const int64_t steps = topts.steps();
  const std::string source_spec = vm["source"].as<std::string>();
  if (cfm.method() == CfmMethod::kFM && source_spec != "normal")
    usage_error("--source", "fm (Lipman et al.'s target path) needs the Normal source; use icfm or otcfm between data sets");
  VelocityMLPOptions vopts(1);
  vopts.hidden(vm["hidden"].as<int64_t>()).hidden_layers(vm["hidden-layers"].as<int64_t>())
      .activation(vm["activation"].as<std::string>()).time_embedding(vm["time-embedding"].as<std::string>());
  vopts.validate();
  const bool restart = vm["restart"].as<bool>();

  seed_all(derive_seed(ctx.globals.seed, 3, 0));
  auto target = load_data(vm["target"].as<std::string>(), vm["n-samples"].as<int64_t>(), "--target");
  const int64_t D = target.x.size(1);
  std::unique_ptr<DataSource> source_rows;
  if (source_spec != "normal") {
    source_rows = std::make_unique<DataSource>(load_data(source_spec, vm["n-samples"].as<int64_t>(), "--source"));
    if (source_rows->x.size(1) != D)
      usage_error("--source", "has dimension " + std::to_string(source_rows->x.size(1)) + " but --target has " +
                                  std::to_string(D) + "; source and target must have the same dimension");
  }
  check_writable(out);
  torch::Tensor train, val;
  std::tie(train, val) = split_target(target, vm["n-val"].as<int64_t>(), derive_seed(ctx.globals.seed, 3, 1));
  const int64_t n_val = val.size(0);

  // The model: the source as the base at t = 0, an MLP velocity field (or a two-time flow map,
  // whose diagonal is the velocity field).
  seed_all(derive_seed(ctx.globals.seed, 3, 2));
  auto base = make_source(source_spec, D, source_rows.get());
  VelocityFieldPtr velocity;
  if (flow_map)
    velocity = std::make_shared<FlowMapMLP>(vopts.dim(D));
  else
    velocity = std::make_shared<VelocityMLP>(vopts.dim(D));
  auto cnf = std::make_shared<ContinuousFlow>(base, velocity, copts);
  cnf->to(ctx.globals.device, dtype);

  if (cfm.method() == CfmMethod::kWCFM && !vm.count("wcfm-eps")) {
    seed_all(derive_seed(ctx.globals.seed, 3, 3));
    torch::NoGradGuard ng;
    const int64_t m = std::min<int64_t>(4096, train.size(0));
    const auto x0 = base->sample(m).to(torch::kCPU, torch::kFloat64);
    cfm.wcfm_eps((x0 - train.narrow(0, 0, m)).pow(2).sum(1).mean().item<double>());
  }
  const int64_t n_pairs = vm.count("reflow-pairs") ? vm["reflow-pairs"].as<int64_t>() : train.size(0);
  check_positive_int("--reflow-pairs", "value", n_pairs);

  json metadata = {{"target", target.description}, {"source", source_spec}, {"cfm", cfm.to_json()},
                   {"trainer", topts.to_json()}, {"n_train", train.size(0)}, {"n_val", n_val},
                   {"reflow", reflow}, {"reflow_pairs", n_pairs}, {"boss_straighten", boss_k},
                   {"nfkit_version", version_string()}};
  if (!ctx.globals.quiet)
    ctx.err << "cfm: " << cfm_method_name(cfm.method()) << ", sigma " << cfm.sigma()
            << (cfm.method() == CfmMethod::kWCFM ? ", wcfm eps " + std::to_string(cfm.wcfm_eps()) : std::string())
            << ", " << source_spec << " -> " << target.description << ", dim " << D << ", "
            << train.size(0) << " training rows, " << steps << " steps per round"
            << (reflow > 0 ? ", " + std::to_string(reflow) + " reflow rounds" : std::string()) << std::endl;

  // Round 0 trains on the method's pairs; reflow round k on (z0, ODE(z0)) pairs of the model
  // after round k - 1, with the straight path, starting from its weights (Liu et al. 2023).
  // A finished round is kept in <out>.round<k>.h5 so that an interrupted run resumes there.
  TrainReport rep;
  std::vector<double> round_val;
  for (int64_t r = 0; r <= reflow; ++r) {
    const std::string stage = out + ".round" + std::to_string(r) + ".h5";
    if (stages > 0 && !restart && file_exists(stage)) {
      round_val.push_back(read_stage(stage, *cnf));
      if (!ctx.globals.quiet) ctx.err << "round " << r << " done (" << stage << ")" << std::endl;
      continue;
    }
    RoundData d;
    CfmOptions round_cfm = cfm;
    if (r == 0) {
      d.train = train;
      d.val = val;
    } else {
      round_cfm.method(CfmMethod::kRF).sigma(0);
      seed_all(derive_seed(ctx.globals.seed, 7, static_cast<uint64_t>(r)));
      torch::NoGradGuard ng;
      if (!ctx.globals.quiet) ctx.err << "reflow round " << r << ": integrating " << n_pairs << " + " << n_val << " couplings" << std::endl;
      auto pairs = [&](int64_t n) {
        const auto z0 = base->sample(n);
        const auto z1 = cnf->transport(z0, 0.0, 1.0);
        return torch::cat({z0, z1}, 1).to(torch::kCPU, torch::kFloat64);
      };
      d.train = pairs(n_pairs);
      d.val = pairs(n_val);
      d.paired = true;
    }
    auto ropts = TrainerOptions(topts).seed(derive_seed(ctx.globals.seed, 6, static_cast<uint64_t>(r)));
    rep = run_round(cnf, cfm_objective(cnf, round_cfm, d, derive_seed(ropts.seed(), 9, 0)), ropts, metadata,
                    restart, ctx);
    round_val.push_back(rep.best_val);
    if (stages > 0) write_stage(stage, *cnf, metadata, rep.best_val);
  }
  if (boss_k > 0) {
    // BOSS (Nguyen et al. 2024): the K-step schedule of the trained model, then a fine-tune that
    // makes each Euler step of it land on the model's own fine reference trajectory. A stage
    // like a reflow round: kept in <out>.round<reflow+1>.h5 until the run ends.
    const int64_t r = reflow + 1;
    const std::string stage = out + ".round" + std::to_string(r) + ".h5";
    seed_all(derive_seed(ctx.globals.seed, 11, 0));
    std::vector<int64_t> schedule;
    std::vector<double> grid;
    {
      torch::NoGradGuard ng;
      const auto cost = boss_cost(*cnf, base->sample(1000), boss_fine);
      schedule = boss_schedule(cost.cost, boss_k);
      for (const int64_t i : schedule) grid.push_back(cost.times[static_cast<size_t>(i)]);
    }
    if (!restart && file_exists(stage)) {
      round_val.push_back(read_stage(stage, *cnf));
      if (!ctx.globals.quiet) ctx.err << "BOSS straightening done (" << stage << ")" << std::endl;
    } else {
      if (!ctx.globals.quiet)
        ctx.err << "BOSS straightening: " << boss_k << " Euler steps, reference of " << boss_fine << " RK4 steps from "
                << n_pairs << " + " << n_val << " source samples" << std::endl;
      seed_all(derive_seed(ctx.globals.seed, 11, 1));
      auto pairs = [&](int64_t n) {
        torch::NoGradGuard ng;
        return boss_straightening_pairs(*cnf, base->sample(n), boss_fine, schedule).to(torch::kCPU, torch::kFloat64);
      };
      Objective obj;
      obj.train = pairs(n_pairs);
      const auto val_rows = pairs(n_val).to(cnf->tensor_options());
      obj.loss = [cnf](const torch::Tensor& x, const torch::Tensor& c) {
        return boss_straightening_loss(*cnf->velocity(), x, c);
      };
      obj.validate = [cnf, val_rows] {
        torch::NoGradGuard ng;
        return boss_straightening_loss(*cnf->velocity(), val_rows).item<double>();
      };
      auto ropts = TrainerOptions(topts).seed(derive_seed(ctx.globals.seed, 6, static_cast<uint64_t>(r)));
      rep = run_round(cnf, obj, ropts, metadata, restart, ctx);
      round_val.push_back(rep.best_val);
      write_stage(stage, *cnf, metadata, rep.best_val);
    }
    auto euler = OdeOptions().method(OdeMethod::kEuler).grid(grid);
    cnf->options().ode(euler);
    metadata["boss_grid"] = grid;
    metadata["boss_fine"] = boss_fine;
  }
  metadata["round_val_loss"] = round_val;
  save_trained(out, *cnf, metadata, rep, "", "best_val_loss");
  for (int64_t r = 0; r <= stages && stages > 0; ++r) std::remove((out + ".round" + std::to_string(r) + ".h5").c_str());
  std::string curve;
  if (!rep.training.empty()) {  // the last round's curve (none when every round was reused)
    curve = training_figure_path(out, ctx.globals.figure_format);
    training_curve_figure(curve, ctx.globals.figure_format,
                          training_curve(rep, "cfm train: " + cfm_method_name(cfm.method()) + " to " + target.description +
                                                  (reflow > 0 ? " (last reflow round)" : ""),
                                         "flow-matching loss (mean squared velocity error)"));
  }

  ctx.results = {{"model", out}, {"method", cfm_method_name(cfm.method())}, {"target", target.description},
                 {"source", source_spec}, {"dim", D}, {"steps", rep.steps_done}, {"best_step", rep.best_step},
                 {"val_loss", rep.best_val}, {"round_val_loss", round_val}, {"cfm", cfm.to_json()},
                 {"bad_steps", rep.bad_steps}};
  if (!curve.empty()) ctx.results["figure"] = curve;
  if (boss_k > 0) ctx.results["boss_grid"] = metadata["boss_grid"];
  ctx.out << std::setprecision(5) << "model written to " << out << " (" << cfm_method_name(cfm.method())
          << ", dim " << D << ", " << reflow + 1 << (reflow ? " rounds" : " round") << " of " << steps
          << " steps)\nvalidation " << (boss_k > 0 ? "straightening" : "flow-matching") << " loss " << rep.best_val
          << " (best, step " << rep.best_step << ")\n";
  if (boss_k > 0) {
    ctx.out << "BOSS-straightened for Euler on the grid";
    for (double t : metadata["boss_grid"].get<std::vector<double>>()) ctx.out << " " << t;
    ctx.out << " (the model's stored solver; cfm eval reports it)\n";
  }
}

void write_samples(const std::string& out, const torch::Tensor& x, const torch::Tensor& log_q,
                   const json& attrs) {
  const std::string ext = file_extension(out);
  if (ext == "csv") {
    std::ostringstream os;
    os << std::setprecision(17);
    for (int64_t j = 0; j < x.size(1); ++j) os << (j ? "," : "") << "x" << j;
    if (log_q.defined()) os << ",log_q";
    os << "\n";
    const auto xd = x.to(torch::kFloat64).contiguous();
    const auto ld = log_q.defined() ? log_q.to(torch::kFloat64).contiguous() : log_q;
    const double* px = xd.data_ptr<double>();
    const double* pl = ld.defined() ? ld.data_ptr<double>() : nullptr;
    const int64_t D = x.size(1);
    for (int64_t r = 0; r < x.size(0); ++r) {
      for (int64_t j = 0; j < D; ++j) os << (j ? "," : "") << px[r * D + j];
      if (pl) os << "," << pl[r];
      os << "\n";
    }
    write_file_atomic(out, os.str());
  } else {
    H5Writer w(out, "samples", 1);
    w.write("/x", x);
    if (log_q.defined()) w.write("/log_q", log_q);
    for (const auto& [k, v] : attrs.items())
      w.set_attr("/", k, v.is_string() ? v.get<std::string>() : v.dump());
    w.commit();
  }
}

void check_samples_path(const std::string& out) {
  const std::string ext = file_extension(out);
  if (ext != "h5" && ext != "hdf5" && ext != "csv")
    usage_error("--out", "'" + out + "' must end in .h5, .hdf5 or .csv");
}

std::vector<int64_t> parse_int_list(const std::string& s, const std::string& option) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t pos = 0;
      const long long k = std::stoll(item, &pos);
      if (pos != item.size() || k < 1) throw std::invalid_argument("bad");
      v.push_back(k);
    } catch (const std::exception&) {
      usage_error(option, "'" + s + "' must be a comma-separated list of positive integers");
    }
  }
  if (v.empty()) usage_error(option, "must list at least one step count");
  return v;
}

void run_sample(const po::variables_map& vm, Context& ctx) {
  const std::string out = vm["out"].as<std::string>();
  check_samples_path(out);
  const int64_t n = vm["n"].as<int64_t>();
  check_positive_int("-n", "value", n);
  auto ode = solver_from(vm, "steps");
  const bool with_lq = vm["log-prob"].as<bool>();
  const int64_t boss = vm.count("boss") ? vm["boss"].as<int64_t>() : 0;
  if (vm.count("boss")) check_positive_int("--boss", "value", boss);
  const int64_t boss_fine = vm["boss-fine"].as<int64_t>();
  check_positive_int("--boss-fine", "value", boss_fine);
  if (boss > boss_fine) usage_error("--boss", "must be at most --boss-fine (" + std::to_string(boss_fine) + ")");
  const int64_t map_steps = vm.count("map-steps") ? vm["map-steps"].as<int64_t>() : 0;
  if (vm.count("map-steps")) check_positive_int("--map-steps", "value", map_steps);
  if (map_steps > 0 && (boss > 0 || with_lq))
    usage_error("--map-steps", "samples by jumps of the flow map: it cannot be combined with --boss or --log-prob");
  if (checkpoint_model_type(vm["model"].as<std::string>()) == "one_step_generator") {
    if (with_lq || boss > 0 || map_steps > 0)
      usage_error(with_lq ? "--log-prob" : boss > 0 ? "--boss" : "--map-steps",
                  "'" + vm["model"].as<std::string>() + "' is a one-step generator (wflow): it has no density and no ODE");
    auto G = load_one_step_generator(vm["model"].as<std::string>()).generator;
    G->to(ctx.globals.device);
    check_writable(out);
    seed_all(derive_seed(ctx.globals.seed, 10, 0));
    torch::Tensor x;
    {
      torch::NoGradGuard ng;
      x = G->sample(n).cpu();
    }
    write_samples(out, x, {}, {{"model", vm["model"].as<std::string>()}, {"solver", "one-step generator"}, {"nfe", 1}});
    ctx.results = {{"out", out}, {"n", n}, {"dim", G->dim()}, {"nfe", 1}};
    ctx.out << "wrote " << n << " samples of dimension " << G->dim() << " to " << out << " (one-step generator, 1 evaluation)\n";
    return;
  }
  auto loaded = load_continuous_flow(vm["model"].as<std::string>());
  auto& cnf = *loaded.flow;
  cnf.to(ctx.globals.device);
  auto* fmap = dynamic_cast<FlowMapMLP*>(cnf.velocity().get());
  if (map_steps > 0 && fmap == nullptr)
    usage_error("--map-steps", "'" + vm["model"].as<std::string>() + "' is a velocity field, not a flow map (train with --method flowmap)");
  check_writable(out);
  if (map_steps > 0) {
    seed_all(derive_seed(ctx.globals.seed, 10, 0));
    const auto x = sample_flow_map(*fmap, cnf.base()->sample(n).to(cnf.tensor_options()), map_steps).cpu();
    const std::string how = "flow map, " + std::to_string(map_steps) + (map_steps == 1 ? " jump" : " jumps");
    write_samples(out, x, {}, {{"model", vm["model"].as<std::string>()}, {"solver", how}, {"nfe", map_steps}});
    ctx.results = {{"out", out}, {"n", n}, {"dim", cnf.dim()}, {"map_steps", map_steps}, {"nfe", map_steps}};
    ctx.out << "wrote " << n << " samples of dimension " << cnf.dim() << " to " << out << " (" << how << ", "
            << map_steps << " evaluations)\n";
    return;
  }
  if (boss > 0) {  // Euler on the BOSS schedule, fitted on source samples of a separate stream
    seed_all(derive_seed(ctx.globals.seed, 10, 1));
    const auto cost = boss_cost(cnf, cnf.base()->sample(1000), boss_fine);
    ode = OdeOptions().method(OdeMethod::kEuler).grid(boss_grid(cost, boss));
  }
  cnf.options().ode(ode);
  seed_all(derive_seed(ctx.globals.seed, 10, 0));
  torch::Tensor x, lq;
  if (with_lq) {
    std::tie(x, lq) = cnf.sample_and_log_prob(n);
    lq = lq.cpu();
  } else {
    x = cnf.sample(n);
  }
  x = x.cpu();
  const auto st = cnf.last_stats();
  write_samples(out, x, lq, {{"model", vm["model"].as<std::string>()}, {"solver", ode.summary()}, {"nfe", st.nfe}});
  ctx.results = {{"out", out}, {"n", n}, {"dim", cnf.dim()}, {"solver", ode.to_json()}, {"nfe", st.nfe}};
  if (boss > 0) ctx.results["boss_grid"] = ode.grid();
  if (with_lq) {
    ctx.results["mean_log_q"] = lq.mean().item<double>();
    ctx.results["estimator"] = cnf.estimator();
  }
  ctx.out << "wrote " << n << " samples of dimension " << cnf.dim() << " to " << out << " (" << ode.summary()
          << ", " << st.nfe << " evaluations" << (with_lq ? ", log q by the " + cnf.estimator() + " divergence" : "")
          << ")\n";
}

// The held-out target of `cfm eval`: --target, or fresh samples of the built-in the model was
// trained on; at most n rows.
DataSource eval_target(const po::variables_map& vm, const json& metadata, int64_t n, int64_t dim) {
  const std::string spec = vm.count("target") ? vm["target"].as<std::string>() : metadata.value("target", std::string());
  if (!vm.count("target") && !is_toy_density(spec))
    usage_error("--target", "is required: the model was trained on '" + spec +
                                "', not a built-in density, so give held-out rows (file.csv or file.h5:/dataset)");
  auto target = load_data(spec, n, "--target");
  if (target.x.size(1) != dim)
    usage_error("--target", "has dimension " + std::to_string(target.x.size(1)) + " but the model " + std::to_string(dim));
  if (target.x.size(0) > n) target.x = target.x.narrow(0, 0, n);
  return target;
}

// cfm eval of a one-step generator: W2 at its one evaluation (no density, no trajectory).
void eval_generator(const po::variables_map& vm, Context& ctx) {
  const std::string model = vm["model"].as<std::string>();
  for (const char* o : {"euler-steps", "map-steps"})
    if (vm.count(o)) usage_error(std::string("--") + o, "'" + model + "' is a one-step generator (wflow): it has no ODE or map steps");
  if (vm["boss"].as<bool>()) usage_error("--boss", "'" + model + "' is a one-step generator (wflow): it has no ODE");
  auto loaded = load_one_step_generator(model);
  auto& G = *loaded.generator;
  G.to(ctx.globals.device);
  seed_all(derive_seed(ctx.globals.seed, 8, 0));
  const auto target = eval_target(vm, loaded.metadata, vm["n"].as<int64_t>(), G.dim());
  torch::NoGradGuard ng;
  seed_all(derive_seed(ctx.globals.seed, 8, 1));
  const double w2 = wasserstein2(G.sample(target.x.size(0)).cpu(), target.x);
  ctx.results = {{"model", model}, {"target", target.description}, {"n", target.x.size(0)}, {"dim", G.dim()},
                 {"path", "wflow"}, {"w2", w2}, {"nfe", 1}};
  ctx.out << std::fixed << std::setprecision(4) << "W2 (exact, n = " << target.x.size(0) << ")  " << w2
          << "   one-step generator, 1 evaluation\nNLL                not defined: a one-step generator has no density\n";
}

void run_eval(const po::variables_map& vm, Context& ctx) {
  const int64_t n = vm["n"].as<int64_t>();
  check_positive_int("-n", "value", n);
  const auto ode = solver_from(vm, "steps");
  std::vector<int64_t> euler;
  if (vm.count("euler-steps")) euler = parse_int_list(vm["euler-steps"].as<std::string>(), "--euler-steps");
  std::vector<int64_t> jumps;
  if (vm.count("map-steps")) jumps = parse_int_list(vm["map-steps"].as<std::string>(), "--map-steps");
  if (vm["boss"].as<bool>()) {
    if (euler.empty()) usage_error("--boss", "needs --euler-steps (the step counts to schedule)");
    check_positive_int("--boss-fine", "value", vm["boss-fine"].as<int64_t>());
    for (int64_t k : euler)
      if (k > vm["boss-fine"].as<int64_t>())
        usage_error("--boss", "step count " + std::to_string(k) + " exceeds --boss-fine " +
                                  std::to_string(vm["boss-fine"].as<int64_t>()));
  }
  const int64_t s_steps = vm["straightness-steps"].as<int64_t>();
  check_positive_int("--straightness-steps", "value", s_steps);
  const std::string model = vm["model"].as<std::string>();
  if (checkpoint_model_type(model) == "one_step_generator") return eval_generator(vm, ctx);
  auto loaded = load_continuous_flow(model);
  auto& cnf = *loaded.flow;
  cnf.to(ctx.globals.device);
  const OdeOptions stored = cnf.options().ode();
  cnf.options().ode(ode);
  auto* fmap = dynamic_cast<FlowMapMLP*>(cnf.velocity().get());
  if (!jumps.empty() && fmap == nullptr)
    usage_error("--map-steps", "'" + model + "' is a velocity field, not a flow map (train with --method flowmap)");
  if (vm.count("divergence")) cnf.options().divergence(vm["divergence"].as<std::string>());
  if (vm.count("probes")) cnf.options().probes(vm["probes"].as<int64_t>());
  cnf.options().validate();
  seed_all(derive_seed(ctx.globals.seed, 8, 0));
  const auto target = eval_target(vm, loaded.metadata, n, cnf.dim());
  const auto& test = target.x;
  const int64_t m = test.size(0);

  torch::NoGradGuard ng;
  seed_all(derive_seed(ctx.globals.seed, 8, 1));
  const auto z0 = cnf.base()->sample(m);
  json r = {{"model", model}, {"target", target.description}, {"n", m}, {"dim", cnf.dim()},
            {"path", cnf.options().path()}};
  ctx.out << std::fixed << std::setprecision(4);
  auto w2_of = [&](const OdeOptions& o, int64_t* nfe) {
    const auto x = cnf.transport(z0, 0.0, 1.0, o);
    *nfe = cnf.last_stats().nfe;
    return wasserstein2(x.cpu(), test);
  };
  int64_t nfe = 0;
  const double w2 = w2_of(ode, &nfe);
  r["solver"] = ode.to_json();
  r["w2"] = w2;
  r["nfe"] = nfe;
  ctx.out << "W2 (exact, n = " << m << ")  " << w2 << "   " << ode.summary() << ", " << nfe << " evaluations\n";
  if (!stored.grid().empty()) {  // a BOSS-straightened model: Euler on the grid it was tuned for
    int64_t e = 0;
    const double w = w2_of(stored, &e);
    const int64_t k = static_cast<int64_t>(stored.grid().size()) - 1;
    r["stored_grid"] = {{"steps", k}, {"w2", w}, {"nfe", e}, {"grid", stored.grid()}};
    ctx.out << "W2 stored grid " << std::setw(2) << k << " Euler steps  " << w << "   (the schedule the model was straightened on)\n";
  }
  json ej = json::array();
  for (int64_t k : euler) {
    int64_t e = 0;
    const double w = w2_of(OdeOptions().method(OdeMethod::kEuler).steps(k), &e);
    ej.push_back({{"steps", k}, {"w2", w}, {"nfe", e}});
    ctx.out << "W2 euler " << std::setw(3) << k << " steps  " << w << "\n";
  }
  if (!euler.empty()) r["euler"] = ej;
  json mj = json::array();
  for (int64_t k : jumps) {
    const double w = wasserstein2(sample_flow_map(*fmap, z0, k).cpu(), test);
    mj.push_back({{"steps", k}, {"w2", w}, {"nfe", k}});
    ctx.out << "W2 map   " << std::setw(3) << k << (k == 1 ? " jump   " : " jumps  ") << w << "\n";
  }
  if (!jumps.empty()) r["map"] = mj;
  if (vm["boss"].as<bool>()) {
    const int64_t fine = vm["boss-fine"].as<int64_t>();
    seed_all(derive_seed(ctx.globals.seed, 8, 2));  // the cost matrix's own samples
    const auto cost = boss_cost(cnf, cnf.base()->sample(1000), fine);
    json bj = json::array();
    for (int64_t k : euler) {
      int64_t e = 0;
      const auto grid = boss_grid(cost, k);
      const double w = w2_of(OdeOptions().method(OdeMethod::kEuler).grid(grid), &e);
      bj.push_back({{"steps", k}, {"w2", w}, {"nfe", e}, {"grid", grid}});
      ctx.out << "W2 BOSS  " << std::setw(3) << k << " steps  " << w << "\n";
    }
    r["boss"] = bj;
  }
  const double S = straightness(cnf, z0, s_steps);
  r["straightness"] = S;
  ctx.out << "straightness       " << S << "   (E int ||(X1 - X0) - v||^2 dt, " << s_steps << " Euler steps)\n";
  const bool has_density = std::dynamic_pointer_cast<Empirical>(cnf.base()) == nullptr;
  if (has_density && !vm["no-nll"].as<bool>()) {
    const auto lp = cnf.log_prob(test.to(cnf.tensor_options())).to(torch::kFloat64).cpu();
    const double nll = -lp.mean().item<double>(), se = lp.std().item<double>() / std::sqrt(double(m));
    r["nll"] = nll;
    r["nll_se"] = se;
    r["nll_nfe"] = cnf.last_stats().nfe;
    r["estimator"] = cnf.estimator();
    ctx.out << "NLL                " << nll << " +- " << se << " nats/sample (" << cnf.estimator()
            << " divergence, " << cnf.last_stats().nfe << " evaluations)\n";
    if (target.truth) {
      const double H = target.truth->entropy();
      r["entropy"] = H;
      r["gap"] = nll - H;
      ctx.out << "true entropy       " << H << " nats\ngap                " << nll - H << " nats\n";
    }
  } else if (!has_density) {
    ctx.out << "NLL                not defined: the source is given by data rows (no density)\n";
  }
  ctx.results = r;
}

}  // namespace

void add_solver_options(po::options_description& o, const std::string& steps_name, const std::string& default_solver,
                        int64_t default_steps, const std::string& prefix) {
  o.add_options()
      ("solver", po::value<std::string>()->default_value(default_solver), (prefix + "ODE solver: euler, midpoint, heun, rk4, dopri5").c_str())
      (steps_name.c_str(), po::value<int64_t>()->default_value(default_steps), (prefix + "steps of a fixed-grid solver").c_str())
      ("rtol", po::value<double>()->default_value(1e-5, "1e-05"), (prefix + "dopri5 relative tolerance").c_str())
      ("atol", po::value<double>()->default_value(1e-5, "1e-05"), (prefix + "dopri5 absolute tolerance").c_str())
      ("max-steps", po::value<int64_t>()->default_value(10000), (prefix + "dopri5 step cap").c_str());
}

OdeOptions solver_from(const po::variables_map& vm, const std::string& steps_name) {
  OdeOptions o;
  o.method(parse_ode_method(vm["solver"].as<std::string>()))
      .steps(vm[steps_name].as<int64_t>())
      .rtol(vm["rtol"].as<double>())
      .atol(vm["atol"].as<double>())
      .max_steps(vm["max-steps"].as<int64_t>());
  if (o.steps() < 1) usage_error("--" + steps_name, "must be >= 1");
  o.validate();
  return o;
}

Command cfm_train_command() {
  return {"cfm", "train", "train a continuous flow by flow matching (I-CFM, OT-CFM, SB-CFM, FM, VP-CFM, W-CFM, rectified flow, flow maps)",
          train_opts, run_train};
}

Command cfm_sample_command() {
  return {"cfm", "sample", "draw samples (and with --log-prob their exact log-densities) from a continuous flow",
          [] {
            po::options_description o;
            o.add_options()
                ("model", po::value<std::string>()->required(), "model file written by cfm train")
                ("n,n", po::value<int64_t>()->required(), "number of samples")
                ("out", po::value<std::string>()->required(), "output: FILE.h5 (/x, /log_q) or FILE.csv")
                ("log-prob", po::bool_switch(), "also integrate the divergence for log q(x)")
                ("boss", po::value<int64_t>(), "sample with K Euler steps on the BOSS schedule (Nguyen et al. 2024) instead of --solver")
                ("map-steps", po::value<int64_t>(), "flow maps: sample with K jumps of the map on a uniform grid instead of an ODE solve")
                ("boss-fine", po::value<int64_t>()->default_value(100), "fine RK4 grid of the BOSS cost matrix");
            add_solver_options(o, "steps");
            return o;
          },
          run_sample};
}

Command cfm_eval_command() {
  return {"cfm", "eval", "evaluate a continuous flow: exact W2 to held-out target samples, NFE, straightness, exact NLL",
          [] {
            po::options_description o;
            o.add_options()
                ("model", po::value<std::string>()->required(), "model file written by cfm train")
                ("target", po::value<std::string>(), "held-out target samples (default: fresh samples of the built-in target)")
                ("n,n", po::value<int64_t>()->default_value(1000), "evaluation samples")
                ("euler-steps", po::value<std::string>(), "also report W2 for Euler with these step counts, e.g. 1,2,4,8")
                ("boss", po::bool_switch(), "and for Euler on the BOSS schedules of those step counts (Nguyen et al. 2024)")
                ("map-steps", po::value<std::string>(), "flow maps: also report W2 for these numbers of jumps, e.g. 1,2,4,8")
                ("boss-fine", po::value<int64_t>()->default_value(100), "fine RK4 grid of the BOSS cost matrix")
                ("straightness-steps", po::value<int64_t>()->default_value(100), "Euler steps of the straightness integral")
                ("divergence", po::value<std::string>(), "override the model's divergence estimator: auto, exact, hutchinson")
                ("probes", po::value<int64_t>(), "override the number of Hutchinson probes")
                ("no-nll", po::bool_switch(), "skip the log-likelihood");
            add_solver_options(o, "steps");
            return o;
          },
          run_eval};
}

}  // namespace nfkit::cli
