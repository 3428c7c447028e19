#include "nfkit/flows/losses.h"

#include <torch/torch.h>

#include "nfkit/core/checks.h"

namespace nfkit {

torch::Tensor forward_kl(Distribution& flow, const torch::Tensor& x, const torch::Tensor& context) {
  return -flow.log_prob(x, context).mean();
}

torch::Tensor negative_log_likelihood(Distribution& flow, const torch::Tensor& x,
                                      const torch::Tensor& context, int64_t chunk) {
  check_positive_int("negative_log_likelihood", "chunk", chunk);
  torch::NoGradGuard ng;
  const auto opts = flow.tensor_options();
  std::vector<torch::Tensor> parts;
  for (int64_t i = 0; i < x.size(0); i += chunk) {
    const int64_t n = std::min(chunk, x.size(0) - i);
    const auto c = context.defined() ? context.narrow(0, i, n).to(opts) : context;
    parts.push_back(-flow.log_prob(x.narrow(0, i, n).to(opts), c).to(torch::kFloat64).cpu());
  }
  return torch::cat(parts);
}

torch::Tensor reverse_kl(Distribution& flow, const EnergyFn& energy, int64_t n,
                         const torch::Tensor& context) {
  auto [x, log_q] = flow.sample_and_log_prob(n, context);
  const auto u = energy(x);
  check_dim("reverse_kl", "energy(x)", u, 1);
  check_size("reverse_kl", "energy(x)", u, 0, n);
  return (log_q + u).mean();
}

}  // namespace nfkit
