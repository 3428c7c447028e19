// nfkit flow train: fit a flow to samples by maximum likelihood.
#include <torch/torch.h>

#include <cstdio>
#include <iomanip>

#include "flow_common.h"
#include "figures.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/fit_settings.h"

namespace nfkit::cli {

NllStats nll_stats(Flow& flow, const torch::Tensor& x) {
  const auto nll = negative_log_likelihood(flow, x);
  NllStats s;
  s.n = nll.size(0);
  s.mean = nll.mean().item<double>();
  s.se = s.n > 1 ? nll.std().item<double>() / std::sqrt(static_cast<double>(s.n)) : NAN;
  return s;
}

TrainReport train_command(std::shared_ptr<Distribution> model, const TrainerOptions& options,
                          Objective objective, const json& metadata, bool restart, Context& ctx) {
  auto report = train_resuming(
      std::move(model), options, std::move(objective), metadata, restart,
      [] { return stop_requested(); },
      [&](int64_t step) {
        if (!ctx.globals.quiet)
          ctx.err << "resuming from " << options.checkpoint_path() << " at step " << step << std::endl;
      });
  if (report.interrupted)
    throw Interrupted("interrupted at step " + std::to_string(report.steps_done) +
                      "; progress saved to " + options.checkpoint_path() +
                      "; rerun the same command to resume");
  return report;
}

TrainerOptions trainer_options_from(const po::variables_map& vm, const std::string& out,
                                    const Context& ctx) {
  auto opts = TrainerOptions()
                  .steps(vm["steps"].as<int64_t>())
                  .batch_size(vm["batch-size"].as<int64_t>())
                  .lr(vm["lr"].as<double>())
                  .warmup_steps(vm["warmup"].as<int64_t>())
                  .ema_decay(vm["ema"].as<double>())
                  .eval_every(vm["eval-every"].as<int64_t>())
                  .checkpoint_every(vm["checkpoint-every"].as<int64_t>())
                  .checkpoint_path(out + ".ckpt")
                  .seed(ctx.globals.seed)
                  .quiet(ctx.globals.quiet);
  if (vm.count("weight-decay")) opts.weight_decay(vm["weight-decay"].as<double>());
  if (vm.count("clip")) opts.clip_grad_norm(vm["clip"].as<double>());
  if (vm.count("patience")) opts.patience(vm["patience"].as<int64_t>());
  check_positive_int("--steps", "value", opts.steps());
  check_positive_int("--batch-size", "value", opts.batch_size());
  check_positive("--lr", "value", opts.lr());
  check_positive_int("--eval-every", "value", opts.eval_every());
  return opts;
}

torch::Dtype parse_dtype(const std::string& s) {
  if (s == "float64") return torch::kFloat64;
  if (s == "float32") return torch::kFloat32;
  usage_error("--dtype", "'" + s + "' is not a dtype, expected float32 or float64");
}

po::options_description train_options(const std::string& default_data, bool require_out) {
  po::options_description o;
  auto data = po::value<std::string>();
  if (!default_data.empty()) data->default_value(default_data);
  auto out = po::value<std::string>();
  if (require_out) out->required();
  // Options without a default take the data-dependent value of default_fit_settings
  // (flows/fit_settings.h), printed at the start and recorded in the model file.
  o.add_options()
      ("data", data, "training data: a built-in (gmm, rings, spirals, checkerboard, banana[:D], "
                     "mixture:D:K, funnel[:D]), file.csv or file.h5:/dataset")
      ("flow", po::value<std::string>(), "flow kind: realnvp, maf, nsf, nsf-ar (default: nsf-ar up to 32 dimensions, nsf above)")
      ("out", out, "model file to write (HDF5 checkpoint)")
      ("n-samples", po::value<int64_t>()->default_value(20000), "samples drawn from a built-in dataset")
      ("val-fraction", po::value<double>()->default_value(0.1, "0.1"), "fraction held out for validation")
      ("layers", po::value<int64_t>(), "flow blocks (default: 5)")
      ("hidden", po::value<int64_t>(), "hidden units per conditioner layer (default: 128, 64 below 4000 rows)")
      ("hidden-layers", po::value<int64_t>(), "hidden layers per conditioner (default: 2)")
      ("bins", po::value<int64_t>(), "spline bins, nsf and nsf-ar (default: 16 for 1-2 dimensions, else 8)")
      ("affine-layers", po::value<int64_t>(), "affine blocks before the spline blocks, nsf and nsf-ar (default: 2 when the standardised data reach beyond 4, else 0)")
      ("bound", po::value<double>(), "spline half-width in standardised units (default: 5 when the standardised data lie within 4, else 8)")
      ("epochs", po::value<double>(), "passes over the training rows (default: 40, within 1000..20000 steps)")
      ("steps", po::value<int64_t>(), "optimizer steps (overrides --epochs)")
      ("batch-size", po::value<int64_t>(), "minibatch size (default: 512, fewer for small data)")
      ("lr", po::value<double>()->default_value(1e-3, "0.001"), "peak learning rate (AdamW)")
      ("weight-decay", po::value<double>()->default_value(0.0), "AdamW decoupled weight decay")
      ("warmup", po::value<int64_t>(), "linear warm-up steps before cosine decay (default: min(100, steps/10))")
      ("clip", po::value<double>()->default_value(10.0), "gradient-norm clip (0 = off)")
      ("ema", po::value<double>()->default_value(0.0), "EMA decay of the weights (0 = off)")
      ("eval-every", po::value<int64_t>(), "steps between validations (default: steps/40)")
      ("patience", po::value<int64_t>(), "validations without improvement before stopping, 0 = never (default: 10)")
      ("refit", po::bool_switch(), "after model selection, retrain on all rows (training + validation) "
                                   "for the selected number of steps")
      ("checkpoint-every", po::value<int64_t>()->default_value(500), "steps between checkpoints (<out>.ckpt)")
      ("restart", po::bool_switch(), "ignore an existing checkpoint and start over")
      ("dtype", po::value<std::string>(), "float32 or float64 (default: float32)");
  return o;
}

namespace {

// default_fit_settings for n_train rows, with every option the user gave put over it.
FitSettings fit_settings_from(const po::variables_map& vm, const Context& ctx,
                              const torch::Tensor& train) {
  const int64_t n_train = train.size(0);
  auto s = default_fit_settings(train);
  auto& r = s.recipe;
  auto& t = s.trainer;
  auto set_int = [&](const char* name, auto setter) {
    if (vm.count(name)) {
      const int64_t v = vm[name].as<int64_t>();
      check_positive_int(std::string("--") + name, "value", v);
      setter(v);
    }
  };
  if (vm.count("flow")) r.kind = vm["flow"].as<std::string>();
  set_int("layers", [&](int64_t v) { r.layers = v; });
  set_int("hidden", [&](int64_t v) { r.hidden = v; });
  set_int("hidden-layers", [&](int64_t v) { r.hidden_layers = v; });
  if (vm.count("bins")) {
    r.bins = vm["bins"].as<int64_t>();
    if (r.bins < 2) usage_error("--bins", "must be >= 2");
  }
  if (vm.count("affine-layers")) {
    r.affine_layers = vm["affine-layers"].as<int64_t>();
    if (r.affine_layers < 0) usage_error("--affine-layers", "must be >= 0");
  }
  if (vm.count("bound")) {
    r.bound = vm["bound"].as<double>();
    check_positive("--bound", "value", r.bound);
  }
  set_int("batch-size", [&](int64_t v) { t.batch_size(v); });
  if (vm.count("epochs") || vm.count("batch-size")) {
    const double epochs = vm.count("epochs") ? vm["epochs"].as<double>() : 40.0;
    check_positive("--epochs", "value", epochs);
    int64_t steps = steps_for_epochs(epochs, n_train, t.batch_size());
    if (!vm.count("epochs")) steps = std::clamp<int64_t>(steps, 1000, 20000);
    set_fit_length(s, steps);
  }
  // Warm-up and validation cadence follow the step count unless given.
  set_int("steps", [&](int64_t v) { set_fit_length(s, v); });
  if (vm.count("warmup")) {
    const int64_t w = vm["warmup"].as<int64_t>();
    if (w < 0) usage_error("--warmup", "must be >= 0");
    t.warmup_steps(w);
  }
  set_int("eval-every", [&](int64_t v) { t.eval_every(v); });
  if (vm.count("patience")) {
    const int64_t p = vm["patience"].as<int64_t>();
    if (p < 0) usage_error("--patience", "must be >= 0 (0 = never stop early)");
    t.patience(p);
  }
  if (vm.count("dtype")) s.dtype = parse_dtype(vm["dtype"].as<std::string>());
  check_positive("--lr", "value", vm["lr"].as<double>());
  t.lr(vm["lr"].as<double>())
      .weight_decay(vm["weight-decay"].as<double>())
      .clip_grad_norm(vm["clip"].as<double>())
      .ema_decay(vm["ema"].as<double>())
      .checkpoint_every(vm["checkpoint-every"].as<int64_t>())
      .seed(ctx.globals.seed)
      .quiet(ctx.globals.quiet);
  return s;
}

// Trains settings' flow on (train, val) with checkpoints at ckpt, resuming unless restart.
std::pair<std::shared_ptr<Flow>, TrainReport> run_training(
    const FitSettings& s, const torch::Tensor& train, const torch::Tensor& val,
    const std::string& ckpt, const json& metadata, bool restart, Context& ctx) {
  seed_all(derive_seed(ctx.globals.seed, 3, 2));
  auto flow = build_flow(s.recipe, train);
  flow->to(ctx.globals.device, s.dtype);
  Objective obj;
  obj.train = train;
  obj.val = val;
  auto report = train_command(flow, TrainerOptions(s.trainer).checkpoint_path(ckpt), obj,
                              metadata, restart, ctx);
  return {flow, report};
}

void write_model(const std::string& path, Flow& flow, const json& meta, const TrainReport& rep) {
  save_trained(path, flow, meta, rep, "", "best_val_nll");
}

}  // namespace

TrainOutcome train_flow(const po::variables_map& vm, Context& ctx, const std::string& out) {
  if (!vm.count("data")) usage_error("--data", "is required (a built-in name, file.csv or file.h5:/dataset)");
  const double val_fraction = vm["val-fraction"].as<double>();
  check_in_range("--val-fraction", "value", val_fraction, 0.0, 0.5, /*open_lo=*/true);
  if (vm.count("flow")) check_flow_kind(vm["flow"].as<std::string>());  // before loading data
  if (vm.count("dtype")) parse_dtype(vm["dtype"].as<std::string>());
  if (vm.count("epochs")) check_positive("--epochs", "value", vm["epochs"].as<double>());
  const bool restart = vm["restart"].as<bool>(), refit = vm["refit"].as<bool>();

  TrainOutcome res;
  seed_all(derive_seed(ctx.globals.seed, 3, 0));
  res.data = load_data(vm["data"].as<std::string>(), vm["n-samples"].as<int64_t>());
  check_writable(out);

  const auto& x = res.data.x;
  const int64_t N = x.size(0);
  const int64_t n_val = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(val_fraction * N)));
  if (N - n_val < 2)
    runtime_error(res.data.description, "has " + std::to_string(N) + " samples, too few to train and validate");
  seed_all(derive_seed(ctx.globals.seed, 3, 1));
  const auto perm = torch::randperm(N, torch::kInt64);
  const auto val = x.index_select(0, perm.narrow(0, 0, n_val));
  const auto train = x.index_select(0, perm.narrow(0, n_val, N - n_val));

  const auto settings = fit_settings_from(vm, ctx, train);
  const auto& recipe = settings.recipe;
  check_flow_kind(recipe.kind);
  FitSettings run = settings;
  run.recipe.seed = derive_seed(ctx.globals.seed, 5, 0);  // the random permutations
  if (!ctx.globals.quiet) ctx.err << "settings: " << settings.summary() << std::endl;

  json metadata = {{"data", res.data.description}, {"recipe", {{"kind", recipe.kind},
      {"layers", recipe.layers}, {"hidden", recipe.hidden}, {"hidden_layers", recipe.hidden_layers},
      {"bins", recipe.bins}, {"bound", recipe.bound}, {"affine_layers", recipe.affine_layers}}}, {"settings", settings.to_json()},
      {"trainer", run.trainer.to_json()}, {"n_train", train.size(0)}, {"n_val", val.size(0)},
      {"refit", refit}, {"nfkit_version", version_string()}};

  // Selection: train on the training rows, validate on the held-out ones. With --refit the
  // selected model is kept in <out>.selected.h5 until the refit on all rows has finished, so
  // that an interrupted refit resumes without repeating the selection.
  const std::string ckpt = out + ".ckpt", selected = out + ".selected.h5";
  TrainReport selection;
  if (refit && !restart && file_exists(selected)) {
    const auto meta = load_flow(selected).metadata;
    selection.best_step = meta.at("best_step").get<int64_t>();
    selection.best_val = meta.at("best_val_nll").get<double>();
    selection.steps_done = meta.at("selection_steps").get<int64_t>();
    if (!ctx.globals.quiet)
      ctx.err << "model selection done (" << selected << "): best at step " << selection.best_step << std::endl;
  } else {
    std::tie(res.flow, selection) = run_training(run, train, val, ckpt, metadata, restart, ctx);
    res.val = nll_stats(*res.flow, val);
    if (refit) {
      json meta = metadata;
      meta["selection_steps"] = selection.steps_done;
      write_model(selected, *res.flow, meta, selection);
      std::remove(ckpt.c_str());
    }
  }
  res.report = selection;
  if (refit) {
    // All rows, the selected length (the schedule fitted to it), no held-out data left to
    // validate on: the last weights are the model.
    FitSettings all = run;
    all.n_train = N;
    all.trainer.steps(std::max<int64_t>(1, selection.best_step))
        .warmup_steps(std::min(run.trainer.warmup_steps(), std::max<int64_t>(1, selection.best_step) / 10))
        .eval_every(std::max<int64_t>(1, selection.best_step))
        .patience(0);
    metadata["refit_steps"] = all.trainer.steps();
    metadata["selection_best_val_nll"] = selection.best_val;
    if (!ctx.globals.quiet)
      ctx.err << "refit on all " << N << " rows for " << all.trainer.steps() << " steps" << std::endl;
    TrainReport refit_rep;
    std::tie(res.flow, refit_rep) = run_training(all, x, {}, ckpt, metadata, restart, ctx);
    res.report.steps_done = refit_rep.steps_done;
    res.report.bad_steps += refit_rep.bad_steps;
  }
  write_model(out, *res.flow, metadata, res.report);
  std::remove(ckpt.c_str());  // finished: the model file replaces it
  std::remove(selected.c_str());
  std::string curve;
  if (!selection.training.empty()) {  // not when the selection was reused from <out>.selected.h5
    curve = training_figure_path(out, ctx.globals.figure_format);
    training_curve_figure(curve, ctx.globals.figure_format,
                          training_curve(selection, "flow train: " + recipe.kind + " on " + res.data.description,
                                         "negative log-likelihood (nats / sample)"));
  }

  if (refit) res.val = {};  // the validation rows were trained on
  json r = {{"model", out}, {"data", res.data.description}, {"flow", recipe.kind},
            {"dim", recipe.dim}, {"steps", res.report.steps_done}, {"best_step", res.report.best_step},
            {"settings", settings.to_json()}, {"refit", refit},
            {"bad_steps", res.report.bad_steps}, {"stopped_early", res.report.stopped_early}};
  if (!curve.empty()) r["figure"] = curve;
  ctx.out << std::fixed << std::setprecision(4);
  ctx.out << "model written to " << out << " (" << recipe.kind << ", dim " << recipe.dim << ", "
          << res.report.steps_done << " steps, best at step " << res.report.best_step
          << (refit ? ", refit on all rows" : "") << ")\n";
  if (!curve.empty()) ctx.out << "training curve  " << curve << " (training and validation NLL against step)\n";
  if (!refit) {
    r["val_nll"] = res.val.mean;
    r["val_nll_se"] = res.val.se;
    r["n_val"] = res.val.n;
    ctx.out << "validation NLL  " << res.val.mean << " +- " << res.val.se << " nats/sample (n = " << res.val.n << ")\n";
  } else {
    r["selection_val_nll"] = selection.best_val;
    ctx.out << "validation NLL  " << selection.best_val << " nats/sample at model selection (before the refit)\n";
  }
  if (res.data.truth) {
    seed_all(derive_seed(ctx.globals.seed, 4, 0));
    const auto test = res.data.truth->sample(std::max<int64_t>(10000, n_val));
    res.test = nll_stats(*res.flow, test);
    res.entropy = res.data.truth->entropy();
    r["test_nll"] = res.test.mean;
    r["test_nll_se"] = res.test.se;
    r["n_test"] = res.test.n;
    r["entropy"] = res.entropy;
    r["gap"] = res.test.mean - res.entropy;
    ctx.out << "held-out NLL    " << res.test.mean << " +- " << res.test.se << " nats/sample (n = "
            << res.test.n << ", fresh samples)\n";
    ctx.out << "true entropy    " << res.entropy << " nats (the best achievable NLL)\n";
    ctx.out << "gap             " << res.test.mean - res.entropy << " nats\n";
  }
  ctx.results = r;
  return res;
}

Command flow_train_command() {
  return {"flow", "train", "train a flow on samples (maximum likelihood)",
          [] { return train_options("", true); },
          [](const po::variables_map& vm, Context& ctx) {
            train_flow(vm, ctx, vm["out"].as<std::string>());
          }};
}

}  // namespace nfkit::cli
