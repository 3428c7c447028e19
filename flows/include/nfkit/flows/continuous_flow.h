#pragma once
// Continuous normalizing flows (Chen et al., NeurIPS 2018; Grathwohl et al., FFJORD, ICLR
// 2019): a base distribution at t = 0 pushed to the data at t = 1 by dx/dt = v(t, x, context).
//
// A ContinuousFlow is a Distribution. Its log-density follows the instantaneous change of
// variables d log p_t(x_t)/dt = -div v(t, x_t):
//   log q(x) = log p_base(x_0) - int_0^1 div v(t, x_t) dt,   x_1 = x,
// integrated backwards from t = 1 together with the state (one augmented ODE). The divergence
// is exact (one autograd pass per dimension) when dim <= exact_max_dim under "auto", or
// Hutchinson's unbiased estimate E[e^T (dv/dx) e] (Hutchinson 1990; FFJORD) with `probes`
// Rademacher or Gaussian probes, fixed along the trajectory and drawn from probe_seed, so the
// same call returns the same number. Which one was used is estimator(); the solver's NFE of
// the last call is last_stats().
//
// log_prob and sample_and_log_prob are evaluations: their results carry no gradient to the
// parameters (flow matching trains the field by regression, flows/flow_matching.h). sample()
// integrates the state only (no divergence).
//
// Temperature is the base's (Distribution's convention): samples start from the tempered
// base, and log_prob is the exact density of that pushforward.
//
//   auto cnf = std::make_shared<nfkit::ContinuousFlow>(std::make_shared<nfkit::StandardNormal>(2), v);
//   auto [x, log_q] = cnf->sample_and_log_prob(1000);
//   std::cout << cnf->last_stats().nfe << " evaluations, " << cnf->estimator() << "\n";
#include <torch/arg.h>

#include "nfkit/flows/distribution.h"
#include "nfkit/flows/ode.h"
#include "nfkit/flows/velocity.h"

namespace nfkit {

struct ContinuousFlowOptions {
  /// Default solver of sample / log_prob / transport.
  TORCH_ARG(OdeOptions, ode) = OdeOptions();
  /// "auto" (exact up to exact_max_dim dimensions, Hutchinson above), "exact", "hutchinson".
  TORCH_ARG(std::string, divergence) = "auto";
  TORCH_ARG(int64_t, exact_max_dim) = 16;
  /// Hutchinson probes: "rademacher" or "gaussian"; their number and seed.
  TORCH_ARG(std::string, probe) = "rademacher";
  TORCH_ARG(int64_t, probes) = 1;
  TORCH_ARG(uint64_t, probe_seed) = 0;
  /// The objective the field was trained with (icfm, otcfm, ...), kept in the configuration.
  TORCH_ARG(std::string, path) = "";

 public:
  json to_json() const;
  static ContinuousFlowOptions from_json(const json& j);
  /// UsageError naming the option (--divergence, --probe, --probes, and the solver's).
  void validate() const;
};

class ContinuousFlow : public Distribution {
 public:
  ContinuousFlow(DistributionPtr base, VelocityFieldPtr velocity,
                 ContinuousFlowOptions opts = ContinuousFlowOptions());

  double temperature() const override { return base_->temperature(); }
  void set_temperature(double T) override { base_->set_temperature(T); }
  json config() const override;
  torch::TensorOptions tensor_options() const override { return base_->tensor_options(); }

  const DistributionPtr& base() const { return base_; }
  const VelocityFieldPtr& velocity() const { return velocity_; }
  ContinuousFlowOptions& options() { return opts_; }
  const ContinuousFlowOptions& options() const { return opts_; }

  /// Integrates x [B, dim] from time t0 to t1 with the default solver (or `ode`).
  torch::Tensor transport(const torch::Tensor& x, double t0, double t1,
                          const torch::Tensor& context = {});
  torch::Tensor transport(const torch::Tensor& x, double t0, double t1, const OdeOptions& ode,
                          const torch::Tensor& context = {});
  /// {x(t1), log p_t1(x(t1)) - log p_t0(x(t0)) = -int div v dt} along the trajectory.
  std::tuple<torch::Tensor, torch::Tensor> transport_with_log_density_change(
      const torch::Tensor& x, double t0, double t1, const torch::Tensor& context = {});

  /// "exact" or "hutchinson (rademacher, 1 probe)": what log_prob uses at this dimension.
  std::string estimator() const;
  bool exact_divergence() const;
  /// Solver statistics of the last transport / log_prob / sample call.
  const OdeStats& last_stats() const { return stats_; }

 protected:
  torch::Tensor log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  std::tuple<torch::Tensor, torch::Tensor> sample_impl(int64_t n, const torch::Tensor& context) override;
  torch::Tensor sample_only_impl(int64_t n, const torch::Tensor& context) override;

 private:
  DistributionPtr base_;
  VelocityFieldPtr velocity_;
  ContinuousFlowOptions opts_;
  OdeStats stats_;
};

using ContinuousFlowPtr = std::shared_ptr<ContinuousFlow>;

/// Rebuilds a continuous flow from config() (base, velocity field, options).
ContinuousFlowPtr make_continuous_flow(const json& config);

/// Divergence sum_i d v_i / d x_i [B] of v(t, x) at x [B, D] by D autograd passes (exact), for
/// tests and small D. The field must act on rows independently.
torch::Tensor exact_divergence(VelocityField& v, const torch::Tensor& t, const torch::Tensor& x,
                               const torch::Tensor& context = {});

}  // namespace nfkit
