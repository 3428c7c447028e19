#include "nfkit/boltzmann/reweight.h"

#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"

namespace nfkit {

namespace {
torch::Tensor checked(const char* fn, const torch::Tensor& log_w) {
  check_dim(fn, "log_w", log_w, 1);
  const auto lw = log_w.detach().to(torch::kCPU, torch::kFloat64);
  const auto nan = torch::isnan(lw);
  if (nan.any().item<bool>()) {
    const int64_t i = nan.nonzero()[0][0].item<int64_t>();
    runtime_error(fn, "log_w[" + std::to_string(i) + "] is nan, but must be a number or -inf");
  }
  return lw;
}
}  // namespace

torch::Tensor log_importance_weights(const torch::Tensor& u, const torch::Tensor& log_q) {
  check_dim("log_importance_weights", "u", u, 1);
  check_same_batch("log_importance_weights", "u", u, "log_q", log_q);
  auto log_w = -u - log_q;
  return torch::where(torch::isnan(log_w) | torch::isnan(u), torch::full_like(log_w, -INFINITY), log_w);
}

torch::Tensor normalized_weights(const torch::Tensor& log_w) {
  auto lw = checked("normalized_weights", log_w);
  lw = torch::where(lw == INFINITY, torch::full_like(lw, -INFINITY), lw);  // +inf: bug guard
  const double m = lw.max().item<double>();
  if (!std::isfinite(m))
    runtime_error("normalized_weights", "every weight is zero (all log-weights are -inf)");
  const auto w = torch::exp(lw - m);
  return w / w.sum();
}

double ess_fraction(const torch::Tensor& log_w) {
  const auto w = normalized_weights(log_w);
  return 1.0 / (w.pow(2).sum().item<double>() * static_cast<double>(w.size(0)));
}

double ess_fraction_or_zero(const torch::Tensor& log_w) {
  if (log_w.numel() == 0 || !torch::isfinite(log_w).any().item<bool>()) return 0.0;
  return ess_fraction(log_w);
}

torch::Tensor clip_log_weights(const torch::Tensor& log_w, double quantile) {
  check_in_range("clip_log_weights", "quantile", quantile, 0.0, 1.0, /*open_lo=*/true);
  const auto lw = checked("clip_log_weights", log_w);
  const auto finite = lw.masked_select(torch::isfinite(lw));
  if (finite.numel() == 0) return lw;
  const double cap = torch::quantile(finite, quantile).item<double>();
  return torch::clamp_max(lw, cap);
}

torch::Tensor resample(const torch::Tensor& log_w, int64_t m, uint64_t seed) {
  check_positive_int("resample", "m", m);
  const auto w = normalized_weights(log_w);
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(seed);
  return torch::multinomial(w, m, /*replacement=*/true, gen);
}

double weighted_mean(const torch::Tensor& f, const torch::Tensor& log_w) {
  const auto w = normalized_weights(log_w);
  check_size("weighted_mean", "f", f, 0, w.size(0));
  const auto fd = f.to(torch::kFloat64);
  const auto used = w > 0;
  return (fd.masked_select(used) * w.masked_select(used)).sum().item<double>();
}

Estimate bootstrap(int64_t n, const std::function<double(const torch::Tensor& idx)>& statistic,
                   int64_t rounds, uint64_t seed, int64_t block) {
  check_positive_int("bootstrap", "n", n);
  check_positive_int("bootstrap", "block", block);
  block = std::min(block, n);
  Estimate e;
  e.value = statistic(torch::arange(n, torch::kInt64));
  if (rounds < 2) {
    e.error = NAN;
    return e;
  }
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(seed);
  std::vector<double> vals;
  for (int64_t r = 0; r < rounds; ++r) {
    // Moving-block bootstrap (Kunsch 1989) for correlated series; block = 1 is Efron's.
    const int64_t nb = (n + block - 1) / block;
    const auto starts = torch::randint(0, n - block + 1, {nb, 1}, gen, torch::kInt64);
    const auto idx = (starts + torch::arange(block, torch::kInt64).unsqueeze(0)).reshape({-1}).narrow(0, 0, n);
    const double v = statistic(idx);
    if (std::isfinite(v)) vals.push_back(v);
  }
  if (vals.size() < 2) {
    e.error = NAN;
    return e;
  }
  double mean = 0;
  for (double v : vals) mean += v;
  mean /= static_cast<double>(vals.size());
  double ss = 0;
  for (double v : vals) ss += (v - mean) * (v - mean);
  e.error = std::sqrt(ss / static_cast<double>(vals.size() - 1));
  return e;
}

}  // namespace nfkit
