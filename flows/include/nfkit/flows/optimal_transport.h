#pragma once
// Discrete optimal transport between point clouds, for flow-matching couplings and metrics.
//
//   linear_assignment   exact assignment: Jonker & Volgenant's column reduction (Computing 38,
//                       1987), then shortest augmenting paths (Crouse, IEEE Trans. Aerosp.
//                       Electron. Syst. 52, 2016), O(n^3) worst case: the exact OT
//                       plan between two uniform clouds of equal size is a permutation.
//   wasserstein2        exact W2 = sqrt(min_perm mean ||x_i - y_perm(i)||^2) between two
//                       equal-size clouds (the "exact EMD" of torchcfm's evaluation).
//   sinkhorn_log        entropic OT (Cuturi 2013) in the log domain (stable for small reg):
//                       the plan P = argmin <P, C> - reg H(P) with uniform marginals, with
//                       epsilon scaling (Schmitzer 2019) so that small reg converges quickly.
//   sample_plan         index pairs drawn with replacement from a plan, as torchcfm's
//                       OTPlanSampler.sample_map does.
// Costs are float64 on the CPU; cost matrices [n, m], points [n, D].
//
//   auto perm = nfkit::linear_assignment(torch::cdist(x, y).pow(2));   // y[perm[i]] <-> x[i]
#include <torch/types.h>

#include <utility>

namespace nfkit {

/// perm [n] (int64) minimising sum_i cost[i, perm[i]] for a square cost [n, n].
torch::Tensor linear_assignment(const torch::Tensor& cost);

/// Squared Euclidean cost matrix [n, m] (float64) between x [n, D] and y [m, D].
torch::Tensor squared_distances(const torch::Tensor& x, const torch::Tensor& y);

/// Exact 2-Wasserstein distance between the uniform clouds x and y (same n; UsageError
/// otherwise).
double wasserstein2(const torch::Tensor& x, const torch::Tensor& y);

struct SinkhornResult {
  torch::Tensor plan;      ///< [n, m], rows sum to 1/n, columns to 1/m
  int64_t iterations = 0;
  double marginal_error = 0;  ///< L1 error of the row marginal at exit
  bool converged = false;
};
/// Log-domain Sinkhorn for cost [n, m] and regularisation reg > 0.
SinkhornResult sinkhorn_log(const torch::Tensor& cost, double reg, int64_t max_iter = 2000,
                            double tol = 1e-8);

/// `count` pairs (i, j) drawn with replacement with probability plan[i, j] / sum(plan).
std::pair<torch::Tensor, torch::Tensor> sample_plan(const torch::Tensor& plan, int64_t count);

}  // namespace nfkit
