// nfkit image train | bpd | sample: transformer autoregressive flows (TARFlow / STARFlow) on
// Fashion-MNIST (Debian's dataset-fashion-mnist) or any IDX image set. See docs/tarflow.md.
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
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/images.h"
#include "nfkit/flows/tarflow.h"
#include "nfkit/flows/trainer.h"

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

struct LoadedTar {
  std::shared_ptr<Flow> flow;
  std::shared_ptr<TarFlow> tar;
  json meta;
};

LoadedTar load_tarflow(const std::string& path, const c10::Device& device) {
  auto lf = load_flow(path);
  auto tar = std::dynamic_pointer_cast<TarFlow>(lf.flow->transform());
  if (!tar) runtime_error(path, "is not a transformer flow model (written by nfkit image train)");
  lf.flow->to(device);
  lf.flow->eval();
  return {lf.flow, tar, lf.metadata};
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
      ("patch", po::value<int64_t>()->default_value(4), "patch size p (tokens of p*p*C values)")
      ("blocks", po::value<int64_t>()->default_value(4), "flow blocks")
      ("layers", po::value<int64_t>()->default_value(2), "transformer layers per block")
      ("hidden", po::value<int64_t>()->default_value(128), "transformer width")
      ("head-dim", po::value<int64_t>()->default_value(32), "attention head width")
      ("conditional", po::bool_switch(), "class-conditional (one-hot labels, label drop for guidance)")
      ("label-drop", po::value<double>()->default_value(0.1, "0.1"), "probability of dropping a label in training")
      ("start", po::value<std::string>()->default_value("shift"), "first token: shift (TARFlow) or token (STARFlow)")
      ("scale", po::value<std::string>()->default_value("exp"), "affine scale: exp (TARFlow) or softplus (STARFlow)")
      ("soft-clip", po::value<double>()->default_value(0.0), "soft clip of log sigma (0 = off)")
      ("noise", po::value<std::string>()->default_value("uniform"),
       "training noise: uniform (dequantisation, for bits/dim) or gaussian (for generation)")
      ("noise-sigma", po::value<double>()->default_value(0.05, "0.05"), "std of gaussian noise in [-1, 1] units")
      ("val-size", po::value<int64_t>()->default_value(2000), "training images held out for validation")
      ("steps", po::value<int64_t>()->default_value(8000), "optimizer steps (8000: about 50 minutes on 2 cores)")
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

void run_train(const po::variables_map& vm, Context& ctx) {
  const std::string out = vm["out"].as<std::string>();
  const std::string noise = vm["noise"].as<std::string>();
  if (noise != "uniform" && noise != "gaussian")
    usage_error("--noise", "'" + noise + "' is not a noise kind, expected uniform or gaussian");
  const double sigma = vm["noise-sigma"].as<double>();
  if (noise == "gaussian") check_positive("--noise-sigma", "value", sigma);
  const int64_t val_size = vm["val-size"].as<int64_t>();
  check_positive_int("--val-size", "value", val_size);
  const bool conditional = vm["conditional"].as<bool>();
  auto to = TarFlowOptions()
                .patch(vm["patch"].as<int64_t>())
                .blocks(vm["blocks"].as<int64_t>())
                .layers(vm["layers"].as<int64_t>())
                .hidden(vm["hidden"].as<int64_t>())
                .head_dim(vm["head-dim"].as<int64_t>())
                .label_drop(vm["label-drop"].as<double>())
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
  auto flow = make_tarflow(to);  // validates the architecture options
  flow->to(ctx.globals.device);
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
  obj.augment = [noise, sigma](const torch::Tensor& px, const torch::Tensor& c) {
    return std::make_tuple(noise == "uniform" ? dequantize_uniform(px) : pixels_to_model(px, sigma), c);
  };
  const double D = static_cast<double>(to.dim());
  const json meta = {{"data", dir}, {"noise", noise}, {"noise_sigma", noise == "gaussian" ? sigma : 0.0},
                     {"num_classes", K}, {"trainer", topts.to_json()}, {"n_train", N - val_size},
                     {"n_val", val_size}, {"nfkit_version", version_string()}};
  Trainer trainer(flow, topts, obj, meta);
  trainer.should_stop = [](int64_t) { return stop_requested(); };
  if (!vm["restart"].as<bool>() && file_exists(topts.checkpoint_path())) {
    trainer.load_checkpoint(topts.checkpoint_path());
    if (!ctx.globals.quiet)
      ctx.err << "resuming from " << topts.checkpoint_path() << " at step " << trainer.step() << std::endl;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t step0 = trainer.step();
  const auto rep = trainer.train();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (rep.interrupted)
    throw Interrupted("interrupted at step " + std::to_string(rep.steps_done) + "; progress saved to " +
                      topts.checkpoint_path() + "; rerun the same command to resume");
  {
    H5Writer w(out, "checkpoint", kCheckpointVersion);
    json m = meta;
    m["best_step"] = rep.best_step;
    m["best_val_nll"] = rep.best_val;
    write_flow(w, *flow, m, rep.steps_done);
    w.commit();
  }
  std::remove(topts.checkpoint_path().c_str());
  const std::string curve = training_figure_path(out, ctx.globals.figure_format);
  training_curve_figure(curve, ctx.globals.figure_format,
                        training_curve(rep, "image train: TARFlow on " + dir, "negative log-likelihood (nats / image)"));
  const double val_bpd = nll_to_bits_per_dim(rep.best_val, D);
  const double imgs_per_s = secs > 0 ? (rep.steps_done - step0) * topts.batch_size() / secs : 0.0;
  ctx.out << std::fixed << std::setprecision(4) << "model written to " << out << " (" << rep.steps_done
          << " steps, best at step " << rep.best_step << ", " << std::setprecision(1) << imgs_per_s
          << " images/s)\n";
  if (noise == "uniform")
    ctx.out << std::setprecision(4) << "validation bits/dim  " << val_bpd << "  (" << val_size << " held-out training images)\n";
  ctx.results = {{"model", out}, {"steps", rep.steps_done}, {"best_step", rep.best_step},
                 {"val_nll", rep.best_val}, {"val_bpd", noise == "uniform" ? json(val_bpd) : json(nullptr)},
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
      ("batch-size", po::value<int64_t>()->default_value(500), "images per batch");
  return o;
}

void run_bpd(const po::variables_map& vm, Context& ctx) {
  const auto split = split_name(vm["split"].as<std::string>());
  const int64_t n = vm["n"].as<int64_t>(), batch = vm["batch-size"].as<int64_t>();
  if (n < 0) usage_error("--n", "must be >= 0");
  check_positive_int("--batch-size", "value", batch);
  auto m = load_tarflow(vm["model"].as<std::string>(), ctx.globals.device);
  auto data = load_images(vm["data"].as<std::string>(), split);
  const auto& o = m.tar->options();
  if (data.images.size(1) != o.channels() || data.images.size(2) != o.height() || data.images.size(3) != o.width())
    runtime_error(vm["data"].as<std::string>(), "holds images of another shape than the model's");
  const int64_t N = n > 0 ? std::min(n, data.images.size(0)) : data.images.size(0);
  const auto r = bits_per_dim(*m.flow, data.images.narrow(0, 0, N), data.labels.narrow(0, 0, N), batch,
                              derive_seed(ctx.globals.seed, 32, 0), o.num_classes());
  print_bpd(ctx, vm["split"].as<std::string>() + "-set", r);
  if (m.meta.value("noise", "uniform") != "uniform")
    ctx.err << "warning: the model was trained with gaussian noise; its bits/dim are not comparable "
               "to uniformly dequantised models\n";
  ctx.results = {{"bpd", r.mean}, {"bpd_se", r.se}, {"n", r.n}, {"split", vm["split"].as<std::string>()}};
}

// ---------------------------------------------------------------------------------------

po::options_description sample_opts() {
  po::options_description o;
  o.add_options()
      ("model", po::value<std::string>()->required(), "model file (nfkit image train)")
      ("out", po::value<std::string>()->required(), "sample grid to write (.png, .pdf or .svg) with a caption strip")
      ("n", po::value<int64_t>()->default_value(64), "images to sample")
      ("sampler", po::value<std::string>()->default_value("gs-jacobi"), "sequential, jacobi or gs-jacobi")
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
      ("temperature", po::value<double>()->default_value(1.0), "base temperature T in (0, 1]")
      ("denoise", po::bool_switch(), "one score step x + s^2 grad log p(x) after sampling")
      ("nrow", po::value<int64_t>()->default_value(8), "images per grid row");
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

void run_sample(const po::variables_map& vm, Context& ctx) {
  const std::string out = vm["out"].as<std::string>();
  const int64_t n = vm["n"].as<int64_t>();
  check_positive_int("--n", "value", n);
  const double T = vm["temperature"].as<double>();
  check_in_range("--temperature", "value", T, 0.0, 1.0, /*open_lo=*/true);
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
  check_writable(out);

  auto m = load_tarflow(vm["model"].as<std::string>(), ctx.globals.device);
  const auto& o = m.tar->options();
  const int64_t K = o.num_classes();
  if (label >= 0 && label >= K)
    usage_error("--label", K == 0 ? "the model is unconditional" : "must be below " + std::to_string(K));
  const auto fopts = m.flow->tensor_options();
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
  if (K > 0) {
    const auto lab = label >= 0 ? torch::full({n}, label, torch::kInt64) : torch::arange(n, torch::kInt64) % K;
    c = one_hot_labels(lab, K).to(fopts);
  }
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
  }
  ctx.out << std::fixed << std::setprecision(3) << "wrote " << n << " samples to " << out << " ("
          << sampler_name(so.sampler) << ", " << secs << " s, " << passes << " transformer passes";
  if (st.clamped > 0) ctx.out << ", " << st.clamped << " diverging values clamped";
  ctx.out << ")\n";
  ctx.results["out"] = out;
  ctx.results["seconds"] = secs;
  ctx.results["passes"] = st.iterations;
  ctx.results["clamped"] = st.clamped;
}

}  // namespace

Command image_train_command() {
  return {"image", "train", "train a transformer flow (TARFlow) on IDX images (Fashion-MNIST)", train_opts, run_train};
}
Command image_bpd_command() {
  return {"image", "bpd", "bits per dimension of a transformer flow on a test set", bpd_opts, run_bpd};
}
Command image_sample_command() {
  return {"image", "sample", "sample images (sequential, Jacobi or GS-Jacobi) to a PNG grid", sample_opts, run_sample};
}

}  // namespace nfkit::cli
