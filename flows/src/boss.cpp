#include "nfkit/flows/boss.h"

#include <torch/torch.h>

#include <limits>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"

namespace nfkit {

BossCost boss_cost(ContinuousFlow& cnf, const torch::Tensor& z0, int64_t fine_steps,
                   const torch::Tensor& context) {
  check_positive_int("boss", "fine_steps", fine_steps);
  torch::NoGradGuard ng;
  const int64_t N = fine_steps;
  const auto rk4 = OdeOptions().method(OdeMethod::kRK4).steps(1);
  BossCost out;
  std::vector<torch::Tensor> x{z0.to(cnf.tensor_options())}, v;
  for (int64_t i = 0; i <= N; ++i) out.times.push_back(static_cast<double>(i) / N);
  const auto ctx = context.defined() ? context.to(cnf.tensor_options()) : context;
  for (int64_t i = 0; i < N; ++i)
    x.push_back(cnf.transport(x.back(), out.times[i], out.times[i + 1], rk4, ctx));
  for (int64_t i = 0; i < N; ++i)
    v.push_back(cnf.velocity()->forward(torch::full({}, out.times[i], x[i].options()), x[i], ctx));
  const double inf = std::numeric_limits<double>::infinity();
  out.cost = torch::full({N + 1, N + 1}, inf, torch::kFloat64);
  auto* c = out.cost.data_ptr<double>();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = i + 1; j <= N; ++j) {
      const auto pred = x[i] + (out.times[j] - out.times[i]) * v[i];
      c[i * (N + 1) + j] = (pred - x[j]).pow(2).sum(1).mean().item<double>();
    }
  return out;
}

std::vector<int64_t> boss_schedule(const torch::Tensor& cost_in, int64_t K) {
  const char* fn = "boss";
  check_dim(fn, "cost", cost_in, 2);
  const int64_t N = cost_in.size(0) - 1;
  if (cost_in.size(1) != N + 1) usage_error(fn, "cost must be square");
  if (K < 1 || K > N)
    usage_error("--boss", "must be between 1 and the fine grid's " + std::to_string(N) + " steps, got " +
                              std::to_string(K));
  const auto cost = cost_in.to(torch::kCPU, torch::kFloat64).contiguous();
  const double* c = cost.data_ptr<double>();
  const double inf = std::numeric_limits<double>::infinity();
  // D[k][j]: least cost of reaching node j in k steps; arg[k][j] its predecessor.
  std::vector<std::vector<double>> D(K + 1, std::vector<double>(N + 1, inf));
  std::vector<std::vector<int64_t>> arg(K + 1, std::vector<int64_t>(N + 1, -1));
  D[0][0] = 0;
  for (int64_t k = 1; k <= K; ++k)
    for (int64_t j = k; j <= N; ++j)
      for (int64_t i = k - 1; i < j; ++i) {
        const double d = D[k - 1][i] + c[i * (N + 1) + j];
        if (d < D[k][j]) {
          D[k][j] = d;
          arg[k][j] = i;
        }
      }
  std::vector<int64_t> path(K + 1);
  path[K] = N;
  for (int64_t k = K; k >= 1; --k) path[k - 1] = arg[k][path[k]];
  NFKIT_ASSERT(path[0] == 0, "BOSS path does not start at 0");
  return path;
}

std::vector<double> boss_grid(const BossCost& c, int64_t K) {
  std::vector<double> g;
  for (int64_t i : boss_schedule(c.cost, K)) g.push_back(c.times[static_cast<size_t>(i)]);
  g.front() = 0.0;
  g.back() = 1.0;
  return g;
}

}  // namespace nfkit
