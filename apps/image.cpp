// nfkit image train | bpd | sample: image density models on Fashion-MNIST (Debian's
// dataset-fashion-mnist) or any IDX image set: transformer autoregressive flows (TARFlow /
// STARFlow, docs/tarflow.md) and continuous flows with a U-Net velocity field trained by flow
// matching (docs/continuous.md).
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <iomanip>
#include <sstream>

#include "cli.h"
#include "figures.h"
#include "flow_common.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/core/files.h"
#include "nfkit/core/idx.h"
#include "nfkit/core/runtime.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/progress.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/continuous_flow.h"
#include "nfkit/flows/flow_matching.h"
#include "nfkit/flows/images.h"
#include "nfkit/flows/tarflow.h"
#include "nfkit/flows/trainer.h"
#include "nfkit/flows/unet.h"

namespace nfkit::cli {

namespace {

constexpr const char* kFashionDir = "/usr/share/datasets/fashion-mnist";

struct ImageSet {
  torch::Tensor images;  // uint8 [N, C, H, W]
  torch::Tensor labels;  // int64 [N]
};

// <dir>/<split>-images-idx3-ubyte[.gz] and labels, split = train | t10k.
ImageSet load_images(const std::string& dir, const std::string& split) {
  auto find = [&](const std::string& stem) {
    for (const std::string ext : {".gz", ""}) {
      const std::string p = dir + "/" + stem + ext;
      if (file_exists(p)) return p;
    }
    if (dir == kFashionDir)
      runtime_error(dir + "/" + stem + ".gz",
                    "is missing: install Debian's dataset-fashion-mnist (scripts/bootstrap does) or "
                    "pass --data DIR holding the IDX files");
    runtime_error(dir + "/" + stem + "[.gz]", "is missing (expected IDX files as in Fashion-MNIST)");
  };
  const auto ipath = find(split + "-images-idx3-ubyte"), lpath = find(split + "-labels-idx1-ubyte");
  ImageSet s;
  auto im = read_idx(ipath);
  if (im.dim() == 3) im = im.unsqueeze(1);
  if (im.dim() != 4) runtime_error(ipath, "holds " + std::to_string(im.dim()) + "-D data, expected images [N, H, W]");
  s.images = im;
  s.labels = read_idx(lpath).to(torch::kInt64);
  if (s.labels.dim() != 1 || s.labels.size(0) != im.size(0))
    runtime_error(lpath, "holds " + std::to_string(s.labels.numel()) + " labels for " +
                             std::to_string(im.size(0)) + " images in " + ipath);
  return s;
}

std::string split_name(const std::string& s) {
  if (s == "train") return "train";
  if (s == "test") return "t10k";
  usage_error("--split", "'" + s + "' is not a split, expected train or test");
}

// An image model of either kind, with its image shape.
struct ImageModel {
  std::string kind;                     // "tarflow" or "cfm"
  std::shared_ptr<Distribution> model;  // the density model
  std::shared_ptr<Flow> flow;           // tarflow
  std::shared_ptr<TarFlow> tar;         // tarflow
  std::shared_ptr<ContinuousFlow> cnf;  // cfm
  int64_t channels = 0, height = 0, width = 0, num_classes = 0;
  json meta;
};

ImageModel load_image_model(const std::string& path, const c10::Device& device) {
  ImageModel m;
  if (checkpoint_model_type(path) == "continuous_flow") {
    auto lc = load_continuous_flow(path);
    auto unet = std::dynamic_pointer_cast<UNetVelocity>(lc.flow->velocity());
    if (!unet) runtime_error(path, "is a continuous flow on vectors (nfkit cfm train), not an image model (nfkit image train)");
    const auto& o = unet->options();
    m = {"cfm", lc.flow, nullptr, nullptr, lc.flow, o.channels(), o.height(), o.width(), o.num_classes(), lc.metadata};
  } else {
    auto lf = load_flow(path);
    auto tar = std::dynamic_pointer_cast<TarFlow>(lf.flow->transform());
    if (!tar) runtime_error(path, "is not an image model (written by nfkit image train)");
    const auto& o = tar->options();
    m = {"tarflow", lf.flow, lf.flow, tar, nullptr, o.channels(), o.height(), o.width(), o.num_classes(), lf.metadata};
  }
  m.model->to(device);
  m.model->eval();
  return m;
}

std::string solver_text(const OdeOptions& o) {
  if (o.method() == OdeMethod::kDopri5) {
    std::ostringstream s;
    s << "dopri5 (rtol " << o.rtol() << ", atol " << o.atol() << ")";
    return s.str();
  }
  return ode_method_name(o.method()) + " " + std::to_string(o.steps()) + (o.steps() == 1 ? " step" : " steps");
}

void print_bpd(Context& ctx, const std::string& what, const BitsPerDim& r) {
  ctx.out << std::fixed << std::setprecision(4) << what << " bits/dim  " << r.mean << " +- " << r.se
          << "  (n = " << r.n << ", uniform dequantisation)\n";
}

// ---------------------------------------------------------------------------------------

po::options_description train_opts() {
  po::options_description o;
  o.add_options()
      ("data", po::value<std::string>()->default_value(kFashionDir), "directory with the IDX files")
      ("out", po::value<std::string>()->required(), "model file to write (HDF5 checkpoint)")
      ("model", po::value<std::string>()->default_value("tarflow"),
       "tarflow (transformer autoregressive flow) or cfm (U-Net velocity field trained by flow matching)")
      ("patch", po::value<int64_t>()->default_value(4), "tarflow: patch size p (tokens of p*p*C values)")
      ("blocks", po::value<int64_t>()->default_value(4), "tarflow: flow blocks")
      ("layers", po::value<int64_t>()->default_value(2), "tarflow: transformer layers per block")
      ("hidden", po::value<int64_t>()->default_value(128), "tarflow: transformer width")
      ("head-dim", po::value<int64_t>()->default_value(32), "tarflow: attention head width")
      ("start", po::value<std::string>()->default_value("shift"), "tarflow: first token: shift (TARFlow) or token (STARFlow)")
      ("scale", po::value<std::string>()->default_value("exp"), "tarflow: affine scale: exp (TARFlow) or softplus (STARFlow)")
      ("soft-clip", po::value<double>()->default_value(0.0), "tarflow: soft clip of log sigma (0 = off)")
      ("noise", po::value<std::string>()->default_value("uniform"),
       "tarflow: training noise: uniform (dequantisation, for bits/dim) or gaussian (for generation)")
      ("noise-sigma", po::value<double>()->default_value(0.05, "0.05"), "tarflow: std of gaussian noise in [-1, 1] units")
      ("method", po::value<std::string>()->default_value("icfm"), "cfm: icfm, otcfm, sbcfm, fm, vpcfm, wcfm or rf")
      ("sigma", po::value<double>()->default_value(0.0), "cfm: path noise (0 keeps the t = 1 marginal on the data, "
                                                         "what bits/dim measure; sbcfm needs > 0)")
      ("time", po::value<std::string>()->default_value("uniform"), "cfm: time distribution uniform or ushaped (Lee et al. 2024)")
      ("base-channels", po::value<int64_t>()->default_value(32), "cfm: U-Net width of the first level")
      ("channel-mult", po::value<std::string>()->default_value("1,2,2"), "cfm: U-Net width multiplier per level")
      ("res-blocks", po::value<int64_t>()->default_value(1), "cfm: U-Net residual blocks per level")
      ("groups", po::value<int64_t>()->default_value(8), "cfm: GroupNorm groups")
      ("dropout", po::value<double>()->default_value(0.0), "cfm: dropout in the residual blocks")
      ("conditional", po::bool_switch(), "class-conditional (one-hot labels, label drop for guidance)")
      ("label-drop", po::value<double>()->default_value(0.1, "0.1"), "probability of dropping a label in training")
      ("val-size", po::value<int64_t>()->default_value(2000), "training images held out for validation")
      ("steps", po::value<int64_t>()->default_value(8000), "optimizer steps (tarflow 8000: about 50 minutes on 2 cores)")
      ("batch-size", po::value<int64_t>()->default_value(64), "minibatch size")
      ("lr", po::value<double>()->default_value(1e-3, "0.001"), "peak learning rate (AdamW)")
      ("weight-decay", po::value<double>()->default_value(1e-4, "0.0001"), "AdamW decoupled weight decay")
      ("warmup", po::value<int64_t>()->default_value(200), "linear warm-up steps")
      ("clip", po::value<double>()->default_value(1.0), "gradient-norm clip")
      ("ema", po::value<double>()->default_value(0.0), "EMA decay of the weights (0 = off; see docs/tarflow.md)")
      ("eval-every", po::value<int64_t>()->default_value(500), "steps between validations")
      ("checkpoint-every", po::value<int64_t>()->default_value(250), "steps between checkpoints (<out>.ckpt)")
      ("restart", po::bool_switch(), "ignore an existing checkpoint and start over");
  return o;
}

std::vector<int64_t> parse_channel_mult(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      usage_error("--channel-mult", "'" + s + "' is not a comma-separated list of integers, e.g. 1,2,2");
    }
  }
  return out;
}

