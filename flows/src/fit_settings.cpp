#include "nfkit/flows/fit_settings.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdio>

#include "nfkit/core/checks.h"

namespace nfkit {

int64_t steps_for_epochs(double epochs, int64_t n_train, int64_t batch_size) {
  return std::max<int64_t>(
      1, static_cast<int64_t>(std::ceil(epochs * static_cast<double>(n_train) /
                                        static_cast<double>(batch_size))));
}

void set_fit_length(FitSettings& s, int64_t steps) {
  s.trainer.steps(steps)
      .warmup_steps(std::min<int64_t>(100, steps / 10))
      .eval_every(std::max<int64_t>(1, steps / 40));
}

double FitSettings::epochs() const {
  return static_cast<double>(trainer.steps() * trainer.batch_size()) /
         static_cast<double>(std::max<int64_t>(n_train, 1));
}

FitSettings default_fit_settings(const torch::Tensor& train) {
  const char* fn = "default_fit_settings";
  check_dim(fn, "train", train, 2);
  const int64_t n_train = train.size(0), dim = train.size(1);
  check_positive_int(fn, "n_train", n_train);
  check_positive_int(fn, "dim", dim);
  FitSettings s;
  s.n_train = n_train;
  s.recipe.kind = dim <= 32 ? "nsf-ar" : "nsf";
  if (dim == 1) s.recipe.kind = "nsf-ar";  // a coupling needs two coordinates
  s.recipe.dim = dim;
  s.recipe.layers = 5;
  s.recipe.hidden = n_train >= 4000 ? 128 : 64;
  s.recipe.hidden_layers = 2;
  // 16 bins in one or two dimensions, 8 above: at D = 2 the finer splines fit the sharp
  // 2-D benchmark densities far better (docs/benchmarks.md, fit quality, 3 seeds: rings 0.19 ->
  // 0.05, spirals 0.053 -> 0.025, checkerboard 0.115 -> 0.072) in ~25% more time, while at
  // D = 6-16 they fit worse (banana:16 0.26 -> 0.30, one funnel:6 seed 3.2).
  s.recipe.bins = dim <= 2 ? 16 : 8;
  // Standardised range, as the flow's first layer standardises (ElementwiseAffine).
  double max_abs_z = 0;
  if (n_train > 1) {
    torch::NoGradGuard ng;
    const auto x = train.to(torch::kFloat64);
    const auto z = (x - x.mean(0)) / x.std(0).clamp_min(1e-12);
    max_abs_z = z.abs().max().item<double>();
  }
  const bool reaches_far = max_abs_z > 4.0;
  s.recipe.bound = reaches_far ? 8.0 : 5.0;
  // Data that reach far beyond the bulk (heavy tails, scales that depend on other coordinates
  // as in a funnel's neck) get two affine autoregressive blocks first: splines on a bounded
  // interval cannot rescale by orders of magnitude. docs/benchmarks.md (fit quality): funnel:6
  // 1.86 -> 0.08 nats, bananas 0.01 better; compact data (the 16-mode mixture) fit a little
  // worse with them (0.13 -> 0.17), so they get none.
  s.recipe.affine_layers = reaches_far ? 2 : 0;
  s.recipe.identity_at_zero = true;

  int64_t batch = 512;
  while (batch > 32 && batch * 20 > n_train) batch /= 2;
  const int64_t steps = std::clamp<int64_t>(steps_for_epochs(40.0, n_train, batch), 1000, 20000);
  s.trainer = TrainerOptions().batch_size(batch).lr(1e-3).patience(10);
  set_fit_length(s, steps);
  s.dtype = torch::kFloat32;
  return s;
}

json FitSettings::to_json() const {
  return {{"flow", recipe.kind},
          {"layers", recipe.layers},
          {"hidden", recipe.hidden},
          {"hidden_layers", recipe.hidden_layers},
          {"bins", recipe.bins},
          {"bound", recipe.bound},
          {"identity_at_zero", recipe.identity_at_zero},
          {"affine_layers", recipe.affine_layers},
          {"steps", trainer.steps()},
          {"epochs", epochs()},
          {"n_train", n_train},
          {"batch_size", trainer.batch_size()},
          {"lr", trainer.lr()},
          {"warmup", trainer.warmup_steps()},
          {"eval_every", trainer.eval_every()},
          {"patience", trainer.patience()},
          {"dtype", dtype == torch::kFloat64 ? "float64" : "float32"}};
}

std::string FitSettings::summary() const {
  std::string hidden = "[";
  for (int64_t l = 0; l < recipe.hidden_layers; ++l)
    hidden += (l ? ", " : "") + std::to_string(recipe.hidden);
  hidden += "]";
  char buf[512];
  const bool spline = recipe.kind == "nsf" || recipe.kind == "nsf-ar";
  std::string spline_part;
  if (spline) {
    char b[96];
    std::snprintf(b, sizeof b, ", %lld bins on [-%g, %g]", static_cast<long long>(recipe.bins),
                  recipe.bound, recipe.bound);
    spline_part = b;
    if (recipe.affine_layers > 0)
      spline_part += " after " + std::to_string(recipe.affine_layers) + " affine block" +
                     (recipe.affine_layers > 1 ? "s" : "");
  }
  std::snprintf(buf, sizeof buf,
                "%s, %lld blocks x %s%s, batch %lld, %lld steps (%.1f epochs of %lld rows), "
                "lr %g (warm-up %lld, cosine), validation every %lld steps%s, %s",
                recipe.kind.c_str(), static_cast<long long>(recipe.layers), hidden.c_str(),
                spline_part.c_str(), static_cast<long long>(trainer.batch_size()),
                static_cast<long long>(trainer.steps()), epochs(), static_cast<long long>(n_train),
                trainer.lr(), static_cast<long long>(trainer.warmup_steps()),
                static_cast<long long>(trainer.eval_every()),
                trainer.patience() > 0
                    ? (", patience " + std::to_string(trainer.patience())).c_str()
                    : "",
                dtype == torch::kFloat64 ? "float64" : "float32");
  return buf;
}

}  // namespace nfkit
