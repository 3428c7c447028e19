// The trainer: schedule, resume reproduces the uninterrupted run, non-finite protection,
// early stopping, reverse KL on an energy with a known answer.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <iterator>

#include "helpers.h"
#include "nfkit/core/files.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/fit_settings.h"
#include "nfkit/flows/toy_densities.h"
#include "nfkit/flows/trainer.h"

using namespace nfkit;
using namespace nfkit::test;

namespace {
const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);

std::shared_ptr<Flow> small_flow(const torch::Tensor& x, const std::string& kind = "nsf") {
  FlowRecipe r;
  r.kind = kind;
  r.dim = x.size(1);
  r.layers = 2;
  r.hidden = 16;
  torch::manual_seed(5);
  auto f = build_flow(r, x);
  f->to(torch::kFloat64);
  return f;
}

bool same_weights(const Flow& a, const Flow& b) {
  auto pa = a.parameters(), pb = b.parameters();
  for (size_t i = 0; i < pa.size(); ++i)
    if (!torch::equal(pa[i], pb[i])) return false;
  return true;
}
}  // namespace

TEST_CASE("learning-rate schedule: linear warm-up then cosine to the floor", "[trainer]") {
  auto x = torch::randn({10, 2}, f64);
  Objective obj;
  obj.train = x;
  Trainer t(small_flow(x), TrainerOptions().steps(110).lr(1e-2).warmup_steps(10).min_lr_fraction(0.1), obj);
  CHECK(t.learning_rate(0) == Approx(1e-3));
  CHECK(t.learning_rate(9) == Approx(1e-2));
  CHECK(t.learning_rate(10) == Approx(1e-2));
  CHECK(t.learning_rate(60) == Approx(1e-2 * (0.1 + 0.9 * 0.5)));
  CHECK(t.learning_rate(110) == Approx(1e-3));
}

TEST_CASE("resume: interrupted + resumed training equals the uninterrupted run exactly", "[trainer]") {
  torch::manual_seed(1);
  auto x = torch::randn({500, 3}, f64) * torch::tensor({1.0, 2.0, 0.5}, f64);
  auto val = torch::randn({100, 3}, f64);
  Objective obj;
  obj.train = x;
  obj.val = val;
  const auto opts = TrainerOptions().steps(60).batch_size(64).warmup_steps(5).eval_every(20)
                        .ema_decay(0.9).quiet(true).seed(7);

  auto ref = small_flow(x);
  Trainer full(ref, opts, obj);
  auto rep_full = full.train();

  const auto ckpt = test::temp_path("resume.ckpt.h5");
  auto a = small_flow(x);
  Trainer first(a, TrainerOptions(opts).checkpoint_path(ckpt), obj);
  first.should_stop = [](int64_t step) { return step == 30; };
  auto rep1 = first.train();
  CHECK(rep1.interrupted);
  CHECK(rep1.steps_done == 30);

  auto b = small_flow(x);
  perturb_parameters(*b, 0.5, 3);  // whatever b held is overwritten by the checkpoint
  Trainer second(b, opts, obj);
  second.load_checkpoint(ckpt);
  CHECK(second.step() == 30);
  auto rep2 = second.train();
  CHECK(rep2.steps_done == 60);
  CHECK(rep2.best_step == rep_full.best_step);
  CHECK(rep2.best_val == rep_full.best_val);
  CHECK(same_weights(*b, *ref));
  // the training curve (mean loss per validation interval) survives the resume mid-interval
  REQUIRE(rep_full.training.size() == 3);
  CHECK(rep_full.training[2].first == 60);
  CHECK(rep2.training == rep_full.training);
  CHECK(rep2.validation == rep_full.validation);

  // A checkpoint of another architecture is refused.
  auto other = small_flow(x, "realnvp");
  Trainer wrong(other, opts, obj);
  CHECK_THROWS_WITH(wrong.load_checkpoint(ckpt), Catch::Contains("different model configuration"));
}

