#include "nfkit/flows/optimal_transport.h"

#include <torch/torch.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

// LEMON's templates only: nothing of its library is linked, and no LEMON header reaches
// nfkit's public headers.
// GCC 12 sees a maybe-uninitialised value inside SmartDigraph's node vector (LEMON 1.3.1's
// Invalid-initialised handles); the warning is about the library's code, not ours.
#define LEMON_ONLY_TEMPLATES
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <lemon/network_simplex.h>
#include <lemon/smart_graph.h>
#pragma GCC diagnostic pop

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

PairCost squared_distance_cost(const torch::Tensor& x_in, const torch::Tensor& y_in, double period) {
  const char* fn = "squared_distance_cost";
  check_dim(fn, "x", x_in, 2);
  check_dim(fn, "y", y_in, 2);
  if (x_in.size(1) != y_in.size(1))
    usage_error(fn, "needs points of one dimension, got " + shape_string(x_in) + " and " + shape_string(y_in));
  check_finite(fn, "x", x_in);
  check_finite(fn, "y", y_in);
  if (!(period >= 0) || !std::isfinite(period)) usage_error(fn, "period must be >= 0 (0: not periodic)");
  auto x = x_in.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  auto y = y_in.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const int64_t D = x.size(1);
  if (period > 0) {
    // Coordinates in [0, period): then |x - y| < period and the wrapped distance is
    // min(|x - y|, period - |x - y|).
    x = torch::remainder(x, period).contiguous();
    y = torch::remainder(y, period).contiguous();
    return [x, y, D, period](int64_t i, int64_t j0, int64_t j1, double* out) {
      const double* xi = x.data_ptr<double>() + i * D;
      const double* yj = y.data_ptr<double>() + j0 * D;
      for (int64_t j = j0; j < j1; ++j, yj += D) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) {
          const double t = std::abs(xi[d] - yj[d]);
          const double w = std::min(t, period - t);
          s += w * w;
        }
        out[j - j0] = s;
      }
    };
  }
  return [x, y, D](int64_t i, int64_t j0, int64_t j1, double* out) {
    const double* xi = x.data_ptr<double>() + i * D;
    const double* yj = y.data_ptr<double>() + j0 * D;
    for (int64_t j = j0; j < j1; ++j, yj += D) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double t = xi[d] - yj[d];
        s += t * t;
      }
      out[j - j0] = s;
    }
  };
}

namespace {

// A candidate pair (row, column) of the sparse problem.
struct Candidate {
  int64_t i, j;
  bool operator<(const Candidate& o) const { return i != o.i ? i < o.i : j < o.j; }
  bool operator==(const Candidate& o) const { return i == o.i && j == o.j; }
};

// A certified optimum: the plan on its support and duals u (rows), v (columns) in cost units
// with C_ij - u_i - v_j >= 0 for every pair (up to the integer rounding).
struct Certified {
  std::vector<Candidate> support;
  std::vector<int64_t> flow;  // > 0, in units of g / (n m) of mass
  std::vector<double> u, v;
  int64_t rounds = 0, arcs = 0;
};

using Lemon = lemon::NetworkSimplex<lemon::SmartDigraph, int64_t, int64_t>;

int64_t grain_for(int64_t m) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, m / 256)); }

// Problems up to this many pairs start from each row's nearest columns; larger ones from a
// certified solve on a quarter of the rows and columns, whose duals (extended to all points by
// c-transforms) rank each row's candidate columns by reduced cost: the pairs of the
// long-range moves (mass between basins) enter the first solve instead of dozens of rounds.
constexpr int64_t kDirectPairs = int64_t{1} << 20;

