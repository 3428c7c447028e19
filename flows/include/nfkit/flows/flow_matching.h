#pragma once
// Flow-matching objectives: regress a velocity field v(t, x) onto the velocity u_t of a
// conditional probability path between a source sample x0 (t = 0) and a target x1 (t = 1).
// Simulation-free; the trained field is a ContinuousFlow (flows/continuous_flow.h).
//
// Paths, for fixed (x0, x1, t, eps), eps ~ N(0, I) (conditional_path; closed forms):
//   icfm   I-CFM (Tong et al., TMLR 2024): x_t = t x1 + (1-t) x0 + sigma eps, u_t = x1 - x0;
//          independent pairs.
//   otcfm  OT-CFM (Tong et al.; Pooladian et al. 2023): the I-CFM path on pairs drawn with
//          replacement from the exact minibatch OT plan for the squared Euclidean cost (the
//          Hungarian assignment, optimal_transport.h), as torchcfm's OTPlanSampler does;
//          batches above exact_ot_max use a log-domain Sinkhorn plan with reg = ot_reg x the
//          mean cost instead.
//   sbcfm  SB-CFM (Tong et al.): pairs from the entropic plan with reg = 2 sigma^2 (the
//          Brownian bridge of variance sigma^2), x_t = t x1 + (1-t) x0 + sigma sqrt(t(1-t)) eps,
//          u_t = (1-2t)/(2t(1-t)) (x_t - mu_t) + x1 - x0. Needs sigma > 0.
//   fm     target FM (Lipman et al., ICLR 2023), source N(0, I) required: x_t = t x1 +
//          (1 - (1-sigma) t) x0, u_t = (x1 - (1-sigma) x_t) / (1 - (1-sigma) t) (sigma = sigma_min).
//   vpcfm  VP-CFM (Tong et al., after Albergo & Vanden-Eijnden 2023): x_t = cos(pi t/2) x0 +
//          sin(pi t/2) x1 + sigma eps, u_t = pi/2 (cos(pi t/2) x1 - sin(pi t/2) x0).
//   wcfm   W-CFM (Calvo-Ordonez et al. 2025): the I-CFM path on independent pairs, each pair's
//          loss weighted by the Gibbs kernel exp(-c(x0, x1)/eps_w), normalised to mean 1 over
//          the batch. The cost is c = ||x0 - x1||^2, the squared Euclidean cost of OT-CFM's plan,
//          so that the weighting approximates the entropic plan of the same cost that OT-CFM
//          and SB-CFM solve for (eps_w plays SB-CFM's reg = 2 sigma^2).
//   rf     rectified flow (Liu et al., ICLR 2023): the I-CFM path with sigma = 0; with reflow
//          the pairs are (z0, ODE(z0)) of the previous model (the command line's --reflow).
//   flowmap  flow maps by Lagrangian self-distillation (Boffi et al. 2025, flows/flow_map.h):
//          the rf path on the diagonal plus the LSD loss off it; the field must be a FlowMapMLP.
// Time t ~ U(0, 1), or the U-shaped p(t) ∝ cosh(a (t - 1/2)) of Lee et al. (NeurIPS 2024,
// "Improving the training of rectified flows"), a = 4. Per-sample loss: the mean squared error
// over coordinates (torchcfm), or Lee et al.'s pseudo-Huber sqrt(||v - u||^2 + c^2) - c with
// c = 0.00054 sqrt(d) (the constant of Song & Dhariwal 2023 that Lee et al. use).
//
//   nfkit::CfmOptions o; o.method(nfkit::CfmMethod::kOTCFM);
//   auto loss = nfkit::cfm_loss(*v, o, x0, x1);   // x0 ~ source, x1 ~ data, [B, D]
#include <torch/arg.h>
#include <torch/types.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nfkit/flows/continuous_flow.h"
#include "nfkit/flows/velocity.h"

