#pragma once
// BOSS, Bellman optimal step sizes (Nguyen et al., "Bellman Optimal Stepsize Straightening of
// Flow-Matching Models", ICLR 2024): choose the K Euler steps of a few-step sampler by dynamic
// programming over a fine time grid.
//
//   1. A fine reference trajectory from source samples z0: N RK4 steps on the uniform grid
//      t_0 = 0 < ... < t_N = 1, states x_i.
//   2. The cost of one Euler step from t_i to t_j (i < j): the mean over samples of the
//      squared error of its prediction against the reference,
//        c_ij = E || x_i + (t_j - t_i) v(t_i, x_i) - x_j ||^2.
//   3. The K-step schedule 0 = i_0 < i_1 < ... < i_K = N minimising sum_k c_{i_(k-1) i_k}:
//      the Bellman recursion D_k(j) = min_{i<j} D_(k-1)(i) + c_ij, D_0(0) = 0, in O(K N^2).
// The schedule is a user grid (OdeOptions::grid) for the fixed-grid solvers; BOSS samples with
// Euler on it.
//
// Straightening (the paper's second phase, Sec. 4): the pretrained field is fine-tuned so that
// each Euler step of the chosen schedule lands where the fine reference trajectory of the
// pretrained model goes. From source samples z0, the reference states at the schedule's nodes
// give pairs (x_k, x_{k+1}) at times (tau_k, tau_{k+1}), and the loss is the paper's L2
//   E || v(tau_k, x_k) - (x_{k+1} - x_k) / (tau_{k+1} - tau_k) ||^2
// (mean over coordinates here, as every nfkit flow-matching loss). The reference is the same
// fine RK4 trajectory as the cost matrix's (the authors' code uses K_max Euler steps; RK4 is
// the more accurate stand-in for the exact ODE both approximate). Sampling afterwards: Euler on
// the same schedule.
//
//   auto cost = nfkit::boss_cost(*cnf, cnf->base()->sample(1000), 100);
//   auto grid = nfkit::boss_grid(cost, 4);          // 5 times from 0 to 1
//   auto rows = nfkit::boss_straightening_pairs(*cnf, z0, 100, nfkit::boss_schedule(cost.cost, 4));
//   auto loss = nfkit::boss_straightening_loss(*cnf->velocity(), rows);   // fine-tune on this
#include <torch/types.h>

#include <vector>

#include "nfkit/flows/continuous_flow.h"

namespace nfkit {

struct BossCost {
  std::vector<double> times;  ///< the fine grid t_0 .. t_N
  torch::Tensor cost;         ///< [N + 1, N + 1] float64, c_ij for i < j (+inf elsewhere)
};

/// Cost matrix from `fine_steps` RK4 steps of the model from z0 (no gradients).
BossCost boss_cost(ContinuousFlow& cnf, const torch::Tensor& z0, int64_t fine_steps,
                   const torch::Tensor& context = {});

/// Indices 0 = i_0 < ... < i_K = N of the optimal K-step path through cost [N + 1, N + 1].
/// UsageError unless 1 <= K <= N.
std::vector<int64_t> boss_schedule(const torch::Tensor& cost, int64_t K);

/// The optimal K-step schedule as times on [0, 1] (OdeOptions::grid).
std::vector<double> boss_grid(const BossCost& c, int64_t K);

/// The fine reference trajectory: fine_steps + 1 states [n, D] of `fine_steps` uniform RK4
/// steps of the model from z0 (no gradients).
std::vector<torch::Tensor> boss_reference(ContinuousFlow& cnf, const torch::Tensor& z0, int64_t fine_steps,
                                          const torch::Tensor& context = {});

/// Straightening pairs from z0 [n, D] on the schedule i_0 = 0 < ... < i_K = fine_steps (indices
/// of the fine grid, boss_schedule): rows [x_{i_k}, x_{i_(k+1)}, t_{i_k}, t_{i_(k+1)}], sample
/// major (row s K + k), [n K, 2 D + 2], in the model's dtype. UsageError for a schedule that does
/// not run from 0 to fine_steps in increasing steps.
torch::Tensor boss_straightening_pairs(ContinuousFlow& cnf, const torch::Tensor& z0, int64_t fine_steps,
                                       const std::vector<int64_t>& schedule, const torch::Tensor& context = {});

/// The straightening loss on rows of boss_straightening_pairs (context rows follow them): mean
/// over rows of mean_j (v(t_k, x_k) - (x_(k+1) - x_k) / (t_(k+1) - t_k))_j^2. Differentiable in
/// the field's parameters.
torch::Tensor boss_straightening_loss(VelocityField& v, const torch::Tensor& rows, const torch::Tensor& context = {});

}  // namespace nfkit
