#pragma once
// Discrete optimal transport between point clouds, for flow-matching couplings and metrics.
//
//   linear_assignment   exact assignment: Jonker & Volgenant's column reduction (Computing 38,
//                       1987), then shortest augmenting paths (Crouse, IEEE Trans. Aerosp.
//                       Electron. Syst. 52, 2016), O(n^3) worst case: the exact OT
//                       plan between two uniform clouds of equal size is a permutation.
//   exact_transport     exact OT between uniform weights on n rows and m columns for any
//                       pair cost given row by row: LEMON's network simplex (Kovacs, Optim.
//                       Methods Softw. 30, 2015) on a sparse set of candidate pairs (each
//                       row's and column's nearest partners by reduced cost under the duals
//                       of a certified solve on a quarter of the points, extended by
//                       c-transforms), grown by the pairs the duals leave with negative
//                       reduced cost until there are none: dual feasibility over all n x m
//                       pairs certifies optimality (the sparse-support idea of Schmitzer,
//                       J. Math. Imaging Vis. 56, 2016). Memory O((n + m) k), one O(nm) cost
//                       pass per round: exact OT at 10^4 - 10^5 points per side.
//   wasserstein2        exact W2 = sqrt(min_P sum P_ij ||x_i - y_j||^2) between two uniform
//                       clouds of any sizes (the "exact EMD" of torchcfm's evaluation),
//                       optionally on a torus (each coordinate periodic with one period).
//   sinkhorn_log        entropic OT (Cuturi 2013) in the log domain (stable for small reg):
//                       the plan P = argmin <P, C> - reg H(P) with uniform marginals, with
//                       epsilon scaling (Schmitzer 2019) so that small reg converges quickly.
//   sample_plan         index pairs drawn with replacement from a plan, as torchcfm's
//                       OTPlanSampler.sample_map does.
//   entropic_ot         OT_eps(a, b) = min_P <P, C> + eps KL(P | a x b) for C = |x - y|^2 / 2
//                       (the convention of Feydy et al., AISTATS 2019): dual potentials f, g
//                       and the value <a, f> + <b, g>, log domain with epsilon scaling.
//   sinkhorn_divergence S_eps(a, b) = OT_eps(a, b) - OT_eps(a, a)/2 - OT_eps(b, b)/2 (Genevay
//                       et al. 2018; Feydy et al. 2019): >= 0, 0 iff a = b; -> W2^2 / 2 as
//                       eps -> 0, -> MMD with the -|x - y| kernel as eps -> infinity.
//   sinkhorn_velocity   the particle velocity of its Wasserstein gradient flow, T_ab(x) -
//                       T_ax'(x), T the barycentric projections (flows/wflow.h).
// Costs are float64 on the CPU; cost matrices [n, m], points [n, D].
//
//   auto perm = nfkit::linear_assignment(torch::cdist(x, y).pow(2));   // y[perm[i]] <-> x[i]
#include <torch/arg.h>
#include <torch/types.h>

#include <functional>
#include <utility>