namespace nfkit {

enum class CfmMethod { kICFM, kOTCFM, kSBCFM, kFM, kVPCFM, kWCFM, kRF, kFlowMap };

/// UsageError naming `option` for an unknown name.
CfmMethod parse_cfm_method(const std::string& name, const std::string& option = "--method");
std::string cfm_method_name(CfmMethod m);
const std::vector<std::string>& cfm_method_names();
/// sigma the method uses unless told: 0 for rf and flowmap, 0.1 otherwise (torchcfm's 2-D examples).
double cfm_default_sigma(CfmMethod m);

struct CfmOptions {
  TORCH_ARG(CfmMethod, method) = CfmMethod::kICFM;
  TORCH_ARG(double, sigma) = 0.1;
  /// otcfm: exact assignment up to this batch size, Sinkhorn above.
  TORCH_ARG(int64_t, exact_ot_max) = 1024;
  /// otcfm above exact_ot_max: Sinkhorn reg as a fraction of the batch's mean cost.
  TORCH_ARG(double, ot_reg) = 0.01;
  /// sbcfm (and large-batch otcfm): Sinkhorn iteration cap per batch.
  TORCH_ARG(int64_t, sinkhorn_iters) = 500;
  /// wcfm: the Gibbs kernel's eps_w (same units as the squared distances). Must be > 0.
  TORCH_ARG(double, wcfm_eps) = 1.0;
  /// "uniform" or "ushaped".
  TORCH_ARG(std::string, time) = "uniform";
  TORCH_ARG(double, ushape_a) = 4.0;
  /// "mse" or "pseudo-huber".
  TORCH_ARG(std::string, loss) = "mse";
  /// flowmap: the fraction of each batch on the diagonal s = t (flow matching on b_t); the
  /// rest carries the LSD loss.
  TORCH_ARG(double, diagonal_fraction) = 0.75;

 public:
  nlohmann::json to_json() const;
  static CfmOptions from_json(const nlohmann::json& j);
  /// UsageError naming the option (--sigma, --time, --loss, --wcfm-eps, ...).
  void validate() const;
};

struct ConditionalPath {
  torch::Tensor xt, ut;  ///< [B, D]
};
/// The closed forms above for fixed x0, x1 [B, D], t [B], eps [B, D].
ConditionalPath conditional_path(CfmMethod m, double sigma, const torch::Tensor& x0,
                                 const torch::Tensor& x1, const torch::Tensor& t,
                                 const torch::Tensor& eps);

/// A training minibatch after the method's pairing.
struct Coupling {
  torch::Tensor x0, x1, context;  ///< context rows follow x1
  torch::Tensor weight;           ///< [B], mean 1 (wcfm), undefined otherwise
};
/// otcfm / sbcfm: pairs drawn from the minibatch plan; wcfm: Gibbs weights; others: as given.
/// Draws from the global torch generator.
Coupling couple(const CfmOptions& o, const torch::Tensor& x0, const torch::Tensor& x1,
                const torch::Tensor& context = {});

/// n times from the options' time distribution (global generator).
torch::Tensor sample_times(const CfmOptions& o, int64_t n, const torch::TensorOptions& opts);

/// UsageError unless x0 and x1 are [B, D] with the same B and D (named `fn`).
void check_cfm_batch(const char* fn, const torch::Tensor& x0, const torch::Tensor& x1);

/// Per-row loss [B] of the error v - u [B, D]: the mean square over coordinates (mse) or
/// pseudo-Huber sqrt(||v - u||^2 + c^2) - c, c = 0.00054 sqrt(D).
torch::Tensor cfm_per_row_loss(const CfmOptions& o, const torch::Tensor& err);

/// The flow-matching loss of v on one minibatch (pairing, times, noise from the global
/// generator). x0 from the source, x1 from the target, [B, D].
torch::Tensor cfm_loss(VelocityField& v, const CfmOptions& o, const torch::Tensor& x0,
                       const torch::Tensor& x1, const torch::Tensor& context = {});

/// Straightness (Liu et al. 2023) of the model's trajectories from x0:
///   S = E int_0^1 ||(X_1 - X_0) - v(t, X_t)||^2 dt,
/// by `steps` Euler steps (X_1 - X_0 taken from the same trajectory). 0 for straight paths.
double straightness(ContinuousFlow& cnf, const torch::Tensor& x0, int64_t steps = 100,
                    const torch::Tensor& context = {});

}  // namespace nfkit
