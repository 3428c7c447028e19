#include "nfkit/flows/losses.h"

#include <torch/torch.h>

#include "nfkit/core/checks.h"

namespace nfkit {

torch::Tensor forward_kl(Flow& flow, const torch::Tensor& x, const torch::Tensor& context) {
  return -flow.log_prob(x, context).mean();
}

torch::Tensor reverse_kl(Flow& flow, const EnergyFn& energy, int64_t n,
                         const torch::Tensor& context) {
  auto [x, log_q] = flow.sample_and_log_prob(n, context);
  const auto u = energy(x);
  check_dim("reverse_kl", "energy(x)", u, 1);
  check_size("reverse_kl", "energy(x)", u, 0, n);
  return (log_q + u).mean();
}

}  // namespace nfkit