// The U-Net continuous flow of --model cfm and its flow-matching objective (the source is the
// Normal base; x1 is a dequantised image in [-1, 1)).
struct CfmImageSetup {
  std::shared_ptr<ContinuousFlow> cnf;
  CfmOptions cfm;
};

CfmImageSetup make_cfm_image_model(const po::variables_map& vm, const ImageSet& data, int64_t K) {
  CfmImageSetup s;
  const auto method = parse_cfm_method(vm["method"].as<std::string>());
  if (method == CfmMethod::kFlowMap)
    usage_error("--method", "flowmap needs a two-time field (cfm train); image models take icfm, otcfm, sbcfm, fm, "
                            "vpcfm, wcfm or rf");
  s.cfm.method(method).sigma(vm["sigma"].as<double>()).time(vm["time"].as<std::string>());
  check_nonnegative("--sigma", "value", s.cfm.sigma());
  auto uo = UNetVelocityOptions(data.images.size(1), data.images.size(2), data.images.size(3))
                .num_classes(K)
                .base_channels(vm["base-channels"].as<int64_t>())
                .channel_mult(parse_channel_mult(vm["channel-mult"].as<std::string>()))
                .res_blocks(vm["res-blocks"].as<int64_t>())
                .groups(vm["groups"].as<int64_t>())
                .dropout(vm["dropout"].as<double>());
  uo.validate();
  if (method == CfmMethod::kWCFM) {
    // The Gibbs kernel's eps: the mean squared distance of independent (noise, image) pairs.
    torch::NoGradGuard ng;
    const auto x1 = dequantize_uniform(data.images.narrow(0, 0, std::min<int64_t>(1000, data.images.size(0))));
    s.cfm.wcfm_eps((torch::randn_like(x1) - x1).pow(2).sum(1).mean().item<double>());
  }
  s.cfm.validate();
  auto field = std::make_shared<UNetVelocity>(uo);
  s.cnf = std::make_shared<ContinuousFlow>(std::make_shared<StandardNormal>(uo.dim()), field,
                                           ContinuousFlowOptions().path(cfm_method_name(method)).divergence("hutchinson"));
  return s;
}

