// Transformer autoregressive flows: exactness of the transform, agreement of the samplers,
// guidance identities, bits/dim, checkpoints and the image loader.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli.h"
#include "helpers.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/idx.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/images.h"
#include "nfkit/flows/tarflow.h"

using namespace nfkit;
using nfkit::test::brute_force_logabsdet;
using nfkit::test::perturb_parameters;
using nfkit::test::temp_path;

namespace {

struct Tiny {
  std::string name;
  TarFlowOptions opts;
};

std::vector<Tiny> tiny_configs() {
  return {
      {"shift/exp 4x4 p2", TarFlowOptions().height(4).width(4).patch(2).blocks(3).layers(1).hidden(16).head_dim(8)},
      {"token/softplus/clip 2ch 4x8 p2 conditional",
       TarFlowOptions().channels(2).height(4).width(8).patch(2).blocks(2).layers(2).hidden(16).head_dim(4)
           .start("token").scale("softplus").soft_clip(2.0).num_classes(3)},
      {"shift/exp 1x16 p1 (T = 16)", TarFlowOptions().height(4).width(4).patch(1).blocks(2).layers(1).hidden(8).head_dim(8)},
  };
}

std::shared_ptr<TarFlow> make_perturbed(const TarFlowOptions& o, uint64_t seed, double scale = 0.3) {
  torch::manual_seed(seed);
  auto t = std::make_shared<TarFlow>(o);
  perturb_parameters(*t, scale, seed + 1);
  t->eval();
  return t;
}

torch::Tensor labels_for(const TarFlowOptions& o, int64_t B) {
  if (o.num_classes() == 0) return {};
  return one_hot_labels(torch::arange(B, torch::kInt64) % o.num_classes(), o.num_classes());
}

double max_abs(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// Largest difference relative to the magnitude of a (at least 1): float32 samples of the
// perturbed tiny models reach |x| ~ 1e3, where one ulp is 6e-5, and which ulp the two samplers
// land on moves with the BLAS kernel chosen for the memory alignment at hand.
double max_rel(const torch::Tensor& a, const torch::Tensor& b) {
  return max_abs(a, b) / std::max(1.0, a.abs().max().item<double>());
}

}  // namespace

TEST_CASE("tarflow: round trip and log|det| against the autograd Jacobian", "[tarflow]") {
  for (const auto& c : tiny_configs()) {
    INFO(c.name);
    // float64: the round trip is then exact to rounding (in float32 its error, ~1e-4 after
    // the perturbed blocks, moved with memory alignment between runs).
    auto t = make_perturbed(c.opts, 11);
    t->to(torch::kFloat64);
    const int64_t B = 5;
    torch::manual_seed(3);
    const auto x = torch::randn({B, c.opts.dim()}, torch::kFloat64);
    auto ctx = labels_for(c.opts, B);
    if (ctx.defined()) ctx = ctx.to(torch::kFloat64);
    auto [z, ld] = t->forward(x, ctx);
    CHECK(max_abs(x, z) > 0.05);  // the perturbation made it a non-trivial map
    const auto bf = brute_force_logabsdet(*t, x, ctx);
    CHECK(max_abs(ld, bf) < 1e-8);
    auto [x2, ldi] = t->inverse(z, ctx);
    CHECK(max_abs(x, x2) < 1e-8);
    CHECK(max_abs(ld, -ldi) < 1e-8);
  }
}

TEST_CASE("tarflow: the KV-cache inverse equals Jacobi run to its exact bound, and GS-Jacobi", "[tarflow]") {
  for (const auto& c : tiny_configs()) {
    INFO(c.name);
    auto t = make_perturbed(c.opts, 21);
    const int64_t B = 4, T = c.opts.tokens();
    torch::manual_seed(5);
    const auto z = torch::randn({B, c.opts.dim()});
    const auto ctx = labels_for(c.opts, B);
    SampleOptions seq;
    SampleStats s_seq;
    auto [x_seq, ld_seq] = t->sample_inverse(z, ctx, seq, &s_seq);
    const int64_t exact = c.opts.start() == "shift" ? T - 1 : T;
    for (auto it : s_seq.iterations) CHECK(it == exact);  // one pass per token

    SampleOptions jac;
    jac.sampler = SamplerKind::kJacobi;
    jac.tol = 0;  // run to the cap: exact after T - 1 (shift) or T (token) iterations
    SampleStats s_jac;
    auto [x_jac, ld_jac] = t->sample_inverse(z, ctx, jac, &s_jac);
    for (auto it : s_jac.iterations) CHECK(it == exact);
    CHECK(max_rel(x_seq, x_jac) < 1e-5);
    CHECK(max_abs(ld_seq, ld_jac) < 1e-4);

    for (const std::string init : {"latent", "zeros"}) {
      SampleOptions gs;
      gs.sampler = SamplerKind::kGSJacobi;
      gs.modules = 3;
      gs.init = init;
      gs.tol = 1e-7;
      auto [x_gs, ld_gs] = t->sample_inverse(z, ctx, gs);
      CHECK(max_abs(x_seq, x_gs) < 1e-4);
      gs.relative_tol = 1e-7;  // STARFlow's chunked Jacobi stop
      auto [x_rel, ld_rel] = t->sample_inverse(z, ctx, gs);
      CHECK(max_abs(x_seq, x_rel) < 1e-4);
    }

    // Sliding window: W = 1 is the sequential sampler; run to the cap (tol 0) any window is
    // exact after T - 1 / T passes; with a tolerance it agrees within 1e-4 in fewer passes.
    for (const int64_t W : {int64_t{1}, int64_t{3}}) {
      SampleOptions win;
      win.sampler = SamplerKind::kGSJacobi;
      win.window = W;
      win.tol = 0;
      SampleStats s_win;
      auto [x_win, ld_win] = t->sample_inverse(z, ctx, win, &s_win);
      for (auto it : s_win.iterations) CHECK(it == exact);
      CHECK(max_rel(x_seq, x_win) < 1e-5);
      CHECK(max_abs(ld_seq, ld_win) < 1e-4);
      win.tol = 1e-7;
      win.init = "zeros";
      auto [x_wt, ld_wt] = t->sample_inverse(z, ctx, win, &s_win);
      CHECK(max_abs(x_seq, x_wt) < 1e-4);
      for (auto it : s_win.iterations) CHECK(it <= exact);
    }
    SampleOptions win_cap;  // one pass per window position: ceil(T' / W) passes, inexact
    win_cap.sampler = SamplerKind::kGSJacobi;
    win_cap.tol = 0;
    win_cap.blocks.assign(c.opts.blocks(), BlockStrategy{1, 1, "zeros", 3});
    SampleStats s_cap;
    auto [x_wcap, ld_wcap] = t->sample_inverse(z, ctx, win_cap, &s_cap);
    for (auto it : s_cap.iterations) CHECK(it == (exact + 2) / 3);
    CHECK(max_abs(x_seq, x_wcap) > 1e-3);

    // A Jacobi iteration cap below the exact bound leaves the later tokens unsolved.
    SampleOptions capped;
    capped.sampler = SamplerKind::kGSJacobi;
    capped.tol = 0;
    capped.blocks.assign(c.opts.blocks(), BlockStrategy{1, 1, "zeros"});
    auto [x_cap, ld_cap] = t->sample_inverse(z, ctx, capped);
    CHECK(max_abs(x_seq, x_cap) > 1e-3);
  }
}

TEST_CASE("tarflow: an identity model on uniform pixels has the analytic bits/dim", "[tarflow]") {
  // Untrained (zero output projection): z = y, so log q(y) = sum log N(y; 0, 1) and y is
  // uniform on [-1, 1): E[NLL_y] / D = ln(2 pi) / 2 + 1/6, bits/dim = (that + ln 128) / ln 2.
  auto flow = make_tarflow(TarFlowOptions().height(8).width(8).patch(2).blocks(2).layers(1).hidden(16).head_dim(8));
  torch::manual_seed(7);
  const auto images = torch::randint(0, 256, {4000, 1, 8, 8}, torch::kUInt8);
  const auto r = bits_per_dim(*flow, images, {}, 512, 9);
  const double expected = (0.5 * std::log(2 * M_PI) + 1.0 / 6.0 + std::log(128.0)) / std::log(2.0);
  CHECK(r.n == 4000);
  CHECK(std::abs(r.mean - expected) < 4 * r.se + 1e-3);
  CHECK(r.se < 0.01);
  CHECK(expected == Approx(8.5658).margin(1e-3));
}

TEST_CASE("tarflow: the denoising step is x + s^2 grad log q(x)", "[tarflow]") {
  // Identity model, standard normal base: grad log q(x) = -x, so the step is (1 - s^2) x.
  auto id = make_tarflow(TarFlowOptions().height(4).width(4).patch(2).blocks(1).layers(1).hidden(8).head_dim(8));
  torch::manual_seed(4);
  const auto x = torch::randn({3, 16});
  CHECK(max_abs(denoise_step(*id, x, {}, 0.25), 0.75 * x) < 1e-6);
  // A trained-looking conditional model: the step against central differences of log q.
  const auto o = tiny_configs()[1].opts;  // a copy: tiny_configs() returns a temporary
  auto t = make_perturbed(o, 31);
  auto flow = std::make_shared<Flow>(std::make_shared<StandardNormal>(t->dim()), t);
  flow->eval();
  const auto xc = torch::randn({2, o.dim()}, torch::kFloat64);
  flow->to(torch::kFloat64);
  const auto ctx = labels_for(o, 2).to(torch::kFloat64);
  const double var = 0.01;
  const auto step = denoise_step(*flow, xc, ctx, var);
  torch::NoGradGuard ng;
  for (const int64_t i : {int64_t{0}, int64_t{7}, o.dim() - 1}) {
    auto xp = xc.clone(), xm = xc.clone();
    xp.select(1, i) += 1e-5;
    xm.select(1, i) -= 1e-5;
    const auto fd = (flow->log_prob(xp, ctx) - flow->log_prob(xm, ctx)) / 2e-5;  // [2]
    const auto expect = xc.select(1, i) + var * fd;
    CHECK(max_abs(step.select(1, i), expect) < 1e-7);
  }
  CHECK(training_noise_variance(0.05) == Approx(0.0025));
  CHECK(training_noise_variance(0.0) == Approx(1.0 / (12.0 * 128 * 128)));
}

TEST_CASE("tarflow: guidance with w = 0 is the conditional model, cfg mixes the two branches", "[tarflow]") {
  auto o = TarFlowOptions().height(4).width(4).patch(2).blocks(2).layers(1).hidden(16).head_dim(8).num_classes(4);
  auto t = make_perturbed(o, 31);
  const int64_t B = 6;
  torch::manual_seed(8);
  const auto z = torch::randn({B, o.dim()});
  const auto ctx = labels_for(o, B);
  SampleOptions plain;
  auto [x0, l0] = t->sample_inverse(z, ctx, plain);
  for (auto g : {GuidanceKind::kCFG, GuidanceKind::kProduct, GuidanceKind::kAttention}) {
    SampleOptions so;
    so.guidance = g;
    so.guidance_weight = 0.0;
    auto [xg, lg] = t->sample_inverse(z, ctx, so);
    CHECK(max_abs(x0, xg) == 0.0);
    so.guidance_weight = 1.5;
    auto [xw, lw] = t->sample_inverse(z, ctx, so);
    CHECK(max_abs(x0, xw) > 1e-4);  // guidance does something
    CHECK(torch::isfinite(xw).all().item<bool>());
  }
  // cfg with the null label as the condition: both branches agree, so any w is a no-op.
  SampleOptions so;
  so.guidance = GuidanceKind::kCFG;
  so.guidance_weight = 3.0;
  const auto null = torch::zeros({B, 4});
  auto [xu, lu] = t->sample_inverse(z, null, plain);
  auto [xn, ln] = t->sample_inverse(z, null, so);
  CHECK(max_abs(xu, xn) < 1e-4);  // float32 rounding of (1 + w) a - w a
  // Samplers agree under guidance too (they solve the same guided system).
  so.sampler = SamplerKind::kJacobi;
  so.tol = 1e-7;
  auto [xj, lj] = t->sample_inverse(z, ctx, so);
  so.sampler = SamplerKind::kSequential;
  auto [xs, ls] = t->sample_inverse(z, ctx, so);
  CHECK(max_rel(xs, xj) < 1e-4);
}

TEST_CASE("tarflow: product guidance is the Gaussian product, capped where the negative branch is sharper", "[tarflow]") {
  // log N(x; m_c, s_c)^(1+w) - w log N(x; m_u, s_u) is quadratic in x: its curvature is the
  // precision and its stationary point the mean. Checked against the coefficients computed
  // here in double precision, for s_u > s_c (an exact product) and s_u < s_c (capped).
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  const auto mu_c = torch::tensor({0.3, -1.2, 0.5}, opts), ls_c = torch::tensor({-0.5, 0.1, 0.2}, opts);
  const auto mu_u = torch::tensor({-0.4, 0.7, 0.5}, opts), ls_u = torch::tensor({0.4, 0.6, -0.3}, opts);
  const auto w = torch::full({1}, 2.5, opts);
  auto [m, ls] = product_guidance(mu_c, ls_c, mu_u, ls_u, w);
  for (int64_t i = 0; i < 3; ++i) {
    const double pc = std::exp(-2 * ls_c[i].item<double>()), pu = std::exp(-2 * ls_u[i].item<double>());
    const double mc = mu_c[i].item<double>(), mu = mu_u[i].item<double>(), wv = 2.5;
    const double pu_used = std::min(pu, pc);
    const double prec = (1 + wv) * pc - wv * pu_used;
    const double mean = ((1 + wv) * pc * mc - wv * pu_used * mu) / prec;
    CHECK(ls[i].item<double>() == Approx(-0.5 * std::log(prec)).margin(1e-12));
    CHECK(m[i].item<double>() == Approx(mean).margin(1e-12));
    if (pu < pc) {  // exact product: curvature of the unnormalised log density
      const double curv = (1 + wv) * pc - wv * pu;
      CHECK(std::exp(-2 * ls[i].item<double>()) == Approx(curv).epsilon(1e-12));
    } else {  // capped: the conditional scale, the cfg mean
      CHECK(ls[i].item<double>() == Approx(ls_c[i].item<double>()).margin(1e-12));
      CHECK(m[i].item<double>() == Approx((1 + wv) * mc - wv * mu).margin(1e-12));
    }
  }
  // Never wider than the conditional token, whatever w.
  auto [m9, ls9] = product_guidance(mu_c, ls_c, mu_u, ls_u, torch::full({1}, 50.0, opts));
  CHECK((ls9 <= ls_c + 1e-12).all().item<bool>());
  // Equal branches (the null label as the condition): a no-op for any w.
  auto [me, lse] = product_guidance(mu_c, ls_c, mu_c, ls_c, w);
  CHECK(max_abs(me, mu_c) < 1e-12);
  CHECK(max_abs(lse, ls_c) < 1e-12);
}

TEST_CASE("tarflow: label drop trains the null label, eval mode keeps labels", "[tarflow]") {
  auto o = TarFlowOptions().height(4).width(4).patch(2).blocks(1).layers(1).hidden(8).head_dim(8)
               .num_classes(2).label_drop(1.0);
  auto t = make_perturbed(o, 41);
  const auto x = torch::randn({3, o.dim()});
  const auto ctx = labels_for(o, 3);
  auto [z_eval, l_eval] = t->forward(x, ctx);
  auto [z_null, l_null] = t->forward(x, torch::zeros({3, 2}));
  CHECK(max_abs(z_eval, z_null) > 1e-4);
  t->train();
  auto [z_drop, l_drop] = t->forward(x, ctx);  // every label dropped
  CHECK(max_abs(z_drop, z_null) < 1e-6);
}

TEST_CASE("tarflow: samplers keep iterates finite (clamp) on a diverging model", "[tarflow]") {
  auto o = TarFlowOptions().height(4).width(4).patch(1).blocks(1).layers(1).hidden(8).head_dim(8);
  auto t = make_perturbed(o, 51, 4.0);  // large weights: exp(log sigma) overflows
  torch::manual_seed(2);
  const auto z = 10 * torch::randn({4, o.dim()});
  for (auto kind : {SamplerKind::kSequential, SamplerKind::kJacobi}) {
    SampleOptions so;
    so.sampler = kind;
    so.clamp = 50.0;
    SampleStats st;
    auto [x, ld] = t->sample_inverse(z, {}, so, &st);
    CHECK(torch::isfinite(x).all().item<bool>());
    CHECK(x.abs().max().item<double>() <= 50.0);
    CHECK(st.clamped > 0);
  }
}

TEST_CASE("tarflow: block metrics choose strategies that reproduce the sequential sample", "[tarflow]") {
  auto o = TarFlowOptions().height(8).width(8).patch(2).blocks(3).layers(1).hidden(16).head_dim(8);
  auto t = make_perturbed(o, 61, 0.2);
  torch::manual_seed(4);
  const auto x = torch::randn({16, o.dim()}) * 0.5;
  const auto m = t->block_metrics(x, {}, 4, 1e-6);
  REQUIRE(m.size() == 3);
  int dominant = 0;
  for (const auto& b : m) {
    CHECK(std::isfinite(b.crm));
    CHECK(b.crm > 0);
    CHECK(b.jacobi_iters >= 1);
    CHECK(b.jacobi_iters <= o.tokens() - 1);
    dominant += b.chosen.modules > 1;
  }
  CHECK(dominant >= 1);  // the block with the largest CRM is always dominant
  SampleOptions so;
  so.sampler = SamplerKind::kGSJacobi;
  so.tol = 1e-7;
  for (const auto& b : m) so.blocks.push_back(b.chosen);
  const auto z = torch::randn({4, o.dim()});
  auto [x_gs, l_gs] = t->sample_inverse(z, {}, so);
  auto [x_seq, l_seq] = t->sample_inverse(z, {}, SampleOptions{});
  CHECK(max_abs(x_gs, x_seq) < 1e-4);
}

TEST_CASE("tarflow: checkpoint round trip rebuilds the model exactly", "[tarflow]") {
  auto o = TarFlowOptions().channels(2).height(4).width(4).patch(2).blocks(2).layers(1).hidden(16)
               .head_dim(8).num_classes(3).start("token").scale("softplus").soft_clip(3.0);
  torch::manual_seed(12);
  auto t = std::make_shared<TarFlow>(o);
  perturb_parameters(*t, 0.2, 13);
  auto flow = std::make_shared<Flow>(std::make_shared<StandardNormal>(o.dim()), t);
  flow->eval();
  const auto path = temp_path("tarflow.h5");
  save_flow(path, *flow, {{"what", "test"}});
  auto loaded = load_flow(path);
  loaded.flow->eval();
  const auto x = torch::randn({4, o.dim()});
  const auto ctx = labels_for(o, 4);
  CHECK(max_abs(flow->log_prob(x, ctx), loaded.flow->log_prob(x, ctx)) == 0.0);
  auto lt = std::dynamic_pointer_cast<TarFlow>(loaded.flow->transform());
  REQUIRE(lt);
  CHECK(lt->options().to_json() == o.to_json());
}

TEST_CASE("tarflow: options are validated with clear errors", "[tarflow]") {
  CHECK_THROWS_WITH(TarFlow(TarFlowOptions().height(28).width(28).patch(5)),
                    Catch::Contains("patch 5 does not divide"));
  CHECK_THROWS_WITH(TarFlow(TarFlowOptions().hidden(30).head_dim(8)), Catch::Contains("multiple of head_dim"));
  CHECK_THROWS_WITH(TarFlow(TarFlowOptions().start("first")), Catch::Contains("start 'first'"));
  CHECK_THROWS_WITH(parse_sampler("newton"), Catch::Contains("--sampler"));
  auto t = make_perturbed(TarFlowOptions().height(4).width(4).patch(2).blocks(1).layers(1).hidden(8).head_dim(8), 1);
  SampleOptions so;
  so.guidance = GuidanceKind::kCFG;
  so.guidance_weight = 1.0;
  CHECK_THROWS_WITH(t->sample_inverse(torch::randn({2, 16}), {}, so), Catch::Contains("class-conditional"));
}

// ---------------------------------------------------------------------------------------
// The command line on a small synthetic IDX image set (8x8, 3 classes).

namespace {

std::string synthetic_idx_dir() {
  const auto dir = temp_path("idx-images");
  std::filesystem::create_directories(dir);
  torch::manual_seed(77);
  for (const auto& [split, n] : {std::pair<std::string, int64_t>{"train", 240}, {"t10k", 60}}) {
    auto labels = torch::randint(0, 3, {n}, torch::kInt64);
    auto imgs = torch::zeros({n, 8, 8}, torch::kFloat32);
    for (int64_t i = 0; i < n; ++i) {  // class k: a bright bar in row block k, plus noise
      const int64_t k = labels[i].item<int64_t>();
      imgs[i].narrow(0, 2 * k + 1, 2).fill_(200.0);
    }
    imgs = (imgs + 20 * torch::rand({n, 8, 8})).clamp(0, 255);
    write_idx(dir + "/" + split + "-images-idx3-ubyte.gz", imgs.to(torch::kUInt8));
    write_idx(dir + "/" + split + "-labels-idx1-ubyte.gz", labels.to(torch::kUInt8));
  }
  return dir;
}

}  // namespace

TEST_CASE("cli: image train, bpd and sample on a small IDX set, bad input gets clear errors", "[tarflow][cli]") {
  const auto dir = synthetic_idx_dir();
  const auto model = temp_path("img-model.h5");
  auto tr = nfkit::test::run_nfkit({"image", "train", "--data", dir, "--out", model, "--patch", "2", "--blocks", "2",
                       "--layers", "1", "--hidden", "16", "--head-dim", "8", "--steps", "60", "--val-size",
                       "40", "--eval-every", "20", "--batch-size", "32", "--warmup", "10", "--ema", "0", "--lr", "3e-3", "--conditional",
                       "--quiet", "--json"});
  INFO(tr.err);
  REQUIRE(tr.code == 0);
  const auto tj = json::parse(tr.out.substr(tr.out.rfind('{')));
  const double val_bpd = tj.at("val_bpd").get<double>();
  CHECK(val_bpd < 8.0);  // learned something: an identity model sits near 8.6 bits/dim

  auto bpd = nfkit::test::run_nfkit({"image", "bpd", "--model", model, "--data", dir, "--json", "--quiet"});
  REQUIRE(bpd.code == 0);
  const auto bj = json::parse(bpd.out.substr(bpd.out.rfind('{')));
  CHECK(bj.at("n").get<int64_t>() == 60);
  CHECK(std::abs(bj.at("bpd").get<double>() - val_bpd) < 1.0);

  const auto png = temp_path("grid.png");
  for (const std::string sampler : {"sequential", "jacobi", "gs-jacobi"}) {
    auto s = nfkit::test::run_nfkit({"image", "sample", "--model", model, "--data", dir, "--out", png, "--n", "6",
                        "--sampler", sampler, "--cfg", "1.0", "--denoise", "--quiet"});
    INFO(sampler << ": " << s.err);
    CHECK(s.code == 0);
    CHECK(nfkit::file_exists(png));
  }

  auto win = nfkit::test::run_nfkit({"image", "sample", "--model", model, "--data", dir, "--out", png, "--n", "4",
                                     "--window", "3", "--quiet", "--json"});
  INFO(win.err);
  REQUIRE(win.code == 0);
  const auto wj = json::parse(win.out);
  int64_t windowed = 0;
  for (const auto& b : wj.at("block_metrics")) windowed += b.at("window").get<int64_t>() == 3;
  CHECK(windowed >= 1);  // the toughest block (largest CRM) at least

  // Bad input: one line, exit code 2 (usage) or 1 (runtime), no output file.
  const auto none = temp_path("none.png");
  auto bad_window = nfkit::test::run_nfkit({"image", "sample", "--model", model, "--out", none, "--window", "-1", "--quiet"});
  CHECK(bad_window.code == 2);
  CHECK_THAT(bad_window.err, Catch::Contains("--window"));
  auto bad_sampler = nfkit::test::run_nfkit({"image", "sample", "--model", model, "--out", none, "--sampler", "newton", "--quiet"});
  CHECK(bad_sampler.code == 2);
  CHECK_THAT(bad_sampler.err, Catch::Contains("--sampler"));
  auto missing = nfkit::test::run_nfkit({"image", "bpd", "--model", model, "--data", temp_path("no-such-dir"), "--quiet"});
  CHECK(missing.code == 1);
  CHECK_THAT(missing.err, Catch::Contains("no-such-dir") && Catch::Contains("missing"));
  const auto corrupt_dir = temp_path("corrupt-idx");
  std::filesystem::create_directories(corrupt_dir);
  std::ofstream(corrupt_dir + "/t10k-images-idx3-ubyte") << "not an idx file";
  std::filesystem::copy_file(dir + "/t10k-labels-idx1-ubyte.gz", corrupt_dir + "/t10k-labels-idx1-ubyte.gz");
  auto corrupt = nfkit::test::run_nfkit({"image", "bpd", "--model", model, "--data", corrupt_dir, "--quiet"});
  CHECK(corrupt.code == 1);
  CHECK_THAT(corrupt.err, Catch::Contains("t10k-images-idx3-ubyte") && Catch::Contains("not an IDX file"));
  CHECK(std::count(corrupt.err.begin(), corrupt.err.end(), '\n') == 1);
  auto bad_patch = nfkit::test::run_nfkit({"image", "train", "--data", dir, "--out", temp_path("p.h5"), "--patch", "3", "--val-size", "40", "--quiet"});
  CHECK(bad_patch.code == 2);
  CHECK_THAT(bad_patch.err, Catch::Contains("patch 3 does not divide"));
  auto not_tar = nfkit::test::run_nfkit({"image", "sample", "--model", dir + "/t10k-labels-idx1-ubyte.gz", "--out", none, "--quiet"});
  CHECK(not_tar.code == 1);
  CHECK(!nfkit::file_exists(none));
}

TEST_CASE("cli: image train --model cfm (U-Net flow matching), bpd by Hutchinson, sample by any solver, bad input", "[tarflow][cli][continuous]") {
  const auto dir = synthetic_idx_dir();
  const auto model = temp_path("img-cfm.h5");
  auto last_json = [](const std::string& out) {  // --json: the last line is one JSON object
    const auto end = out.find_last_not_of('\n');
    return json::parse(out.substr(out.rfind('\n', end) == std::string::npos ? 0 : out.rfind('\n', end) + 1));
  };
  const std::vector<std::string> arch{"--model", "cfm", "--base-channels", "8", "--groups", "4", "--channel-mult", "1,2"};
  auto args = std::vector<std::string>{"image", "train", "--data", dir, "--out", model, "--steps", "80", "--val-size", "40",
                                       "--eval-every", "20", "--batch-size", "32", "--warmup", "10", "--lr", "3e-3",
                                       "--method", "otcfm", "--conditional", "--quiet", "--json"};
  args.insert(args.end(), arch.begin(), arch.end());
  auto tr = nfkit::test::run_nfkit(args);
  INFO(tr.err);
  REQUIRE(tr.code == 0);
  const auto tj = last_json(tr.out);
  CHECK(tj.at("kind") == "cfm");
  // The zero field's loss is mean (x1 - x0)^2 = 1 + mean x1^2 > 1 per value: below 1 it learned.
  CHECK(tj.at("val_loss").get<double>() < 1.0);
  CHECK(tj.at("val_bpd").is_null());

  auto bpd = nfkit::test::run_nfkit({"image", "bpd", "--model", model, "--data", dir, "--n", "20", "--solver", "rk4",
                                     "--steps", "4", "--probes", "2", "--json", "--quiet"});
  INFO(bpd.err);
  REQUIRE(bpd.code == 0);
  const auto bj = last_json(bpd.out);
  CHECK(bj.at("n").get<int64_t>() == 20);
  CHECK(bj.at("estimator") == "hutchinson (rademacher, 2 probes)");
  CHECK(bj.at("nfe_per_batch").get<double>() == 16.0);  // rk4: 4 evaluations a step
  CHECK(std::isfinite(bj.at("bpd").get<double>()));
  CHECK(bj.at("bpd").get<double>() < 8.6);  // below the identity model's bits/dim

  const auto png = temp_path("cfm-grid.png"), saved = temp_path("cfm-samples.h5");
  auto s = nfkit::test::run_nfkit({"image", "sample", "--model", model, "--out", png, "--n", "6", "--solver", "euler",
                                   "--steps", "4", "--save", saved, "--quiet", "--json"});
  INFO(s.err);
  REQUIRE(s.code == 0);
  CHECK(last_json(s.out).at("nfe") == 4);
  CHECK(nfkit::file_exists(png));
  {
    H5Reader r(saved);
    CHECK(r.expect_format("image_samples", 1) == 1);
    const auto px = r.read("/images");
    CHECK(px.scalar_type() == torch::kByte);
    CHECK(px.sizes() == torch::IntArrayRef{6, 1, 8, 8});
    CHECK(torch::equal(r.read("/labels"), torch::tensor({0, 1, 2, 0, 1, 2}, torch::kInt64)));
  }

  // Bad input: one line, exit code 2 (usage) or 1 (runtime), no output file.
  const auto none = temp_path("cfm-none.h5");
  auto expect_usage = [&](std::vector<std::string> a, const std::string& option) {
    auto r = nfkit::test::run_nfkit(a);
    INFO(r.err);
    CHECK(r.code == 2);
    CHECK_THAT(r.err, Catch::Contains(option));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(!nfkit::file_exists(none));
  };
  auto train_with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a{"image", "train", "--data", dir, "--out", none, "--steps", "5", "--val-size", "40", "--quiet"};
    a.insert(a.end(), arch.begin(), arch.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  expect_usage(train_with({"--method", "flowmap"}), "--method");
  expect_usage(train_with({"--method", "sbcfm"}), "--sigma");
  expect_usage(train_with({"--channel-mult", "1,x"}), "--channel-mult");
  expect_usage(train_with({"--channel-mult", "1,2,2,2,2"}), "--channel-mult");
  expect_usage({"image", "train", "--data", dir, "--out", none, "--model", "vae", "--quiet"}, "--model");
  expect_usage(train_with({"--noise", "gaussian"}), "--noise");  // a TARFlow option given to a cfm model
  expect_usage({"image", "train", "--data", dir, "--out", none, "--method", "otcfm", "--quiet"}, "--method");
  expect_usage({"image", "sample", "--model", model, "--out", none, "--cfg", "2", "--quiet"}, "--cfg");
  expect_usage({"image", "sample", "--model", model, "--out", none, "--solver", "euler", "--steps", "0", "--quiet"}, "--steps");
  expect_usage({"image", "bpd", "--model", model, "--data", dir, "--probes", "0", "--quiet"}, "--probes");
}

TEST_CASE("cuda: a transformer flow gives the same log-density and samples on the GPU", "[cuda][tarflow]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: skipped");
    return;
  }
  auto o = TarFlowOptions().height(8).width(8).patch(2).blocks(2).layers(1).hidden(16).head_dim(8).num_classes(3);
  auto t = make_perturbed(o, 71, 0.2);
  auto flow = std::make_shared<Flow>(std::make_shared<StandardNormal>(o.dim()), t);
  flow->eval();
  torch::manual_seed(5);
  const auto x = torch::randn({16, o.dim()}), z = torch::randn({4, o.dim()});
  const auto ctx = labels_for(o, 16);
  torch::NoGradGuard ng;
  const auto cpu = flow->log_prob(x, ctx);
  SampleOptions so;
  so.sampler = SamplerKind::kGSJacobi;
  so.modules = 4;
  so.tol = 1e-7;
  so.guidance = GuidanceKind::kCFG;
  so.guidance_weight = 1.0;
  auto [xs_cpu, l_cpu] = t->sample_inverse(z, ctx.narrow(0, 0, 4), so);
  flow->to(torch::Device(torch::kCUDA));
  const auto gpu = flow->log_prob(x.cuda(), ctx.cuda()).cpu();
  CHECK((gpu - cpu).abs().max().item<double>() < 1e-3);
  auto [xs_gpu, l_gpu] = t->sample_inverse(z.cuda(), ctx.narrow(0, 0, 4).cuda(), so);
  CHECK(xs_gpu.device().is_cuda());
  CHECK((xs_gpu.cpu() - xs_cpu).abs().max().item<double>() < 1e-3);
}