TEST_CASE("non-finite losses are skipped, weights stay finite, persistent NaN is an error", "[trainer]") {
  // Reverse KL against a standard normal whose energy is NaN on every 3rd call.
  int calls = 0;
  EnergyFn flaky = [&calls](const torch::Tensor& x) {
    auto u = 0.5 * x.pow(2).sum(1);
    if (++calls % 3 == 0) u = u + std::numeric_limits<double>::quiet_NaN();
    return u;
  };
  auto x = torch::randn({10, 2}, f64);
  auto flow = small_flow(x, "realnvp");
  Objective obj;
  obj.energy = flaky;
  obj.reverse_weight = 1.0;
  Trainer t(flow, TrainerOptions().steps(30).batch_size(32).eval_every(1000).quiet(true), obj);
  auto rep = t.train();
  CHECK(rep.bad_steps >= 9);
  for (const auto& p : flow->parameters()) CHECK(torch::isfinite(p).all().item<bool>());

  EnergyFn broken = [](const torch::Tensor& x) { return x.sum(1) * std::numeric_limits<double>::quiet_NaN(); };
  obj.energy = broken;
  Trainer t2(small_flow(x, "realnvp"), TrainerOptions().steps(50).batch_size(8).max_bad_steps(5).quiet(true), obj);
  CHECK_THROWS_WITH(t2.train(), Catch::Contains("not finite for 6 steps in a row"));
}

TEST_CASE("NaN in training data is refused before training", "[trainer]") {
  auto x = torch::randn({20, 2}, f64);
  x[7][1] = std::numeric_limits<double>::quiet_NaN();
  Objective obj;
  obj.train = x;
  CHECK_THROWS_WITH(Trainer(small_flow(torch::randn({20, 2}, f64)), TrainerOptions(), obj),
                    Catch::Contains("train[7, 1] is nan, but must be finite"));
}

TEST_CASE("early stopping stops after `patience` validations without improvement", "[trainer]") {
  auto x = torch::randn({200, 2}, f64);
  Objective obj;
  obj.train = x;
  obj.val = torch::randn({50, 2}, f64) * 5.0;  // a validation set the model cannot fit well
  auto flow = small_flow(x);
  Trainer t(flow, TrainerOptions().steps(5000).lr(3e-3).eval_every(10).patience(3).quiet(true), obj);
  auto rep = t.train();
  CHECK(rep.stopped_early);
  CHECK(rep.steps_done < 5000);
  CHECK(rep.steps_done == rep.best_step + 30);
}

TEST_CASE("reverse KL on a Gaussian energy learns its mean and scale", "[trainer]") {
  // u(x) = |x - m|^2 / (2 s^2): the optimum q is N(m, s^2 I) and KL -> 0.
  const auto m = torch::tensor({1.0, -2.0}, f64);
  const double s = 0.5;
  EnergyFn energy = [&](const torch::Tensor& x) { return (x - m).pow(2).sum(1) / (2 * s * s); };
  auto flow = small_flow(torch::randn({10, 2}, f64), "realnvp");
  Objective obj;
  obj.energy = energy;
  obj.reverse_weight = 1.0;
  Trainer t(flow, TrainerOptions().steps(800).batch_size(256).lr(3e-3).eval_every(100).quiet(true).seed(3), obj);
  t.train();
  torch::manual_seed(4);
  torch::NoGradGuard ng;
  auto [xs, lq] = flow->sample_and_log_prob(20000);
  CHECK((xs.mean(0) - m).abs().max().item<double>() < 0.05);
  CHECK(xs.std(0).sub(s).abs().max().item<double>() < 0.05);
  // E_q[log q + u] -> -log Z = -log(2 pi s^2) when q = p.
  CHECK((lq + energy(xs)).mean().item<double>() == Approx(-std::log(2 * M_PI * s * s)).margin(0.02));
}