void run_train(const po::variables_map& vm, Context& ctx) {
  const std::string out = vm["out"].as<std::string>();
  const std::string kind = vm["model"].as<std::string>();
  if (kind != "tarflow" && kind != "cfm") usage_error("--model", "'" + kind + "' is not an image model, expected tarflow or cfm");
  const bool cfm_model = kind == "cfm";
  // An option of the other kind of model is a mistake, not something to ignore silently.
  static const std::vector<std::string> tarflow_only{"patch", "blocks", "layers", "hidden", "head-dim", "start",
                                                     "scale", "soft-clip", "noise", "noise-sigma"};
  static const std::vector<std::string> cfm_only{"method", "sigma", "time", "base-channels", "channel-mult",
                                                 "res-blocks", "groups", "dropout"};
  for (const auto& o : cfm_model ? tarflow_only : cfm_only)
    if (!vm[o].defaulted())
      usage_error("--" + o, std::string("is an option of --model ") + (cfm_model ? "tarflow" : "cfm") + " (this run trains --model " +
                                kind + ")");
  const std::string noise = cfm_model ? "uniform" : vm["noise"].as<std::string>();
  if (noise != "uniform" && noise != "gaussian")
    usage_error("--noise", "'" + noise + "' is not a noise kind, expected uniform or gaussian");
  const double sigma = vm["noise-sigma"].as<double>();
  if (noise == "gaussian") check_positive("--noise-sigma", "value", sigma);
  const int64_t val_size = vm["val-size"].as<int64_t>();
  check_positive_int("--val-size", "value", val_size);
  const bool conditional = vm["conditional"].as<bool>();
  const double label_drop = vm["label-drop"].as<double>();
  check_in_range("--label-drop", "value", label_drop, 0.0, 1.0);
  auto to = TarFlowOptions()
                .patch(vm["patch"].as<int64_t>())
                .blocks(vm["blocks"].as<int64_t>())
                .layers(vm["layers"].as<int64_t>())
                .hidden(vm["hidden"].as<int64_t>())
                .head_dim(vm["head-dim"].as<int64_t>())
                .label_drop(label_drop)
                .start(vm["start"].as<std::string>())
                .scale(vm["scale"].as<std::string>())
                .soft_clip(vm["soft-clip"].as<double>());
  const auto topts = trainer_options_from(vm, out, ctx);  // checks --steps, --batch-size, --lr

  const std::string dir = vm["data"].as<std::string>();
  auto data = load_images(dir, "train");
  const int64_t N = data.images.size(0);
  if (N <= val_size) runtime_error(dir, "holds " + std::to_string(N) + " training images, not more than --val-size");
  to.channels(data.images.size(1)).height(data.images.size(2)).width(data.images.size(3));
  const int64_t K = conditional ? data.labels.max().item<int64_t>() + 1 : 0;
  to.num_classes(K);
  check_writable(out);

  seed_all(derive_seed(ctx.globals.seed, 31, 0));
  std::shared_ptr<Distribution> model;
  CfmImageSetup cs;
  if (cfm_model) {
    cs = make_cfm_image_model(vm, data, K);  // validates the U-Net and objective options
    model = cs.cnf;
  } else {
    model = make_tarflow(to);  // validates the architecture options
  }
  model->to(ctx.globals.device);
  const auto train_px = data.images.narrow(0, 0, N - val_size);
  const auto val_px = data.images.narrow(0, N - val_size, val_size);
  Objective obj;
  obj.train = train_px.reshape({N - val_size, -1}).to(torch::kFloat32);  // raw pixel values
  torch::manual_seed(derive_seed(ctx.globals.seed, 31, 1));
  obj.val = noise == "uniform" ? dequantize_uniform(val_px) : pixels_to_model(val_px, sigma);
  if (K > 0) {
    obj.train_context = one_hot_labels(data.labels.narrow(0, 0, N - val_size), K);
    obj.val_context = one_hot_labels(data.labels.narrow(0, N - val_size, val_size), K);
  }
  // TARFlow drops labels inside its blocks (training mode); the U-Net field is told the null
  // label (an all-zero row) here, with the same probability.
  obj.augment = [noise, sigma, cfm_model, label_drop](const torch::Tensor& px, const torch::Tensor& c) {
    auto y = noise == "uniform" ? dequantize_uniform(px) : pixels_to_model(px, sigma);
    if (!cfm_model || !c.defined() || label_drop <= 0.0) return std::make_tuple(y, c);
    const auto keep = (torch::rand({c.size(0), 1}, c.options()) >= label_drop).to(c.dtype());
    return std::make_tuple(y, c * keep);
  };
  if (cfm_model) {
    auto cnf = cs.cnf;
    const auto cfm = cs.cfm;
    obj.loss = [cnf, cfm](const torch::Tensor& x, const torch::Tensor& c) {
      return cfm_loss(*cnf->velocity(), cfm, torch::randn_like(x), x, c);
    };
    const auto val = obj.val.to(cnf->tensor_options());
    const auto val_c = K > 0 ? obj.val_context.to(cnf->tensor_options()) : torch::Tensor();
    const uint64_t val_seed = derive_seed(ctx.globals.seed, 31, 2);
    obj.validate = [cnf, cfm, val, val_c, val_seed] {
      torch::NoGradGuard ng;
      torch::manual_seed(val_seed);
      double total = 0;
      for (int64_t i = 0; i < val.size(0); i += 256) {
        const int64_t n = std::min<int64_t>(256, val.size(0) - i);
        const auto x = val.narrow(0, i, n);
        const auto c = val_c.defined() ? val_c.narrow(0, i, n) : torch::Tensor();
        total += cfm_loss(*cnf->velocity(), cfm, torch::randn_like(x), x, c).item<double>() * n;
      }
      return total / val.size(0);
    };
  }
  const double D = static_cast<double>(to.dim());
  json meta = {{"data", dir}, {"model", kind}, {"noise", noise}, {"noise_sigma", noise == "gaussian" ? sigma : 0.0},
               {"num_classes", K}, {"trainer", topts.to_json()}, {"n_train", N - val_size},
               {"n_val", val_size}, {"nfkit_version", version_string()}};
  if (cfm_model) {
    meta["cfm"] = cs.cfm.to_json();
    meta["label_drop"] = K > 0 ? label_drop : 0.0;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const auto rep = train_command(model, topts, obj, meta, vm["restart"].as<bool>(), ctx);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  save_trained(out, *model, meta, rep, topts.checkpoint_path(),
               cfm_model ? "best_val_loss" : "best_val_nll");
  const std::string curve = training_figure_path(out, ctx.globals.figure_format);
  training_curve_figure(curve, ctx.globals.figure_format,
                        cfm_model ? training_curve(rep, "image train: U-Net " + cfm_method_name(cs.cfm.method()) + " on " + dir,
                                                   "flow-matching loss (mean square per value)")
                                  : training_curve(rep, "image train: TARFlow on " + dir, "negative log-likelihood (nats / image)"));
  const double imgs_per_s = secs > 0 ? (rep.steps_done - rep.start_step) * topts.batch_size() / secs : 0.0;
  ctx.out << std::fixed << std::setprecision(4) << "model written to " << out << " (" << rep.steps_done
          << " steps, best at step " << rep.best_step << ", " << std::setprecision(1) << imgs_per_s
          << " images/s)\n";
  const bool has_bpd = !cfm_model && noise == "uniform";
  const double val_bpd = has_bpd ? nll_to_bits_per_dim(rep.best_val, D) : 0.0;
  if (has_bpd)
    ctx.out << std::setprecision(4) << "validation bits/dim  " << val_bpd << "  (" << val_size << " held-out training images)\n";
  if (cfm_model)
    ctx.out << std::setprecision(5) << "validation flow-matching loss  " << rep.best_val << "  (" << val_size
            << " held-out training images; bits/dim: nfkit image bpd)\n";
  ctx.results = {{"model", out}, {"kind", kind}, {"steps", rep.steps_done}, {"best_step", rep.best_step},
                 {"val_nll", cfm_model ? json(nullptr) : json(rep.best_val)},
                 {"val_loss", cfm_model ? json(rep.best_val) : json(nullptr)},
                 {"val_bpd", has_bpd ? json(val_bpd) : json(nullptr)},
                 {"seconds", secs}, {"images_per_second", imgs_per_s}, {"figure", curve}};
}

// ---------------------------------------------------------------------------------------

po::options_description bpd_opts() {
  po::options_description o;
  o.add_options()
      ("model", po::value<std::string>()->required(), "model file (nfkit image train)")
      ("data", po::value<std::string>()->default_value(kFashionDir), "directory with the IDX files")
      ("split", po::value<std::string>()->default_value("test"), "test or train")
      ("n", po::value<int64_t>()->default_value(0), "images to evaluate (0 = all)")
      ("batch-size", po::value<int64_t>()->default_value(500), "images per batch")
      ("probes", po::value<int64_t>()->default_value(1), "cfm models: Hutchinson probes per image (Rademacher)");
  add_solver_options(o, "steps", "dopri5", 100, "cfm models: ");
  return o;
}

void run_bpd(const po::variables_map& vm, Context& ctx) {
  const auto split = split_name(vm["split"].as<std::string>());
  const int64_t n = vm["n"].as<int64_t>(), batch = vm["batch-size"].as<int64_t>();
  if (n < 0) usage_error("--n", "must be >= 0");
  check_positive_int("--batch-size", "value", batch);
  const int64_t probes = vm["probes"].as<int64_t>();
  check_positive_int("--probes", "value", probes);
  const auto ode = solver_from(vm, "steps");
  auto m = load_image_model(vm["model"].as<std::string>(), ctx.globals.device);
  auto data = load_images(vm["data"].as<std::string>(), split);
  if (data.images.size(1) != m.channels || data.images.size(2) != m.height || data.images.size(3) != m.width)
    runtime_error(vm["data"].as<std::string>(), "holds images of another shape than the model's");
  const int64_t N = n > 0 ? std::min(n, data.images.size(0)) : data.images.size(0);
  if (m.cnf) {
    m.cnf->options().divergence("hutchinson").probe("rademacher").probes(probes).probe_seed(
        derive_seed(ctx.globals.seed, 32, 1));
    m.cnf->options().ode(ode);
  }
  Progress progress("bpd", N, {.quiet = ctx.globals.quiet});
  int64_t nfe = 0, batches = 0;
  const auto r = bits_per_dim(*m.model, data.images.narrow(0, 0, N), data.labels.narrow(0, 0, N), batch,
                              derive_seed(ctx.globals.seed, 32, 0), m.num_classes, [&](int64_t done, int64_t) {
                                if (m.cnf) nfe += m.cnf->last_stats().nfe, ++batches;
                                progress.update(done);
                              });
  progress.finish();
  print_bpd(ctx, vm["split"].as<std::string>() + "-set", r);
  ctx.results = {{"bpd", r.mean}, {"bpd_se", r.se}, {"n", r.n}, {"split", vm["split"].as<std::string>()},
                 {"kind", m.kind}};
  if (m.cnf) {
    const double mean_nfe = batches > 0 ? static_cast<double>(nfe) / batches : 0.0;
    ctx.out << std::setprecision(1) << "continuous flow: " << m.cnf->estimator() << " divergence, "
            << solver_text(ode) << ", " << mean_nfe
            << " field evaluations per batch (the standard error includes the probes' spread)\n";
    ctx.results["estimator"] = m.cnf->estimator();
    ctx.results["solver"] = ode.to_json();
    ctx.results["nfe_per_batch"] = mean_nfe;
  }
  if (m.meta.value("noise", "uniform") != "uniform")
    ctx.err << "warning: the model was trained with gaussian noise; its bits/dim are not comparable "
               "to uniformly dequantised models\n";
}

// ---------------------------------------------------------------------------------------

po::options_description sample_opts() {
  po::options_description o;
  o.add_options()
      ("model", po::value<std::string>()->required(), "model file (nfkit image train)")
      ("out", po::value<std::string>()->required(), "sample grid to write (.png, .pdf or .svg) with a caption strip")
      ("n", po::value<int64_t>()->default_value(64), "images to sample")
      ("sampler", po::value<std::string>()->default_value("gs-jacobi"), "tarflow: sequential, jacobi or gs-jacobi")
      ("tol", po::value<double>()->default_value(1e-5, "1e-5"), "Jacobi stop: largest change below tol")
      ("relative-tol", po::value<double>()->default_value(0.0), "if > 0, stop on relative change (STARFlow)")
      ("modules", po::value<int64_t>()->default_value(0), "gs-jacobi modules for tough blocks (0 = about sqrt(T))")
      ("window", po::value<int64_t>()->default_value(0),
       "gs-jacobi: a sliding window of W tokens in place of the modules (0 = modules)")
      ("strategy", po::value<std::string>()->default_value("auto"),
       "gs-jacobi per-block strategy: auto (CRM/IGM on training images) or uniform")
      ("metric-images", po::value<int64_t>()->default_value(32), "training images for the CRM/IGM metrics")
      ("data", po::value<std::string>()->default_value(kFashionDir), "IDX directory (for --strategy auto)")
      ("label", po::value<int64_t>()->default_value(-1), "class to sample (-1 = cycle through the classes)")
      ("cfg", po::value<double>()->default_value(0.0), "guidance weight w (0 = none)")
      ("guidance", po::value<std::string>()->default_value("cfg"), "cfg, product or attention")
      ("anneal", po::bool_switch(), "guidance weight grows linearly over tokens")
      ("attn-temperature", po::value<double>()->default_value(2.0), "attention guidance temperature")
      ("base-temperature", po::value<double>()->default_value(1.0), "base temperature T in (0, 1] (a concentration of the base; not kelvin)")
      ("denoise", po::bool_switch(), "one score step x + s^2 grad log p(x) after sampling")
      ("nrow", po::value<int64_t>()->default_value(8), "images per grid row")
      ("save", po::value<std::string>(), "also write the samples' pixels to this HDF5 file (/images uint8 [N, C, H, W], "
                                         "/labels; kind image_samples), e.g. for bench/image_fid");
  add_solver_options(o, "steps", "dopri5", 16, "cfm models: ");
  return o;
}

// The sample grid keeps its pixel form (integer pixel scale, no smoothing) with a caption strip
// above it; PNG, PDF or SVG by the extension of --out.
void write_grid(const std::string& path, const torch::Tensor& pixels /* uint8 [N, C, H, W] */, int64_t nrow,
                const std::string& caption) {
  const int64_t N = pixels.size(0), C = pixels.size(1), H = pixels.size(2), W = pixels.size(3);
  const int64_t cols = std::min(nrow, N), rows = (N + cols - 1) / cols, gap = 2;
  const int64_t width = cols * (W + gap) + gap, height = rows * (H + gap) + gap;
  viz::Picture pic;
  pic.width = static_cast<int>(width), pic.height = static_cast<int>(height);
  pic.rgb.assign(static_cast<size_t>(width * height * 3), 255);
  const auto px = pixels.contiguous();
  const auto* p = px.data_ptr<uint8_t>();
  for (int64_t i = 0; i < N; ++i) {
    const int64_t r0 = gap + (i / cols) * (H + gap), c0 = gap + (i % cols) * (W + gap);
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x)
        for (int64_t ch = 0; ch < 3; ++ch) {
          const int64_t src = C == 3 ? ch : 0;
          pic.rgb[static_cast<size_t>(((r0 + y) * width + c0 + x) * 3 + ch)] = p[((i * C + src) * H + y) * W + x];
        }
  }
  viz::Figure f;
  const int scale = static_cast<int>(std::max<int64_t>(1, 720 / std::max(width, height)));
  f.width_px = std::max(640, static_cast<int>(width) * scale + 16);
  f.height_px = static_cast<int>(height) * scale + 60;
  f.text_scale = 0.8;
  viz::Panel& panel = f.panel();
  panel.picture = std::move(pic);
  panel.title = caption;
  const std::string ext = file_extension(path);
  viz::save(f, path, ext == "pdf" ? viz::Format::kPdf : ext == "svg" ? viz::Format::kSvg : viz::Format::kPng);
}