Certified certify(int64_t n, int64_t m, const PairCost& cost, const ExactTransportOptions& o, double scale,
                  uint64_t seed) {
  const char* fn = "exact_transport";
  const int64_t grain = grain_for(m);
  auto to_int = [scale](double c) { return static_cast<int64_t>(c * scale + 0.5); };  // c >= 0
  const int64_t k0 = std::min(o.neighbours(), m);
  // Row-side "dual" v for ranking candidates: 0 (nearest columns) or the extended duals of a
  // subsample's certified optimum.
  std::vector<double> v_rank(static_cast<size_t>(m), 0.0);
  if (n * m > kDirectPairs && n >= 8 && m >= 8) {
    std::mt19937_64 rng(seed);
    auto subset = [&rng](int64_t total) {
      std::vector<int64_t> all(static_cast<size_t>(total));
      std::iota(all.begin(), all.end(), int64_t{0});
      std::shuffle(all.begin(), all.end(), rng);
      all.resize(static_cast<size_t>((total + 3) / 4));
      std::sort(all.begin(), all.end());
      return all;
    };
    const auto S = subset(n), T = subset(m);
    const PairCost sub_cost = [&](int64_t i, int64_t j0, int64_t j1, double* out) {
      if (j1 - j0 <= 64) {  // a few pairs (the candidates' costs): one at a time
        for (int64_t j = j0; j < j1; ++j) cost(S[i], T[j], T[j] + 1, out + (j - j0));
        return;
      }
      std::vector<double> row(static_cast<size_t>(m));  // per call: the levels nest
      cost(S[i], 0, m, row.data());
      for (int64_t j = j0; j < j1; ++j) out[j - j0] = row[T[j]];
    };
    const auto sub = certify(static_cast<int64_t>(S.size()), static_cast<int64_t>(T.size()), sub_cost, o, scale,
                             seed * 6364136223846793005ULL + 1442695040888963407ULL);
    // c-transform onto every column: v_j = min_s C(S_s, j) - u_s (order-free minimum, so
    // the threads' partial results merge to the same numbers).
    const int64_t threads = at::get_num_threads();
    std::vector<std::vector<double>> partial(static_cast<size_t>(threads),
                                             std::vector<double>(static_cast<size_t>(m), std::numeric_limits<double>::infinity()));
    at::parallel_for(0, static_cast<int64_t>(S.size()), grain, [&](int64_t begin, int64_t end) {
      auto& best = partial[static_cast<size_t>(at::get_thread_num())];
      std::vector<double> c(static_cast<size_t>(m));
      for (int64_t s = begin; s < end; ++s) {
        cost(S[s], 0, m, c.data());
        for (int64_t j = 0; j < m; ++j) best[j] = std::min(best[j], c[j] - sub.u[s]);
      }
    });
    for (int64_t j = 0; j < m; ++j) {
      double b = std::numeric_limits<double>::infinity();
      for (const auto& p : partial) b = std::min(b, p[j]);
      v_rank[j] = b;
    }
  }
  // Each row's k0 columns of least C_ij - v_j, and u_i = min_j C_ij - v_j (the c-transform).
  std::vector<Candidate> cand(static_cast<size_t>(n * k0));
  std::vector<double> u_rank(static_cast<size_t>(n)), row_hi(static_cast<size_t>(n));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> c(static_cast<size_t>(m));
    std::vector<int64_t> idx(static_cast<size_t>(m));
    for (int64_t i = begin; i < end; ++i) {
      cost(i, 0, m, c.data());
      row_hi[i] = *std::max_element(c.begin(), c.end());
      for (int64_t j = 0; j < m; ++j) c[j] -= v_rank[j];
      std::iota(idx.begin(), idx.end(), int64_t{0});
      std::partial_sort(idx.begin(), idx.begin() + k0, idx.end(),
                        [&](int64_t a, int64_t b) { return c[a] != c[b] ? c[a] < c[b] : a < b; });
      for (int64_t k = 0; k < k0; ++k) cand[i * k0 + k] = {i, idx[k]};
      u_rank[i] = c[idx[0]];
    }
  });
  // Each column's k0 rows of least C_ij - u_i - v_j: a column nobody ranks near (a sparse
  // region of the columns' cloud) still gets candidates. Each thread keeps the best rows of
  // its row range per column; the merge orders by (reduced cost, row), so the result does not
  // depend on how the rows were split.
  {
    const int64_t kc = std::min(o.neighbours(), n);
    using Entry = std::pair<double, int64_t>;
    const int64_t threads = at::get_num_threads();
    std::vector<std::vector<std::vector<Entry>>> best(static_cast<size_t>(threads),
                                                     std::vector<std::vector<Entry>>(static_cast<size_t>(m)));
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      auto& mine = best[static_cast<size_t>(at::get_thread_num())];
      std::vector<double> c(static_cast<size_t>(m));
      for (int64_t i = begin; i < end; ++i) {
        cost(i, 0, m, c.data());
        for (int64_t j = 0; j < m; ++j) {
          const Entry e{c[j] - u_rank[i] - v_rank[j], i};
          auto& h = mine[j];
          if (static_cast<int64_t>(h.size()) < kc) {
            h.push_back(e);
            std::push_heap(h.begin(), h.end());
          } else if (e < h.front()) {
            std::pop_heap(h.begin(), h.end());
            h.back() = e;
            std::push_heap(h.begin(), h.end());
          }
        }
      }
    });
    std::vector<Entry> merged;
    for (int64_t j = 0; j < m; ++j) {
      merged.clear();
      for (const auto& t : best) merged.insert(merged.end(), t[j].begin(), t[j].end());
      std::partial_sort(merged.begin(), merged.begin() + kc, merged.end());
      for (int64_t k = 0; k < kc; ++k) cand.push_back({merged[k].second, j});
    }
  }
  // Supplies: m / g per row, n / g per column, so a unit of flow is g / (n m) of mass.
  const int64_t g = std::gcd(n, m), row_supply = m / g, col_demand = n / g;
  Certified r;
  std::vector<int64_t> pi_row(static_cast<size_t>(n)), pi_col(static_cast<size_t>(m)), flow;
  for (;;) {
    std::sort(cand.begin(), cand.end());
    cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
    if (r.rounds == o.max_rounds())
      runtime_error(fn, "no certified optimum after " + std::to_string(o.max_rounds()) + " rounds (" +
                            std::to_string(cand.size()) + " candidate pairs)");
    ++r.rounds;
    // The sparse problem: rows are nodes 0..n-1, columns n..n+m-1, and a hub n+m that any row
    // may ship to any column through at more than the row's largest cost: the problem is
    // always feasible, and a shipment through the hub leaves a pair with negative reduced
    // cost, so a certified plan never uses it.
    lemon::SmartDigraph graph;
    graph.reserveNode(static_cast<int>(n + m + 1));
    graph.reserveArc(static_cast<int>(cand.size() + n + m));
    std::vector<lemon::SmartDigraph::Node> nodes(static_cast<size_t>(n + m + 1));
    for (auto& v : nodes) v = graph.addNode();
    lemon::SmartDigraph::ArcMap<int64_t> arc_cost(graph);
    lemon::SmartDigraph::NodeMap<int64_t> supply(graph);
    for (int64_t i = 0; i < n; ++i) supply[nodes[i]] = row_supply;
    for (int64_t j = 0; j < m; ++j) supply[nodes[n + j]] = -col_demand;
    supply[nodes[n + m]] = 0;
    std::vector<lemon::SmartDigraph::Arc> arcs(cand.size());
    std::vector<int64_t> cand_cost(cand.size());
    at::parallel_for(0, static_cast<int64_t>(cand.size()), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t a = begin; a < end; ++a) {
        double c;
        cost(cand[a].i, cand[a].j, cand[a].j + 1, &c);
        cand_cost[a] = to_int(c);
      }
    });
    for (size_t a = 0; a < cand.size(); ++a) {
      arcs[a] = graph.addArc(nodes[cand[a].i], nodes[n + cand[a].j]);
      arc_cost[arcs[a]] = cand_cost[a];
    }
    std::vector<lemon::SmartDigraph::Arc> to_hub(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      to_hub[i] = graph.addArc(nodes[i], nodes[n + m]);
      arc_cost[to_hub[i]] = to_int(row_hi[i]) + 1;
    }
    for (int64_t j = 0; j < m; ++j) arc_cost[graph.addArc(nodes[n + m], nodes[n + j])] = 0;
    Lemon simplex(graph);
    simplex.costMap(arc_cost).supplyMap(supply);
    if (simplex.run() != Lemon::OPTIMAL) runtime_error(fn, "the network simplex found no optimal plan on the candidate pairs");
    for (int64_t i = 0; i < n; ++i) pi_row[i] = simplex.potential(nodes[i]);
    for (int64_t j = 0; j < m; ++j) pi_col[j] = simplex.potential(nodes[n + j]);
    flow.resize(cand.size());
    for (size_t a = 0; a < cand.size(); ++a) flow[a] = simplex.flow(arcs[a]);
    r.arcs = static_cast<int64_t>(cand.size());
    // Certificate: every pair's reduced cost C_ij + pi_i - pi_j must be >= 0 (LEMON's sign
    // convention); each row's most negative ones join the candidates.
    const int64_t add = std::min(o.additions(), m);
    std::vector<std::vector<int64_t>> violators(static_cast<size_t>(n));
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      std::vector<double> c(static_cast<size_t>(m));
      std::vector<std::pair<int64_t, int64_t>> neg;
      for (int64_t i = begin; i < end; ++i) {
        cost(i, 0, m, c.data());
        neg.clear();
        for (int64_t j = 0; j < m; ++j) {
          const int64_t rc = to_int(c[j]) + pi_row[i] - pi_col[j];
          if (rc < 0) neg.emplace_back(rc, j);
        }
        if (neg.empty()) continue;
        const size_t keep = std::min<size_t>(neg.size(), static_cast<size_t>(add));
        std::partial_sort(neg.begin(), neg.begin() + static_cast<std::ptrdiff_t>(keep), neg.end());
        for (size_t t = 0; t < keep; ++t) violators[i].push_back(neg[t].second);
      }
    });
    bool certified = true;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j : violators[i]) {
        cand.push_back({i, j});
        certified = false;
      }
    if (certified) {
      for (int64_t i = 0; i < n; ++i) NFKIT_ASSERT(simplex.flow(to_hub[i]) == 0, "a certified plan ships through the hub");
      break;
    }
  }
  for (size_t a = 0; a < cand.size(); ++a)
    if (flow[a] > 0) {
      r.support.push_back(cand[a]);
      r.flow.push_back(flow[a]);
    }
  r.u.resize(static_cast<size_t>(n));
  r.v.resize(static_cast<size_t>(m));
  for (int64_t i = 0; i < n; ++i) r.u[i] = -static_cast<double>(pi_row[i]) / scale;
  for (int64_t j = 0; j < m; ++j) r.v[j] = static_cast<double>(pi_col[j]) / scale;
  return r;
}

}  // namespace

