#include "nfkit/flows/boss.h"

#include <torch/torch.h>

#include <limits>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"

namespace nfkit {

std::vector<torch::Tensor> boss_reference(ContinuousFlow& cnf, const torch::Tensor& z0, int64_t fine_steps,
                                          const torch::Tensor& context) {
  check_positive_int("boss", "fine_steps", fine_steps);
  torch::NoGradGuard ng;
  const auto rk4 = OdeOptions().method(OdeMethod::kRK4).steps(1);
  const auto ctx = context.defined() ? context.to(cnf.tensor_options()) : context;
  std::vector<torch::Tensor> x{z0.to(cnf.tensor_options())};
  for (int64_t i = 0; i < fine_steps; ++i)
    x.push_back(cnf.transport(x.back(), static_cast<double>(i) / fine_steps, static_cast<double>(i + 1) / fine_steps,
                              rk4, ctx));
  return x;
}

BossCost boss_cost(ContinuousFlow& cnf, const torch::Tensor& z0, int64_t fine_steps,
                   const torch::Tensor& context) {
  const auto x = boss_reference(cnf, z0, fine_steps, context);
  torch::NoGradGuard ng;
  const int64_t N = fine_steps;
  BossCost out;
  std::vector<torch::Tensor> v;
  for (int64_t i = 0; i <= N; ++i) out.times.push_back(static_cast<double>(i) / N);
  const auto ctx = context.defined() ? context.to(cnf.tensor_options()) : context;
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

torch::Tensor boss_straightening_pairs(ContinuousFlow& cnf, const torch::Tensor& z0, int64_t fine_steps,
                                       const std::vector<int64_t>& schedule, const torch::Tensor& context) {
  const char* fn = "boss_straightening_pairs";
  check_dim(fn, "z0", z0, 2);
  check_size(fn, "z0", z0, 1, cnf.dim());
  if (schedule.size() < 2 || schedule.front() != 0 || schedule.back() != fine_steps)
    usage_error(fn, "the schedule must run from 0 to the fine grid's " + std::to_string(fine_steps) + " steps");
  for (size_t k = 1; k < schedule.size(); ++k)
    if (schedule[k] <= schedule[k - 1]) usage_error(fn, "the schedule must increase");
  const auto x = boss_reference(cnf, z0, fine_steps, context);
  const int64_t n = z0.size(0), K = static_cast<int64_t>(schedule.size()) - 1;
  std::vector<torch::Tensor> steps;  // [n, 2 D + 2] per step k
  for (int64_t k = 0; k < K; ++k) {
    const auto a = x[static_cast<size_t>(schedule[k])], b = x[static_cast<size_t>(schedule[k + 1])];
    const double ta = static_cast<double>(schedule[k]) / fine_steps, tb = static_cast<double>(schedule[k + 1]) / fine_steps;
    steps.push_back(torch::cat({a, b, torch::full({n, 1}, ta, a.options()), torch::full({n, 1}, tb, a.options())}, 1));
  }
  // [K, n, W] -> sample major [n K, W]
  return torch::stack(steps, 0).transpose(0, 1).reshape({n * K, -1}).contiguous();
}

torch::Tensor boss_straightening_loss(VelocityField& v, const torch::Tensor& rows, const torch::Tensor& context) {
  const char* fn = "boss_straightening_loss";
  check_dim(fn, "rows", rows, 2);
  const int64_t D = v.dim();
  check_size(fn, "rows", rows, 1, 2 * D + 2);
  const auto xa = rows.narrow(1, 0, D), xb = rows.narrow(1, D, D);
  const auto ta = rows.select(1, 2 * D), tb = rows.select(1, 2 * D + 1);
  const auto target = (xb - xa) / (tb - ta).unsqueeze(1);
  return (v.forward(ta, xa, context) - target).pow(2).mean();
}

}  // namespace nfkit
