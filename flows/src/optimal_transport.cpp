#include "nfkit/flows/optimal_transport.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"

namespace nfkit {

torch::Tensor linear_assignment(const torch::Tensor& cost_in) {
  const char* fn = "linear_assignment";
  check_dim(fn, "cost", cost_in, 2);
  const int64_t n = cost_in.size(0);
  if (cost_in.size(1) != n) usage_error(fn, "cost must be square, got " + shape_string(cost_in));
  check_finite(fn, "cost", cost_in);
  const auto cost = cost_in.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double* a = cost.data_ptr<double>();
  const double inf = std::numeric_limits<double>::infinity();
  // Dual potentials u (rows), v (columns), feasible (a_ij - u_i - v_j >= 0) and tight on the
  // assigned pairs throughout.
  std::vector<double> u(n, 0.0), v(n, 0.0), dist(n);
  std::vector<int64_t> col4row(n, -1), row4col(n, -1), pred(n), remaining(n);
  std::vector<char> row_seen(n), col_seen(n);
  // Column reduction (Jonker & Volgenant): v_j = min_i a_ij, and each column's argmin row is
  // assigned to it when that row is still free.
  for (int64_t j = n - 1; j >= 0; --j) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i)
      if (a[i * n + j] < a[best * n + j]) best = i;
    v[j] = a[best * n + j];
    if (col4row[best] < 0) {
      col4row[best] = j;
      row4col[j] = best;
    }
  }
  // Each free row: Dijkstra on reduced costs to the nearest free column (ties go to free
  // columns), then the dual update and the augmentation along the path (the shortest
  // augmenting path method as Crouse, IEEE TAES 52, 2016, writes it).
  for (int64_t cur = 0; cur < n; ++cur) {
    if (col4row[cur] >= 0) continue;
    int64_t left = n;
    for (int64_t k = 0; k < n; ++k) remaining[k] = n - 1 - k;
    std::fill(row_seen.begin(), row_seen.end(), 0);
    std::fill(col_seen.begin(), col_seen.end(), 0);
    std::fill(dist.begin(), dist.end(), inf);
    double min_val = 0;
    int64_t sink = -1, i = cur;
    while (sink < 0) {
      row_seen[i] = 1;
      const double* row = a + i * n;
      const double ui = u[i];
      int64_t index = -1;
      double lowest = inf;
      for (int64_t k = 0; k < left; ++k) {
        const int64_t j = remaining[k];
        const double r = min_val + row[j] - ui - v[j];
        if (r < dist[j]) {
          pred[j] = i;
          dist[j] = r;
        }
        if (dist[j] < lowest || (dist[j] == lowest && row4col[j] < 0)) {
          lowest = dist[j];
          index = k;
        }
      }
      NFKIT_ASSERT(index >= 0, "no augmenting path in a complete bipartite graph");
      min_val = lowest;
      const int64_t j = remaining[index];
      if (row4col[j] < 0)
        sink = j;
      else
        i = row4col[j];
      col_seen[j] = 1;
      remaining[index] = remaining[--left];
    }
    u[cur] += min_val;
    for (int64_t r = 0; r < n; ++r)
      if (row_seen[r] && r != cur) u[r] += min_val - dist[col4row[r]];
    for (int64_t c = 0; c < n; ++c)
      if (col_seen[c]) v[c] -= min_val - dist[c];
    for (int64_t j = sink;;) {
      const int64_t r = pred[j];
      row4col[j] = r;
      std::swap(col4row[r], j);
      if (r == cur) break;
    }
  }
  auto perm = torch::empty({n}, torch::kInt64);
  std::copy(col4row.begin(), col4row.end(), perm.data_ptr<int64_t>());
  return perm;
}