ExactTransport exact_transport(int64_t n, int64_t m, const PairCost& cost, const ExactTransportOptions& o) {
  const char* fn = "exact_transport";
  if (n < 1 || m < 1) usage_error(fn, "needs at least one row and one column, got " + std::to_string(n) + " x " + std::to_string(m));
  // Integer costs in units of max C / 2^36 (LEMON's network simplex needs integer data; its
  // artificial cost (max + 1)(n + m) and the potentials stay far below 2^63 for n + m < 2^24).
  if (n + m >= (int64_t{1} << 24)) usage_error(fn, "needs n + m < 2^24, got " + std::to_string(n + m));
  check_positive_int(fn, "neighbours", o.neighbours());
  check_positive_int(fn, "additions", o.additions());
  check_positive_int(fn, "max_rounds", o.max_rounds());
  // The largest cost (for the integer scale); every cost must be finite and >= 0.
  std::vector<double> row_max(static_cast<size_t>(n));
  std::vector<int64_t> bad(static_cast<size_t>(n), -1);
  at::parallel_for(0, n, grain_for(m), [&](int64_t begin, int64_t end) {
    std::vector<double> c(static_cast<size_t>(m));
    for (int64_t i = begin; i < end; ++i) {
      cost(i, 0, m, c.data());
      double mx = 0;
      for (int64_t j = 0; j < m; ++j) {
        if (!(c[j] >= 0) || !std::isfinite(c[j])) {
          bad[i] = j;
          break;
        }
        mx = std::max(mx, c[j]);
      }
      row_max[i] = mx;
    }
  });
  for (int64_t i = 0; i < n; ++i)
    if (bad[i] >= 0)
      usage_error(fn, "cost(" + std::to_string(i) + ", " + std::to_string(bad[i]) + ") must be finite and >= 0");
  const double max_cost = *std::max_element(row_max.begin(), row_max.end());
  const double scale = max_cost > 0 ? std::ldexp(1.0, 36) / max_cost : 1.0;
  const auto sol = certify(n, m, cost, o, scale, 0x5eed);
  // The plan and its cost from the unrounded costs.
  const int64_t g = std::gcd(n, m);
  const double unit = static_cast<double>(g) / (static_cast<double>(n) * static_cast<double>(m));
  const auto s = static_cast<int64_t>(sol.support.size());
  ExactTransport r;
  r.rounds = sol.rounds;
  r.arcs = sol.arcs;
  r.rows = torch::empty({s}, torch::kInt64);
  r.cols = torch::empty({s}, torch::kInt64);
  r.mass = torch::empty({s}, torch::kFloat64);
  auto* pr = r.rows.data_ptr<int64_t>();
  auto* pc = r.cols.data_ptr<int64_t>();
  auto* pm = r.mass.data_ptr<double>();
  double total = 0;
  for (int64_t a = 0; a < s; ++a) {
    double c;
    cost(sol.support[a].i, sol.support[a].j, sol.support[a].j + 1, &c);
    pr[a] = sol.support[a].i;
    pc[a] = sol.support[a].j;
    pm[a] = static_cast<double>(sol.flow[a]) * unit;
    total += pm[a] * c;
  }
  r.cost = total;
  return r;
}

double wasserstein2(const torch::Tensor& x, const torch::Tensor& y, double period) {
  const char* fn = "wasserstein2";
  check_dim(fn, "x", x, 2);
  check_dim(fn, "y", y, 2);
  if (x.size(1) != y.size(1))
    usage_error(fn, "needs clouds of one dimension, got " + shape_string(x) + " and " + shape_string(y));
  if (x.size(0) == 0 || y.size(0) == 0) usage_error(fn, "needs non-empty clouds, got " + shape_string(x) + " and " + shape_string(y));
  const auto plan = exact_transport(x.size(0), y.size(0), squared_distance_cost(x, y, period));
  return std::sqrt(plan.cost);
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