TEST_CASE("fit settings: defaults chosen from the rows, the dimension and the standardised range", "[trainer]") {
  torch::manual_seed(4);
  // 18000 rows of a 6-D banana: heavy right tails (standardised values beyond 4).
  const auto banana = make_toy_density("banana:6")->sample(18000);
  auto s = default_fit_settings(banana);
  CHECK(s.recipe.kind == "nsf-ar");
  CHECK(s.recipe.layers == 5);
  CHECK(s.recipe.hidden == 128);
  CHECK(s.recipe.bins == 8);
  CHECK(s.recipe.bound == 8.0);
  CHECK(s.recipe.affine_layers == 2);
  CHECK(s.recipe.identity_at_zero);
  CHECK(s.trainer.batch_size() == 512);
  CHECK(s.trainer.steps() == 1407);  // ceil(40 * 18000 / 512)
  CHECK(s.epochs() == Approx(40.0).epsilon(1e-3));
  CHECK(s.trainer.eval_every() == 35);
  CHECK(s.trainer.warmup_steps() == 100);
  CHECK(s.dtype == torch::kFloat32);
  CHECK(s.to_json()["steps"] == 1407);
  CHECK(s.summary().find("nsf-ar, 5 blocks x [128, 128], 8 bins on [-8, 8] after 2 affine blocks, "
                         "batch 512, 1407 steps") == 0);
  // Few rows inside [-4, 4]: a tighter spline interval, smaller nets and batches, at least
  // 1000 steps (here 40 epochs are more).
  const auto box = torch::rand({1000, 3}, torch::kFloat64);
  s = default_fit_settings(box);
  CHECK(s.recipe.bound == 5.0);
  CHECK(s.recipe.affine_layers == 0);
  CHECK(s.recipe.hidden == 64);
  CHECK(s.trainer.batch_size() == 32);
  CHECK(s.trainer.steps() == 1250);  // 40 epochs of 1000 rows at 32
  // Many dimensions: coupling (one pass to sample); many rows: at most 20000 steps.
  CHECK(default_fit_settings(torch::randn({100, 40})).recipe.kind == "nsf");
  CHECK(default_fit_settings(torch::randn({1000000, 2})).trainer.steps() == 20000);
  // One or two dimensions: 16 bins.
  CHECK(default_fit_settings(torch::randn({1000, 2})).recipe.bins == 16);
  CHECK(default_fit_settings(torch::randn({1000, 1})).recipe.bins == 16);
  CHECK(default_fit_settings(torch::randn({1000, 3})).recipe.bins == 8);
  CHECK(steps_for_epochs(2.5, 1000, 100) == 25);
  CHECK_THROWS_AS(default_fit_settings(torch::randn({5})), UsageError);
}

TEST_CASE("resume: flow train killed with SIGKILL resumes from its checkpoint to the same model", "[trainer][cli]") {
  // The binary, killed without warning after its third checkpoint, then the same command
  // again: it resumes from the checkpoint (written under a temporary name and renamed, so
  // intact) and ends with the model an uninterrupted run gives, bit for bit.
  auto args = [](const std::string& out, bool quiet = true) {
    std::vector<std::string> a{NFKIT_BINARY, "flow", "train", "--data", "gmm", "--n-samples", "400",
                               "--layers", "1", "--hidden", "8", "--steps", "1500",
                               "--checkpoint-every", "20", "--seed", "3", "--threads", "1", "--out", out};
    if (quiet) a.push_back("--quiet");
    return a;
  };
  const auto killed = test::temp_path("killed.h5"), whole = test::temp_path("whole.h5");
  REQUIRE(test::run_and_sigkill(args(killed), killed + ".ckpt", 3));
  CHECK(!file_exists(killed));
  CHECK(file_exists(killed + ".ckpt"));
  const auto err = test::temp_path("resume-stderr.txt");
  CHECK(std::system((test::shell_command(args(killed, false)) + " > /dev/null 2> '" + err + "'").c_str()) == 0);
  CHECK(!file_exists(killed + ".ckpt"));
  std::ifstream in(err);
  const std::string said((std::istreambuf_iterator<char>(in)), {});
  CHECK(said.find("resuming from " + killed + ".ckpt at step ") != std::string::npos);  // not from scratch
  CHECK(std::system(test::shell_command(args(whole)).c_str()) == 0);
  auto a = load_flow(killed), b = load_flow(whole);
  CHECK(a.metadata["trainer"]["steps"] == 1500);
  torch::NoGradGuard ng;
  const auto x = torch::randn({200, 2});  // flow train's models are float32
  CHECK(torch::equal(a.flow->log_prob(x), b.flow->log_prob(x)));
}