namespace nfkit {

/// perm [n] (int64) minimising sum_i cost[i, perm[i]] for a square cost [n, n].
torch::Tensor linear_assignment(const torch::Tensor& cost);

/// Squared Euclidean cost matrix [n, m] (float64) between x [n, D] and y [m, D].
torch::Tensor squared_distances(const torch::Tensor& x, const torch::Tensor& y);

/// A pair cost given a row at a time: out[k] = C(i, j0 + k) for j0 <= j0 + k < j1. Called from
/// several threads at once (distinct rows).
using PairCost = std::function<void(int64_t i, int64_t j0, int64_t j1, double* out)>;

/// C(i, j) = sum_d w(x_id - y_jd)^2 for x [n, D], y [m, D] (float64 copies are kept), with
/// w(t) = min(|t|, period - |t|) when period > 0 (a torus of that period in every coordinate,
/// e.g. 2 pi for dihedral angles) and w(t) = t otherwise.
PairCost squared_distance_cost(const torch::Tensor& x, const torch::Tensor& y, double period = 0);

struct ExactTransportOptions {
  /// Candidate partners per row and per column in the first solve.
  TORCH_ARG(int64_t, neighbours) = 32;
  /// Columns added per row and round, the most negative reduced costs first.
  TORCH_ARG(int64_t, additions) = 32;
  /// Solves before giving up (a RuntimeError: never reached on the tests and benchmarks).
  TORCH_ARG(int64_t, max_rounds) = 100;
};

struct ExactTransport {
  /// sum_ij P_ij C_ij for the optimal plan P (row sums 1/n, column sums 1/m). Costs are
  /// rounded to integers of max C / 2^36 for the solver (LEMON needs integer data), so the
  /// value is optimal to within max C * 2^-36, and is summed from the unrounded costs.
  double cost = 0;
  torch::Tensor rows, cols, mass;  ///< the plan's support: int64 [s], int64 [s], float64 [s]
  int64_t rounds = 0;  ///< network-simplex solves until the duals certified optimality
  int64_t arcs = 0;    ///< candidate pairs of the last solve
};

/// The optimal transport plan between uniform weights on n rows and m columns for the pair
/// cost C (finite); optimality is certified by dual feasibility over all n x m pairs.
ExactTransport exact_transport(int64_t n, int64_t m, const PairCost& cost,
                               const ExactTransportOptions& options = {});

/// Exact 2-Wasserstein distance between the uniform clouds x [n, D] and y [m, D] (same D),
/// on the torus of the given period when period > 0.
double wasserstein2(const torch::Tensor& x, const torch::Tensor& y, double period = 0);

struct SinkhornResult {
  torch::Tensor plan;      ///< [n, m], rows sum to 1/n, columns to 1/m
  int64_t iterations = 0;
  double marginal_error = 0;  ///< L1 error of the row marginal at exit
  bool converged = false;
};
/// Log-domain Sinkhorn for cost [n, m] and regularisation reg > 0.
SinkhornResult sinkhorn_log(const torch::Tensor& cost, double reg, int64_t max_iter = 2000,
                            double tol = 1e-8);

struct EntropicOT {
  torch::Tensor f, g;  ///< dual potentials [n], [m] (f_i = -eps log sum_j b_j exp((g_j - C_ij)/eps))
  double value = 0;    ///< OT_eps = mean(f) + mean(g)
  int64_t iterations = 0;
  double marginal_error = 0;  ///< L1 error of the row marginal at exit
  bool converged = false;
};
/// OT_eps between the uniform clouds x [n, D] and y [m, D], cost |x - y|^2 / 2, in x's dtype
/// and on its device. eps > 0 (squared-distance units / 2).
EntropicOT entropic_ot(const torch::Tensor& x, const torch::Tensor& y, double eps,
                       int64_t max_iter = 2000, double tol = 1e-8);

/// The debiased Sinkhorn divergence S_eps between the uniform clouds x and y.
double sinkhorn_divergence(const torch::Tensor& x, const torch::Tensor& y, double eps,
                           int64_t max_iter = 2000, double tol = 1e-8);

/// T(x_i) = sum_j P_ij y_j / sum_j P_ij, the barycentric projection of the entropic plan of
/// entropic_ot(x, y) onto y, [n, D] (no gradient).
torch::Tensor barycentric_projection(const EntropicOT& ot, const torch::Tensor& x,
                                     const torch::Tensor& y, double eps);

/// V(x_i) = T_{x->y}(x_i) - T_{x->s}(x_i) [n, D] (no gradient): minus the gradient of the
/// first variation of S_eps(x, y) when s is x itself (then -V_i / n = dS / dx_i), and the
/// two-batch estimator of W-Flow when s is an independent second batch of the same model.
torch::Tensor sinkhorn_velocity(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& s,
                                double eps, int64_t max_iter = 2000, double tol = 1e-8);

/// `count` pairs (i, j) drawn with replacement with probability plan[i, j] / sum(plan).
std::pair<torch::Tensor, torch::Tensor> sample_plan(const torch::Tensor& plan, int64_t count);

}  // namespace nfkit
