#pragma once
// Training objectives of a flow q.
//
//   forward KL (maximum likelihood on data x ~ p):  L = -mean log q(x)            [nats]
//   reverse KL against a target p ∝ exp(-u):        L = mean_{x~q} [log q(x) + u(x)]
//       = KL(q || p) - log Z, with u the REDUCED energy (dimensionless, E / k_B T) and the
//       samples reparameterised, so the gradient flows through the energy.
//   mix:  (1 - w) forward + w reverse, w in [0, 1].
//
//   auto loss = nfkit::forward_kl(*flow, x);
#include <functional>

#include "nfkit/flows/distribution.h"

namespace nfkit {

/// Reduced energy u(x) [B] (dimensionless) of configurations x [B, D]; differentiable.
using EnergyFn = std::function<torch::Tensor(const torch::Tensor& x)>;

torch::Tensor forward_kl(Distribution& flow, const torch::Tensor& x, const torch::Tensor& context = {});

/// -log q(x) per sample [N] without gradients, in chunks of `chunk` rows (bounded memory for
/// large evaluation sets). x (and context) are moved to the flow's dtype and device; the
/// result is float64 on the CPU.
torch::Tensor negative_log_likelihood(Distribution& flow, const torch::Tensor& x,
                                      const torch::Tensor& context = {}, int64_t chunk = 8192);
torch::Tensor reverse_kl(Distribution& flow, const EnergyFn& energy, int64_t n,
                         const torch::Tensor& context = {});

}  // namespace nfkit
