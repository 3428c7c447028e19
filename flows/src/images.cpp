#include "nfkit/flows/images.h"

#include <torch/torch.h>

#include <cmath>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/core/runtime.h"

namespace nfkit {

namespace {
torch::Tensor flat_pixels(const char* fn, const torch::Tensor& images) {
  check_defined(fn, "images", images);
  if (images.scalar_type() != torch::kUInt8 && !images.is_floating_point())
    usage_error(fn, "images must be pixel values 0..255 (uint8 or floating point)");
  if (images.dim() < 2) usage_error(fn, "images must be [N, H, W] or [N, C, H, W]");
  return images.reshape({images.size(0), -1}).to(torch::kFloat32);
}
}  // namespace

torch::Tensor dequantize_uniform(const torch::Tensor& images) {
  const auto p = flat_pixels("dequantize_uniform", images);
  return (p + torch::rand_like(p)) / 128.0 - 1.0;
}

torch::Tensor pixels_to_model(const torch::Tensor& images, double sigma) {
  const auto p = flat_pixels("pixels_to_model", images);
  auto y = (p + 0.5) / 128.0 - 1.0;
  if (sigma > 0) y = y + sigma * torch::randn_like(y);
  return y;
}

torch::Tensor model_to_pixels(const torch::Tensor& y) {
  return torch::floor((y.detach().to(torch::kFloat32) + 1.0) * 128.0).clamp(0, 255).to(torch::kUInt8);
}

torch::Tensor nll_to_bits_per_dim(const torch::Tensor& nll, double dims) {
  return (nll + dims * std::log(128.0)) / (dims * std::log(2.0));
}

double nll_to_bits_per_dim(double nll, double dims) {
  return (nll + dims * std::log(128.0)) / (dims * std::log(2.0));
}

torch::Tensor one_hot_labels(const torch::Tensor& labels, int64_t K) {
  check_positive_int("one_hot", "num_classes", K);
  if (labels.numel() > 0 && (labels.min().item<int64_t>() < 0 || labels.max().item<int64_t>() >= K))
    runtime_error("labels", "hold values outside 0.." + std::to_string(K - 1));
  return torch::one_hot(labels.to(torch::kInt64), K).to(torch::kFloat32);
}

BitsPerDim bits_per_dim(Distribution& flow, const torch::Tensor& images, const torch::Tensor& labels,
                        int64_t batch, uint64_t seed, int64_t num_classes,
                        const std::function<void(int64_t, int64_t)>& progress) {
  const char* fn = "bits_per_dim";
  check_positive_int(fn, "batch", batch);
  const int64_t N = images.size(0);
  const auto px = flat_pixels(fn, images);
  if (px.size(1) != flow.dim())
    usage_error(fn, "images have " + std::to_string(px.size(1)) + " values, the model expects " +
                        std::to_string(flow.dim()));
  torch::NoGradGuard ng;
  const bool was_training = flow.is_training();
  flow.eval();
  torch::manual_seed(seed);
  const auto opts = flow.tensor_options();
  const double D = static_cast<double>(px.size(1));
  std::vector<torch::Tensor> bpd;
  for (int64_t i = 0; i < N; i += batch) {
    const int64_t n = std::min(batch, N - i);
    const auto p = px.narrow(0, i, n);
    const auto y = dequantize_uniform(p).to(opts);
    torch::Tensor c;
    if (num_classes > 0) c = one_hot_labels(labels.narrow(0, i, n), num_classes).to(opts);
    const auto nll = -flow.log_prob(y, c).to(torch::kFloat64);
    bpd.push_back(nll_to_bits_per_dim(nll, D));
    if (progress) progress(i + n, N);
  }
  if (was_training) flow.train();
  const auto all = torch::cat(bpd).cpu();
  BitsPerDim r;
  r.n = N;
  r.mean = all.mean().item<double>();
  r.se = N > 1 ? all.std().item<double>() / std::sqrt(static_cast<double>(N)) : 0.0;
  return r;
}

double frechet_distance(const torch::Tensor& a, const torch::Tensor& b) {
  const char* fn = "frechet_distance";
  check_dim(fn, "a", a, 2);
  check_dim(fn, "b", b, 2);
  check_size(fn, "b", b, 1, a.size(1));
  if (a.size(0) < 2 || b.size(0) < 2) usage_error(fn, "needs at least 2 rows in each feature set");
  const auto x = a.to(torch::kFloat64).cpu(), y = b.to(torch::kFloat64).cpu();
  check_finite(fn, "a", x);
  check_finite(fn, "b", y);
  auto cov = [](const torch::Tensor& f) {
    const auto c = f - f.mean(0, true);
    return c.t().mm(c) / static_cast<double>(f.size(0) - 1);
  };
  // Symmetric square root through eigh (negative round-off eigenvalues clipped to 0).
  auto sqrtm = [](const torch::Tensor& s) {
    auto [w, v] = torch::linalg_eigh(0.5 * (s + s.t()), "L");
    return v.mm(torch::diag(w.clamp_min(0.0).sqrt())).mm(v.t());
  };
  const auto sa = cov(x), sb = cov(y);
  const auto ra = sqrtm(sa);
  const auto cross = sqrtm(ra.mm(sb).mm(ra));
  const double mean_term = (x.mean(0) - y.mean(0)).pow(2).sum().item<double>();
  return mean_term + (sa.trace() + sb.trace() - 2.0 * cross.trace()).item<double>();
}

torch::Tensor denoise_step(Flow& flow, const torch::Tensor& x, const torch::Tensor& context,
                           double variance) {
  check_nonnegative("denoise_step", "variance", variance);
  torch::AutoGradMode on(true);
  auto xg = x.detach().requires_grad_(true);
  const auto lp = flow.log_prob(xg, context).sum();
  const auto g = torch::autograd::grad({lp}, {xg})[0];
  return (x.detach() + variance * g).detach();
}

double training_noise_variance(double noise_sigma) {
  return noise_sigma > 0 ? noise_sigma * noise_sigma : 1.0 / (12.0 * 128.0 * 128.0);
}

}  // namespace nfkit