torch::Tensor squared_distances(const torch::Tensor& x, const torch::Tensor& y) {
  const auto xd = x.detach().to(torch::kCPU, torch::kFloat64);
  const auto yd = y.detach().to(torch::kCPU, torch::kFloat64);
  // Direct differences: exact (no cancellation of ||x||^2 + ||y||^2 - 2 x.y).
  return (xd.unsqueeze(1) - yd.unsqueeze(0)).pow(2).sum(2);
}

double wasserstein2(const torch::Tensor& x, const torch::Tensor& y) {
  const char* fn = "wasserstein2";
  check_dim(fn, "x", x, 2);
  check_dim(fn, "y", y, 2);
  if (x.size(0) != y.size(0) || x.size(1) != y.size(1))
    usage_error(fn, "needs clouds of equal size and dimension, got " + shape_string(x) + " and " + shape_string(y));
  const auto c = squared_distances(x, y);
  const auto perm = linear_assignment(c);
  return std::sqrt(c.gather(1, perm.unsqueeze(1)).mean().item<double>());
}

SinkhornResult sinkhorn_log(const torch::Tensor& cost_in, double reg, int64_t max_iter, double tol) {
  const char* fn = "sinkhorn_log";
  check_dim(fn, "cost", cost_in, 2);
  check_positive(fn, "reg", reg);
  check_finite(fn, "cost", cost_in);
  const auto C = cost_in.detach().to(torch::kCPU, torch::kFloat64);
  const int64_t n = C.size(0), m = C.size(1);
  const double log_a = -std::log(static_cast<double>(n)), log_b = -std::log(static_cast<double>(m));
  auto f = torch::zeros({n}, C.options()), g = torch::zeros({m}, C.options());
  SinkhornResult r;
  // Epsilon scaling (Schmitzer, SIAM J. Sci. Comput. 41, 2019): ten sweeps at each of
  // reg_k = max C / 2^k > reg, warm-starting the potentials, then sweeps at reg until the row
  // marginal is within tol. Without it, small reg needs ~ max C / reg sweeps.
  auto sweep = [&](double e) {
    f = e * (log_a - torch::logsumexp((g.unsqueeze(0) - C) / e, 1));
    g = e * (log_b - torch::logsumexp((f.unsqueeze(1) - C) / e, 0));
  };
  for (double e = C.max().item<double>(); e > reg; e *= 0.5)
    for (int k = 0; k < 10 && r.iterations < max_iter; ++k, ++r.iterations) sweep(e);
  while (r.iterations < max_iter) {
    sweep(reg);
    ++r.iterations;
    if (r.iterations % 10 == 0 || r.iterations == max_iter) {
      const auto P = torch::exp((f.unsqueeze(1) + g.unsqueeze(0) - C) / reg);
      r.marginal_error = (P.sum(1) - std::exp(log_a)).abs().sum().item<double>();
      if (r.marginal_error < tol) {
        r.converged = true;
        break;
      }
    }
  }
  r.plan = torch::exp((f.unsqueeze(1) + g.unsqueeze(0) - C) / reg);
  return r;
}

