// nfkit fab train | eval: flows trained from a target's energy alone by FAB (boltzmann/fab.h) on
// the analytic targets of physics/analytic.h, and their importance-sampling estimates.
#include <torch/torch.h>

#include <chrono>
#include <iomanip>

#include "bg_common.h"
#include "figures.h"
#include "flow_common.h"
#include "nfkit/boltzmann/fab.h"
#include "nfkit/boltzmann/reweight.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/progress.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/normalization.h"
#include "nfkit/physics/analytic.h"

namespace nfkit::cli {

namespace {

// The flow of a FAB run: a fixed scaling by `scale` (the target's spread), then the recipe's
// blocks over a standard normal base.
std::shared_ptr<Flow> fab_flow(const FlowRecipe& r, double scale) {
  auto inner = build_flow(r);
  const auto zero = torch::zeros({r.dim}, torch::kFloat64);
  auto affine = std::make_shared<ElementwiseAffine>(zero, torch::full({r.dim}, std::log(scale), torch::kFloat64), false);
  return std::make_shared<Flow>(inner->base(), std::make_shared<CompositeTransform>(
                                                   std::vector<TransformPtr>{affine, inner->transform()}));
}

struct Evaluation {
  ImportanceEstimate est;
  double log_z_se = NAN;
  int64_t modes_covered = -1, modes = 0;  ///< gmm40: modes with a sample within 3 sigma
  double max_mode_mass_error = NAN;       ///< gmm40: max |reweighted mass - 1/K|
};

Evaluation evaluate(Flow& flow, const AnalyticTarget& target, int64_t n, uint64_t seed) {
  seed_all(seed);
  Evaluation ev;
  ev.est = importance_estimate(flow, *target.energy, n);
  const auto& lw = ev.est.log_w;
  if (std::isfinite(ev.est.log_z)) {
    const auto w = (lw - lw.max()).exp();
    ev.log_z_se = (w.std() / w.mean()).item<double>() / std::sqrt(static_cast<double>(n));
  }
  if (auto g = std::dynamic_pointer_cast<GaussianMixture40>(target.energy)) {
    const auto& mu = g->means();
    const auto d2 = (ev.est.x.unsqueeze(1) - mu.unsqueeze(0)).pow(2).sum(2);  // [n, K]
    const auto [dmin, nearest] = d2.min(1);
    const auto near = dmin < 9.0;
    ev.modes = mu.size(0);
    const auto hits = torch::zeros({ev.modes}, torch::kFloat64)
                          .index_add_(0, nearest, near.to(torch::kFloat64));
    ev.modes_covered = (hits > 0).sum().item<int64_t>();
    if (std::isfinite(ev.est.log_z)) {
      const auto wn = normalized_weights(lw);
      const auto mass = torch::zeros({ev.modes}, torch::kFloat64).index_add_(0, nearest, wn);
      ev.max_mode_mass_error = (mass - 1.0 / static_cast<double>(ev.modes)).abs().max().item<double>();
    }
  }
  return ev;
}

void report(const Evaluation& ev, const AnalyticTarget& target, Context& ctx) {
  const auto& e = ev.est;
  json r = {{"samples", e.n}, {"infinite_energies", e.infinite},
            {"log_z", std::isfinite(e.log_z) ? json(e.log_z) : json()},
            {"log_z_se", std::isfinite(ev.log_z_se) ? json(ev.log_z_se) : json()},
            {"ess_fraction", std::isfinite(e.ess_fraction) ? json(e.ess_fraction) : json()}};
  ctx.out << std::fixed << std::setprecision(4) << "importance sampling with " << e.n
          << " flow samples: log Z " << e.log_z << " +- " << ev.log_z_se;
  if (std::isfinite(target.log_z)) {
    r["log_z_exact"] = target.log_z;
    r["log_z_error"] = e.log_z - target.log_z;
    ctx.out << " (exact " << target.log_z << ", error " << std::showpos << e.log_z - target.log_z
            << std::noshowpos << ")";
  }
  ctx.out << ", Kish ESS " << std::setprecision(1) << 100.0 * e.ess_fraction << "%";
  if (e.infinite > 0) ctx.out << ", " << e.infinite << " infinite energies (zero weight)";
  ctx.out << "\n";
  if (ev.modes > 0) {
    r["modes"] = ev.modes;
    r["modes_covered"] = ev.modes_covered;
    r["max_mode_mass_error"] = ev.max_mode_mass_error;
    ctx.out << std::setprecision(4) << "modes with a flow sample within 3 sigma: " << ev.modes_covered << " of "
            << ev.modes << "; reweighted mass per mode within " << ev.max_mode_mass_error << " of 1/"
            << ev.modes << "\n";
  }
  ctx.results["evaluation"] = r;
}

// Flow samples and resampled (reweighted) samples in the first two coordinates, the target's
// exact samples beside them where it has them.
void samples_figure(const std::string& path, viz::Format fmt, const Evaluation& ev, const AnalyticTarget& target,
                    uint64_t seed) {
  const auto& x = ev.est.x;
  const int64_t m = std::min<int64_t>(x.size(0), 20000);
  auto col = [](const torch::Tensor& t, int64_t j) {
    const auto c = t.select(1, j).contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  std::vector<std::pair<std::string, torch::Tensor>> sets;
  sets.emplace_back("flow samples", x.narrow(0, 0, m));
  if (std::isfinite(ev.est.log_z))
    sets.emplace_back("flow samples reweighted (resampled)", x.index_select(0, resample(ev.est.log_w, m, seed)));
  if (target.sample) sets.emplace_back("target (exact samples)", target.sample(m, seed + 1));
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& [name, s] : sets) {
    const auto xy = s.narrow(1, 0, 2);
    lo = std::min(lo, torch::quantile(xy.reshape({-1}), 0.001).item<double>());
    hi = std::max(hi, torch::quantile(xy.reshape({-1}), 0.999).item<double>());
  }
  const double pad = 0.05 * (hi - lo);
  lo -= pad;
  hi += pad;
  viz::Figure fig;
  fig.title = "fab: " + target.spec + ", first two coordinates";
  fig.cols = static_cast<int>(sets.size());
  fig.width_px = 420 * fig.cols + 120;
  fig.height_px = 480;
  fig.colour_bar_label = "density / max";
  fig.caption = std::to_string(m) + " points per panel; Kish ESS " +
                std::to_string(static_cast<int>(std::lround(100.0 * ev.est.ess_fraction))) + "%";
  for (const auto& [name, s] : sets) {
    auto& p = fig.panel();
    p.title = name;
    p.x_label = "x0";
    p.y_label = "x1";
    p.x_range = {lo, hi};
    p.y_range = {lo, hi};
    p.heat = viz::histogram2d(col(s, 0), col(s, 1), 80, lo, hi, lo, hi);
    p.x_tick = p.y_tick = viz::nice_step(hi - lo, 4.0);
    p.legend = viz::Panel::Legend::kNone;
  }
  viz::save(fig, path, fmt);
}

po::options_description fab_train_options() {
  po::options_description o;
  o.add_options()
      ("target", po::value<std::string>()->required(),
       "target: many-well[:D], double-well[:D], gmm40[:SEED], mueller-brown[:T], dw4, lj13")
      ("out", po::value<std::string>()->required(), "model file to write (HDF5 checkpoint)")
      ("flow", po::value<std::string>()->default_value("nsf"), "flow kind: realnvp, maf, nsf, nsf-ar")
      ("layers", po::value<int64_t>()->default_value(8), "flow blocks")
      ("hidden", po::value<int64_t>()->default_value(64), "hidden units per conditioner layer")
      ("hidden-layers", po::value<int64_t>()->default_value(2), "hidden layers per conditioner")
      ("bins", po::value<int64_t>()->default_value(8), "spline bins (nsf, nsf-ar)")
      ("bound", po::value<double>()->default_value(5.0), "spline half-width, in units of --scale")
      ("scale", po::value<double>(), "initial width of the flow (a fixed scaling before its blocks; default: the target's spread, 20 for gmm40, 2 for dw4, else 1)")
      ("steps", po::value<int64_t>()->default_value(2000), "gradient steps")
      ("batch", po::value<int64_t>()->default_value(1024), "AIS particles per AIS run and points per step")
      ("lr", po::value<double>()->default_value(1e-3, "0.001"), "peak learning rate (AdamW, cosine decay)")
      ("warmup", po::value<int64_t>(), "warm-up steps (default: min(100, steps/10))")
      ("clip", po::value<double>()->default_value(100.0), "gradient-norm clip (0 = off; FAB: 100)")
      ("eval-every", po::value<int64_t>(), "steps between validations (default: steps/20)")
      ("eval-samples", po::value<int64_t>()->default_value(100000), "flow samples of the final estimate")
      ("checkpoint-every", po::value<int64_t>()->default_value(100), "steps between checkpoints (<out>.ckpt)")
      ("restart", po::bool_switch(), "ignore an existing checkpoint and start over")
      ("dtype", po::value<std::string>()->default_value("float32"), "float32 or float64")
      ("figure", po::value<std::string>(), "also draw the samples in the first two coordinates here (stem; format from --figure-format)");
  o.add(fab_sampler_options());
  return o;
}

void positive(const po::variables_map& vm, const char* name) {
  check_positive_int(std::string("--") + name, "value", vm[name].as<int64_t>());
}

void fab_train(const po::variables_map& vm, Context& ctx) {
  const auto target = make_analytic_target(vm["target"].as<std::string>());
  const std::string out = vm["out"].as<std::string>();
  for (const char* n : {"layers", "hidden", "hidden-layers", "bins", "steps", "batch", "val-samples",
                        "eval-samples"})
    positive(vm, n);
  FlowRecipe r;
  r.kind = vm["flow"].as<std::string>();
  check_flow_kind(r.kind);
  r.dim = target.energy->dim();
  r.layers = vm["layers"].as<int64_t>();
  r.hidden = vm["hidden"].as<int64_t>();
  r.hidden_layers = vm["hidden-layers"].as<int64_t>();
  r.bins = vm["bins"].as<int64_t>();
  r.bound = vm["bound"].as<double>();
  check_positive("--bound", "value", r.bound);
  r.identity_at_zero = true;
  r.seed = derive_seed(ctx.globals.seed, 5, 0);
  const double scale = vm.count("scale") ? vm["scale"].as<double>() : target.extent;
  check_positive("--scale", "value", scale);
  const auto dtype = parse_dtype(vm["dtype"].as<std::string>());

  FabOptions o;
  o.batch = vm["batch"].as<int64_t>();
  fab_sampler_from(vm, o);
  const int64_t steps = vm["steps"].as<int64_t>();
  const int64_t warmup = vm.count("warmup") ? vm["warmup"].as<int64_t>() : std::min<int64_t>(100, steps / 10);
  if (warmup < 0) usage_error("--warmup", "must be >= 0");
  const int64_t eval_every = vm.count("eval-every") ? vm["eval-every"].as<int64_t>() : std::max<int64_t>(1, steps / 20);
  check_positive_int("--eval-every", "value", eval_every);
  check_positive("--lr", "value", vm["lr"].as<double>());
  check_nonnegative("--clip", "value", vm["clip"].as<double>());
  o.trainer.steps(steps).lr(vm["lr"].as<double>()).warmup_steps(warmup)
      .clip_grad_norm(vm["clip"].as<double>()).eval_every(eval_every)
      .checkpoint_every(vm["checkpoint-every"].as<int64_t>()).checkpoint_path(out + ".ckpt")
      .seed(ctx.globals.seed).quiet(ctx.globals.quiet);
  o.check();

  seed_all(derive_seed(ctx.globals.seed, 5, 1));
  auto flow = fab_flow(r, scale);
  flow->to(dtype);
  flow->to(ctx.globals.device);
  if (!ctx.globals.quiet)
    ctx.err << "fab: " << target.spec << " (" << r.dim << " dimensions), " << r.kind << " " << r.layers << " x ["
            << r.hidden << " x " << r.hidden_layers << "], scale " << scale << "; " << steps << " steps, batch "
            << o.batch << ", AIS " << o.ais.intermediate << " x HMC(" << o.ais.hmc.leapfrog << " leapfrog), alpha "
            << o.ais.alpha << (o.buffer ? ", replay buffer" : ", no buffer") << std::endl;
  const json metadata = {{"kind", "fab"}, {"target", target.spec}, {"scale", scale},
                         {"recipe", {{"kind", r.kind}, {"layers", r.layers}, {"hidden", r.hidden},
                                     {"hidden_layers", r.hidden_layers}, {"bins", r.bins}, {"bound", r.bound}}}};
  const auto t0 = std::chrono::steady_clock::now();
  const auto rep = train_fab(flow, *target.energy, o, metadata, vm["restart"].as<bool>(),
                             [] { return stop_requested(); },
                             [&](int64_t step) {
                               if (!ctx.globals.quiet)
                                 ctx.err << "resuming from " << out << ".ckpt at step " << step << std::endl;
                             });
  if (rep.train.interrupted)
    throw Interrupted("interrupted at step " + std::to_string(rep.train.steps_done) + "; progress saved to " +
                      out + ".ckpt; rerun the same command to resume");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  json meta = metadata;
  meta["fab"] = o.to_json();
  save_trained(out, *flow, meta, rep.train, out + ".ckpt", "best_val_log_inverse_ess");

  ctx.results = rep.to_json();
  ctx.results["model"] = out;
  ctx.results["target"] = target.spec;
  ctx.results["seconds"] = seconds;
  ctx.out << "model written to " << out << " after " << rep.train.steps_done << " steps (" << format_duration(seconds)
          << "; " << rep.ais_runs << " AIS runs, " << rep.energy_evaluations << " energy evaluations this run";
  if (rep.failed > 0) ctx.out << ", " << rep.failed << " particles dropped";
  ctx.out << ")\n";
  const auto ev = evaluate(*flow, target, vm["eval-samples"].as<int64_t>(), derive_seed(ctx.globals.seed, 5, 2));
  report(ev, target, ctx);
  if (!rep.train.training.empty()) {
    const auto curve = training_figure_path(out, ctx.globals.figure_format);
    training_curve_figure(curve, ctx.globals.figure_format,
                          [&] {
                            auto c = training_curve(rep.train, "fab train: " + target.spec, "FAB loss (weighted -log q, nats)");
                            c.val_label = "log(1 / Kish ESS fraction)";
                            return c;
                          }());
    ctx.results["training_figure"] = curve;
  }
  if (vm.count("figure")) {
    const auto path = figure_path(vm["figure"].as<std::string>(), ctx.globals.figure_format);
    samples_figure(path, ctx.globals.figure_format, ev, target, derive_seed(ctx.globals.seed, 5, 3));
    ctx.results["figure"] = path;
  }
}

void fab_eval(const po::variables_map& vm, Context& ctx) {
  const std::string model = vm["model"].as<std::string>();
  auto loaded = load_flow(model);
  std::string spec;
  if (vm.count("target"))
    spec = vm["target"].as<std::string>();
  else if (loaded.metadata.contains("target"))
    spec = loaded.metadata.at("target").get<std::string>();
  else
    usage_error("--target", "is required: " + model + " does not say which target it was trained for");
  const auto target = make_analytic_target(spec);
  if (loaded.flow->dim() != target.energy->dim())
    runtime_error(model, "has " + std::to_string(loaded.flow->dim()) + " dimensions, but the target " + target.spec +
                             " has " + std::to_string(target.energy->dim()));
  positive(vm, "samples");
  loaded.flow->to(ctx.globals.device);
  const auto ev = evaluate(*loaded.flow, target, vm["samples"].as<int64_t>(), derive_seed(ctx.globals.seed, 5, 2));
  ctx.results["model"] = model;
  ctx.results["target"] = target.spec;
  report(ev, target, ctx);
  if (vm.count("figure")) {
    const auto path = figure_path(vm["figure"].as<std::string>(), ctx.globals.figure_format);
    samples_figure(path, ctx.globals.figure_format, ev, target, derive_seed(ctx.globals.seed, 5, 3));
    ctx.results["figure"] = path;
    ctx.out << "figure written to " << path << "\n";
  }
}

}  // namespace

Command fab_train_command() {
  return {"fab", "train", "train a flow from a target's energy alone (FAB: AIS + replay buffer) and estimate log Z",
          fab_train_options, fab_train};
}

Command fab_eval_command() {
  return {"fab", "eval", "importance-sampling log Z, ESS (and mode coverage) of a flow against its target",
          [] {
            po::options_description o;
            o.add_options()
                ("model", po::value<std::string>()->required(), "model file written by fab train")
                ("target", po::value<std::string>(), "target (default: the one the model was trained for)")
                ("samples", po::value<int64_t>()->default_value(100000), "flow samples")
                ("figure", po::value<std::string>(), "draw the samples in the first two coordinates here (stem)");
            return o;
          },
          fab_eval};
}

}  // namespace nfkit::cli
