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
// Euler on it. The straightening fine-tune of the paper (retraining v on the chosen steps) is
// not part of this header.
//
//   auto cost = nfkit::boss_cost(*cnf, cnf->base()->sample(1000), 100);
//   auto grid = nfkit::boss_grid(cost, 4);          // 5 times from 0 to 1
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

}  // namespace nfkit
