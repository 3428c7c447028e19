// nfkit flow train: fit a flow to samples by maximum likelihood.
#include <torch/torch.h>

#include <cstdio>
#include <iomanip>

#include "flow_common.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/checkpoint.h"

namespace nfkit::cli {

NllStats nll_stats(Flow& flow, const torch::Tensor& x) {
  const auto nll = negative_log_likelihood(flow, x);
  NllStats s;
  s.n = nll.size(0);
  s.mean = nll.mean().item<double>();
  s.se = s.n > 1 ? nll.std().item<double>() / std::sqrt(static_cast<double>(s.n)) : NAN;
  return s;
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

po::options_description train_options(const std::string& default_data, int64_t default_steps,
                                      bool require_out) {
  po::options_description o;
  auto data = po::value<std::string>();
  if (!default_data.empty()) data->default_value(default_data);
  auto out = po::value<std::string>();
  if (require_out) out->required();
  o.add_options()
      ("data", data, "training data: a built-in (gmm, rings, spirals, checkerboard, banana[:D], "
                     "mixture:D:K, funnel[:D]), "
                     "file.csv or file.h5:/dataset")
      ("flow", po::value<std::string>()->default_value("nsf"), "flow kind: realnvp, maf, nsf, nsf-ar")
      ("out", out, "model file to write (HDF5 checkpoint)")
      ("n-samples", po::value<int64_t>()->default_value(20000), "samples drawn from a built-in dataset")
      ("val-fraction", po::value<double>()->default_value(0.1, "0.1"), "fraction held out for validation")
      ("layers", po::value<int64_t>()->default_value(4), "flow blocks")
      ("hidden", po::value<int64_t>()->default_value(64), "hidden units per conditioner layer")
      ("hidden-layers", po::value<int64_t>()->default_value(2), "hidden layers per conditioner")
      ("bins", po::value<int64_t>()->default_value(8), "spline bins (nsf, nsf-ar)")
      ("bound", po::value<double>()->default_value(4.0), "spline half-width in standardised units")
      ("steps", po::value<int64_t>()->default_value(default_steps), "optimizer steps")
      ("batch-size", po::value<int64_t>()->default_value(256), "minibatch size")
      ("lr", po::value<double>()->default_value(1e-3, "0.001"), "peak learning rate (AdamW)")
      ("weight-decay", po::value<double>()->default_value(0.0), "AdamW decoupled weight decay")
      ("warmup", po::value<int64_t>()->default_value(100), "linear warm-up steps before cosine decay")
      ("clip", po::value<double>()->default_value(10.0), "gradient-norm clip (0 = off)")
      ("ema", po::value<double>()->default_value(0.0), "EMA decay of the weights (0 = off)")
      ("eval-every", po::value<int64_t>()->default_value(100), "steps between validations")
      ("patience", po::value<int64_t>()->default_value(0), "validations without improvement before stopping (0 = never)")
      ("checkpoint-every", po::value<int64_t>()->default_value(500), "steps between checkpoints (<out>.ckpt)")
      ("restart", po::bool_switch(), "ignore an existing checkpoint and start over")
      ("dtype", po::value<std::string>()->default_value("float64"), "float64 or float32");
  return o;
}

TrainOutcome train_flow(const po::variables_map& vm, Context& ctx, const std::string& out) {
  if (!vm.count("data")) usage_error("--data", "is required (a built-in name, file.csv or file.h5:/dataset)");
  const double val_fraction = vm["val-fraction"].as<double>();
  check_in_range("--val-fraction", "value", val_fraction, 0.0, 0.5, /*open_lo=*/true);
  const auto dtype = parse_dtype(vm["dtype"].as<std::string>());

  FlowRecipe recipe;
  recipe.kind = vm["flow"].as<std::string>();
  recipe.layers = vm["layers"].as<int64_t>();
  recipe.hidden = vm["hidden"].as<int64_t>();
  recipe.hidden_layers = vm["hidden-layers"].as<int64_t>();
  recipe.bins = vm["bins"].as<int64_t>();
  recipe.bound = vm["bound"].as<double>();
  recipe.seed = derive_seed(ctx.globals.seed, 5, 0);
  check_positive_int("--layers", "value", recipe.layers);
  check_positive_int("--hidden", "value", recipe.hidden);
  check_positive_int("--hidden-layers", "value", recipe.hidden_layers);
  if (recipe.bins < 2) usage_error("--bins", "must be >= 2");
  check_positive("--bound", "value", recipe.bound);

  auto opts = trainer_options_from(vm, out, ctx);
  check_flow_kind(recipe.kind);  // before loading data: fail fast

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
  recipe.dim = x.size(1);

  seed_all(derive_seed(ctx.globals.seed, 3, 2));
  res.flow = build_flow(recipe, train);
  res.flow->to(ctx.globals.device, dtype);

  Objective obj;
  obj.train = train;
  obj.val = val;
  const json metadata = {{"data", res.data.description}, {"recipe", {{"kind", recipe.kind},
      {"layers", recipe.layers}, {"hidden", recipe.hidden}, {"hidden_layers", recipe.hidden_layers},
      {"bins", recipe.bins}, {"bound", recipe.bound}}}, {"trainer", opts.to_json()},
      {"n_train", train.size(0)}, {"n_val", val.size(0)}, {"nfkit_version", version_string()}};
  Trainer trainer(res.flow, opts, obj, metadata);
  trainer.should_stop = [](int64_t) { return stop_requested(); };
  if (!vm["restart"].as<bool>() && file_exists(opts.checkpoint_path())) {
    trainer.load_checkpoint(opts.checkpoint_path());
    if (!ctx.globals.quiet)
      ctx.err << "resuming from " << opts.checkpoint_path() << " at step " << trainer.step() << std::endl;
  }
  res.report = trainer.train();
  if (res.report.interrupted)
    throw Interrupted("interrupted at step " + std::to_string(res.report.steps_done) +
                      "; progress saved to " + opts.checkpoint_path() + "; rerun the same command to resume");

  {
    H5Writer w(out, "checkpoint", kCheckpointVersion);
    json meta = metadata;
    meta["best_step"] = res.report.best_step;
    meta["best_val_nll"] = res.report.best_val;
    write_flow(w, *res.flow, meta, res.report.steps_done);
    w.commit();
  }
  std::remove(opts.checkpoint_path().c_str());  // finished: the model file replaces it

  res.val = nll_stats(*res.flow, val);
  json r = {{"model", out}, {"data", res.data.description}, {"flow", recipe.kind},
            {"dim", recipe.dim}, {"steps", res.report.steps_done}, {"best_step", res.report.best_step},
            {"val_nll", res.val.mean}, {"val_nll_se", res.val.se}, {"n_val", res.val.n},
            {"bad_steps", res.report.bad_steps}, {"stopped_early", res.report.stopped_early}};
  ctx.out << std::fixed << std::setprecision(4);
  ctx.out << "model written to " << out << " (" << recipe.kind << ", dim " << recipe.dim << ", "
          << res.report.steps_done << " steps, best at step " << res.report.best_step << ")\n";
  ctx.out << "validation NLL  " << res.val.mean << " +- " << res.val.se << " nats/sample (n = " << res.val.n << ")\n";
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
          [] { return train_options("", 2000, true); },
          [](const po::variables_map& vm, Context& ctx) {
            train_flow(vm, ctx, vm["out"].as<std::string>());
          }};
}

}  // namespace nfkit::cli