namespace {
torch::Tensor half_squared_distances(const torch::Tensor& x, const torch::Tensor& y) {
  return 0.5 * (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(2);
}
}  // namespace

EntropicOT entropic_ot(const torch::Tensor& x_in, const torch::Tensor& y_in, double eps, int64_t max_iter,
                       double tol) {
  const char* fn = "entropic_ot";
  check_dim(fn, "x", x_in, 2);
  check_dim(fn, "y", y_in, 2);
  if (x_in.size(1) != y_in.size(1)) usage_error(fn, "x and y need the same dimension, got " + shape_string(x_in) + " and " + shape_string(y_in));
  check_positive(fn, "eps", eps);
  check_positive_int(fn, "max_iter", max_iter);
  torch::NoGradGuard ng;
  const auto x = x_in.detach(), y = y_in.detach().to(x.options());
  check_finite(fn, "x", x);
  check_finite(fn, "y", y);
  const auto C = half_squared_distances(x, y);
  const int64_t n = C.size(0), m = C.size(1);
  const double log_a = -std::log(static_cast<double>(n)), log_b = -std::log(static_cast<double>(m));
  auto f = torch::zeros({n}, C.options()), g = torch::zeros({m}, C.options());
  EntropicOT r;
  // Alternate c-transforms (Sinkhorn in the log domain) with epsilon scaling: two sweeps at
  // each eps_k = max C / 2^k > eps, warm-started (Feydy et al. 2019 anneal with one per
  // stage), then sweeps at eps until the row marginal of the plan
  // a_i b_j exp((f_i + g_j - C_ij) / eps) is within tol.
  auto ctransform_f = [&](double e) { f = -e * torch::logsumexp(log_b + (g.unsqueeze(0) - C) / e, 1); };
  auto ctransform_g = [&](double e) { g = -e * torch::logsumexp(log_a + (f.unsqueeze(1) - C) / e, 0); };
  for (double e = C.max().item<double>(); e > eps; e *= 0.5)
    for (int k = 0; k < 2 && r.iterations < max_iter; ++k, ++r.iterations) {
      ctransform_f(e);
      ctransform_g(e);
    }
  while (r.iterations < max_iter) {
    ctransform_f(eps);
    ctransform_g(eps);
    ++r.iterations;
    if (r.iterations % 10 == 0 || r.iterations == max_iter) {
      const auto rows = torch::exp(log_a + log_b + (f.unsqueeze(1) + g.unsqueeze(0) - C) / eps).sum(1);
      r.marginal_error = (rows - std::exp(log_a)).abs().sum().item<double>();
      if (r.marginal_error < tol) {
        r.converged = true;
        break;
      }
    }
  }
  // The value at the final g, with f its exact c-transform: <a, f> + <b, g> (the dual term
  // <a x b, exp(...) - 1> vanishes once the row marginal holds).
  ctransform_f(eps);
  r.f = f;
  r.g = g;
  r.value = f.mean().item<double>() + g.mean().item<double>();
  return r;
}

double sinkhorn_divergence(const torch::Tensor& x, const torch::Tensor& y, double eps, int64_t max_iter,
                           double tol) {
  return entropic_ot(x, y, eps, max_iter, tol).value - 0.5 * entropic_ot(x, x, eps, max_iter, tol).value -
         0.5 * entropic_ot(y, y, eps, max_iter, tol).value;
}

torch::Tensor barycentric_projection(const EntropicOT& ot, const torch::Tensor& x, const torch::Tensor& y,
                                     double eps) {
  torch::NoGradGuard ng;
  const auto xd = x.detach(), yd = y.detach().to(xd.options());
  // Rows of the plan over a_i: b_j exp((f_i + g_j - C_ij) / eps) = softmax_j((g_j - C_ij) / eps)
  // with f the c-transform of g, so every row sums to 1 exactly.
  const auto w = torch::softmax((ot.g.to(xd.options()).unsqueeze(0) - half_squared_distances(xd, yd)) / eps, 1);
  return torch::matmul(w, yd);
}

torch::Tensor sinkhorn_velocity(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& s,
                                double eps, int64_t max_iter, double tol) {
  const auto to_y = barycentric_projection(entropic_ot(x, y, eps, max_iter, tol), x, y, eps);
  const auto to_s = barycentric_projection(entropic_ot(x, s, eps, max_iter, tol), x, s, eps);
  return to_y - to_s;
}

std::pair<torch::Tensor, torch::Tensor> sample_plan(const torch::Tensor& plan, int64_t count) {
  const char* fn = "sample_plan";
  check_dim(fn, "plan", plan, 2);
  check_positive_int(fn, "count", count);
  const int64_t m = plan.size(1);
  const auto p = plan.detach().to(torch::kFloat64).reshape({-1});
  const auto idx = torch::multinomial(p / p.sum(), count, /*replacement=*/true);
  return {torch::div(idx, m, "floor"), torch::remainder(idx, m)};
}

}  // namespace nfkit