// Samples' pixels for later scoring (bench/image_fid): /images uint8 [N, C, H, W], /labels
// int64 [N] for conditional models; root attributes model and sampler.
void write_image_samples(const std::string& path, const torch::Tensor& pixels, const torch::Tensor& labels,
                         const std::string& model, const std::string& sampler) {
  H5Writer w(path, "image_samples", 1);
  w.write("/images", pixels.contiguous());
  if (labels.defined()) w.write("/labels", labels.contiguous());
  w.set_attr("/", "model", model);
  w.set_attr("/", "sampler", sampler);
  w.commit();
}

void run_sample(const po::variables_map& vm, Context& ctx) {
  const std::string out = vm["out"].as<std::string>();
  const int64_t n = vm["n"].as<int64_t>();
  check_positive_int("--n", "value", n);
  const double T = vm["base-temperature"].as<double>();
  check_in_range("--base-temperature", "value", T, 0.0, 1.0, /*open_lo=*/true);
  SampleOptions so;
  so.sampler = parse_sampler(vm["sampler"].as<std::string>());
  so.tol = vm["tol"].as<double>();
  so.relative_tol = vm["relative-tol"].as<double>();
  check_nonnegative("--tol", "value", so.tol);
  check_nonnegative("--relative-tol", "value", so.relative_tol);
  so.guidance_weight = vm["cfg"].as<double>();
  so.guidance = so.guidance_weight != 0.0 ? parse_guidance(vm["guidance"].as<std::string>()) : GuidanceKind::kNone;
  so.guidance_anneal = vm["anneal"].as<bool>();
  so.attn_temperature = vm["attn-temperature"].as<double>();
  const std::string strategy = vm["strategy"].as<std::string>();
  if (strategy != "auto" && strategy != "uniform")
    usage_error("--strategy", "'" + strategy + "' is not a strategy, expected auto or uniform");
  const int64_t label = vm["label"].as<int64_t>();
  const auto ode = solver_from(vm, "steps");
  const std::string save = vm.count("save") ? vm["save"].as<std::string>() : std::string();
  check_writable(out);
  if (!save.empty()) check_writable(save);

  auto m = load_image_model(vm["model"].as<std::string>(), ctx.globals.device);
  const int64_t K = m.num_classes;
  if (label >= 0 && label >= K)
    usage_error("--label", K == 0 ? "the model is unconditional" : "must be below " + std::to_string(K));
  const auto fopts = m.model->tensor_options();
  auto labels_for = [&](int64_t count) {
    return label >= 0 ? torch::full({count}, label, torch::kInt64) : torch::arange(count, torch::kInt64) % std::max<int64_t>(K, 1);
  };
  if (m.cnf) {
    if (so.guidance_weight != 0.0) usage_error("--cfg", "guidance is for transformer flows; this is a cfm model");
    if (vm["denoise"].as<bool>()) usage_error("--denoise", "is for transformer flows trained with noise; this is a cfm model");
    seed_all(derive_seed(ctx.globals.seed, 34, 0));
    m.cnf->set_temperature(T);
    const auto z = m.cnf->base()->sample(n);
    const auto lab = labels_for(n);
    const auto c = K > 0 ? one_hot_labels(lab, K).to(fopts) : torch::Tensor();
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor x;
    {
      torch::NoGradGuard ng;
      x = m.cnf->transport(z, 0.0, 1.0, ode, c);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t nfe = m.cnf->last_stats().nfe;
    const auto px = model_to_pixels(x).view({n, m.channels, m.height, m.width}).cpu();
    std::ostringstream cap;
    cap << vm["model"].as<std::string>() << " · " << solver_text(ode) << " · " << nfe
        << (nfe == 1 ? " field evaluation" : " field evaluations") << " · T = " << T;
    write_grid(out, px, vm["nrow"].as<int64_t>(), cap.str());
    if (!save.empty()) write_image_samples(save, px, K > 0 ? lab : torch::Tensor(), vm["model"].as<std::string>(), cap.str());
    ctx.out << std::fixed << std::setprecision(3) << "wrote " << n << " samples to " << out << " (" << solver_text(ode)
            << ", " << nfe << (nfe == 1 ? " field evaluation, " : " field evaluations, ") << secs << " s)\n";
    ctx.results = {{"out", out}, {"seconds", secs}, {"nfe", nfe}, {"solver", ode.to_json()}, {"kind", m.kind}};
    if (!save.empty()) ctx.results["save"] = save;
    return;
  }
  const auto& o = m.tar->options();
  int64_t modules = vm["modules"].as<int64_t>();
  if (modules < 0) usage_error("--modules", "must be >= 0");
  if (modules == 0) modules = std::max<int64_t>(2, std::llround(std::sqrt(static_cast<double>(o.tokens()))));
  so.modules = modules;
  so.window = vm["window"].as<int64_t>();
  if (so.window < 0) usage_error("--window", "must be >= 0");

  if (so.sampler == SamplerKind::kGSJacobi && strategy == "auto") {
    auto data = load_images(vm["data"].as<std::string>(), "train");
    const int64_t nm = std::min(vm["metric-images"].as<int64_t>(), data.images.size(0));
    check_positive_int("--metric-images", "value", nm);
    torch::manual_seed(derive_seed(ctx.globals.seed, 33, 0));
    const auto x = dequantize_uniform(data.images.narrow(0, 0, nm)).to(fopts);
    const auto c = K > 0 ? one_hot_labels(data.labels.narrow(0, 0, nm), K).to(fopts) : torch::Tensor();
    const auto metrics = m.tar->block_metrics(x, c, modules, so.tol);
    ctx.err << "block  CRM       IGM(latent)  IGM(zeros)  Jacobi-iters  strategy\n";
    json jm = json::array();
    for (size_t b = 0; b < metrics.size(); ++b) {
      const auto& bm = metrics[b];
      so.blocks.push_back(bm.chosen);
      if (bm.chosen.modules > 1) so.blocks.back().window = so.window;
      const auto& st = so.blocks.back();
      const std::string how = st.window > 0 ? "window " + std::to_string(st.window)
                              : std::to_string(st.modules) + (st.modules == 1 ? " module" : " modules");
      char line[160];
      std::snprintf(line, sizeof line, "%5zu  %-8.4g  %-11.4g  %-10.4g  %-12.1f  %s, %s guess\n", b, bm.crm,
                    bm.igm_latent, bm.igm_zeros, bm.jacobi_iters, how.c_str(), bm.chosen.init.c_str());
      ctx.err << line;
      jm.push_back({{"block", b}, {"crm", bm.crm}, {"igm_latent", bm.igm_latent}, {"igm_zeros", bm.igm_zeros},
                    {"jacobi_iters", bm.jacobi_iters}, {"modules", st.modules}, {"window", st.window},
                    {"init", st.init}});
    }
    ctx.results["block_metrics"] = jm;
  }

  seed_all(derive_seed(ctx.globals.seed, 34, 0));
  m.flow->set_temperature(T);
  const auto z = m.flow->base()->sample(n);
  torch::Tensor c;
  const auto lab = labels_for(n);
  if (K > 0) c = one_hot_labels(lab, K).to(fopts);
  SampleStats st;
  const auto t0 = std::chrono::steady_clock::now();
  auto [x, ld] = m.tar->sample_inverse(z, c, so, &st);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (vm["denoise"].as<bool>()) {
    // Tweedie's step with the variance of the training noise.
    x = denoise_step(*m.flow, x, c, training_noise_variance(m.meta.value("noise_sigma", 0.0)));
  }
  const auto px = model_to_pixels(x).view({n, o.channels(), o.height(), o.width()}).cpu();
  int64_t passes = 0;
  for (auto v : st.iterations) passes += v;
  {
    std::ostringstream cap;
    cap << vm["model"].as<std::string>() << " · " << sampler_name(so.sampler) << " sampler · " << passes
        << " transformer passes over " << st.iterations.size() << " blocks · T = " << T;
    if (so.guidance_weight != 0.0) cap << " · guidance " << so.guidance_weight;
    write_grid(out, px, vm["nrow"].as<int64_t>(), cap.str());
    if (!save.empty()) write_image_samples(save, px, K > 0 ? lab : torch::Tensor(), vm["model"].as<std::string>(), cap.str());
  }
  ctx.out << std::fixed << std::setprecision(3) << "wrote " << n << " samples to " << out << " ("
          << sampler_name(so.sampler) << ", " << secs << " s, " << passes << " transformer passes";
  if (st.clamped > 0) ctx.out << ", " << st.clamped << " diverging values clamped";
  ctx.out << ")\n";
  ctx.results["out"] = out;
  ctx.results["seconds"] = secs;
  ctx.results["passes"] = st.iterations;
  ctx.results["clamped"] = st.clamped;
  ctx.results["kind"] = m.kind;
  if (!save.empty()) ctx.results["save"] = save;
}

}  // namespace

Command image_train_command() {
  return {"image", "train", "train an image model (TARFlow, or a U-Net continuous flow by flow matching) on IDX images (Fashion-MNIST)",
          train_opts, run_train};
}
Command image_bpd_command() {
  return {"image", "bpd", "bits per dimension of an image model on a test set", bpd_opts, run_bpd};
}
Command image_sample_command() {
  return {"image", "sample", "sample images (TARFlow: sequential, Jacobi or GS-Jacobi; cfm: any ODE solver) to a PNG grid",
          sample_opts, run_sample};
}

}  // namespace nfkit::cli