TEST_CASE("tarflow: a TarFlow block through the generic property test (gradients, checkpoint)", "[tarflow][transforms]") {
  const auto opts = TarFlowOptions().height(4).width(4).patch(2).blocks(2).layers(1).hidden(16).head_dim(8).num_classes(3);
  auto t = make_perturbed(opts, 31);
  t->to(torch::kFloat64);
  torch::manual_seed(4);
  const int64_t B = 3;
  const auto x = torch::randn({B, opts.dim()}, torch::kFloat64);
  // Row 0 carries the null label (an all-zero row), so the null embedding is reached too.
  auto ctx = labels_for(opts, B).to(torch::kFloat64);
  ctx[0].zero_();
  nfkit::test::check_transform_properties(t, x, ctx, 1e-8, 1e-8);
}

TEST_CASE("resume: image train killed with SIGKILL resumes from its checkpoint to the same model", "[tarflow][cli]") {
  // As for flow train (test_trainer.cpp): the binary killed without warning after its third
  // checkpoint, then the same command again, ends with the weights of an uninterrupted run,
  // bit for bit (one thread, same seed).
  const auto dir = synthetic_idx_dir();
  auto args = [&](const std::string& out) {
    return std::vector<std::string>{NFKIT_BINARY, "image", "train", "--data", dir, "--out", out, "--patch", "2",
                                    "--blocks", "1", "--layers", "1", "--hidden", "8", "--head-dim", "8",
                                    "--steps", "400", "--checkpoint-every", "10", "--eval-every", "100",
                                    "--val-size", "40", "--batch-size", "16", "--seed", "3", "--threads", "1",
                                    "--quiet"};
  };
  const auto killed = temp_path("img-killed.h5"), whole = temp_path("img-whole.h5");
  REQUIRE(nfkit::test::run_and_sigkill(args(killed), killed + ".ckpt", 3));
  CHECK(!file_exists(killed));
  REQUIRE(file_exists(killed + ".ckpt"));
  CHECK(json::parse(H5Reader(killed + ".ckpt").attr_string("/trainer", "state")).at("step").get<int64_t>() < 400);
  CHECK(std::system(nfkit::test::shell_command(args(killed)).c_str()) == 0);
  CHECK(!file_exists(killed + ".ckpt"));
  CHECK(std::system(nfkit::test::shell_command(args(whole)).c_str()) == 0);
  std::string what;
  const bool same = nfkit::test::same_datasets(killed, whole, &what);
  INFO(what);
  CHECK(same);
}
