#include "nfkit/physics/internal_coordinates.h"

#include <algorithm>
#include <deque>
#include <map>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/physics/molecule.h"

namespace nfkit {

nlohmann::json ZMatrix::to_json() const {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : rows) j.push_back({r[0], r[1], r[2], r[3]});
  return j;
}

ZMatrix ZMatrix::from_json(const nlohmann::json& j) {
  if (!j.is_array()) usage_error("ZMatrix", "zmatrix must be an array of [i, j, k, l] rows");
  ZMatrix z;
  for (const auto& r : j) {
    if (!r.is_array() || r.size() != 4)
      usage_error("ZMatrix", "each zmatrix row must be [i, j, k, l]");
    z.rows.push_back({r[0].get<int64_t>(), r[1].get<int64_t>(), r[2].get<int64_t>(),
                      r[3].get<int64_t>()});
  }
  z.validate();
  return z;
}

void ZMatrix::validate() const {
  const int64_t n = atoms();
  if (n < 3) usage_error("ZMatrix", "needs at least 3 atoms, has " + std::to_string(n));
  std::vector<int64_t> placed_at(n, -1);
  for (int64_t r = 0; r < n; ++r) {
    const auto& row = rows[r];
    const std::string where = "row " + std::to_string(r);
    if (row[0] < 0 || row[0] >= n || placed_at[row[0]] >= 0)
      usage_error("ZMatrix", where + ": atom " + std::to_string(row[0]) +
                                 " is out of range or placed twice");
    const int refs = r == 0 ? 0 : (r == 1 ? 1 : (r == 2 ? 2 : 3));
    for (int c = 1; c <= 3; ++c) {
      const int64_t a = row[c];
      if (c > refs) {
        if (a != -1) usage_error("ZMatrix", where + ": column " + std::to_string(c) + " must be -1");
        continue;
      }
      if (a < 0 || a >= n || placed_at[a] < 0)
        usage_error("ZMatrix", where + ": reference atom " + std::to_string(a) +
                                   " is not placed before atom " + std::to_string(row[0]));
      for (int c2 = 0; c2 < c; ++c2)
        if (row[c2] == a) usage_error("ZMatrix", where + ": atoms repeat");
    }
    placed_at[row[0]] = r;
  }
  if (!((rows[2][1] == rows[0][0] && rows[2][2] == rows[1][0]) ||
        (rows[2][1] == rows[1][0] && rows[2][2] == rows[0][0])))
    usage_error("ZMatrix", "row 2 must reference the first two atoms");
}

ZMatrix zmatrix_from_bonds(int64_t n, const std::vector<std::pair<int64_t, int64_t>>& bonds,
                           const std::vector<bool>& heavy_in, int64_t root) {
  if (n < 3) usage_error("zmatrix_from_bonds", "needs at least 3 atoms");
  std::vector<bool> heavy = heavy_in.empty() ? std::vector<bool>(n, true) : heavy_in;
  std::vector<std::vector<int64_t>> adj(n);
  for (const auto& [a, b] : bonds) {
    if (a < 0 || b < 0 || a >= n || b >= n || a == b)
      usage_error("zmatrix_from_bonds", "bond (" + std::to_string(a) + ", " +
                                            std::to_string(b) + ") is out of range");
    adj[a].push_back(b);
    adj[b].push_back(a);
  }
  auto heavy_degree = [&](int64_t a) {
    return std::count_if(adj[a].begin(), adj[a].end(), [&](int64_t b) { return heavy[b]; });
  };
  for (auto& nb : adj)
    std::sort(nb.begin(), nb.end(), [&](int64_t a, int64_t b) {
      if (heavy[a] != heavy[b]) return static_cast<bool>(heavy[a]);
      return a < b;
    });
  if (root < 0) {
    int64_t best = -1;
    for (int64_t a = 0; a < n; ++a)
      if (heavy[a] && (best < 0 || heavy_degree(a) > heavy_degree(best))) best = a;
    root = best < 0 ? 0 : best;
  }
  if (adj[root].size() < 1) usage_error("zmatrix_from_bonds", "the root atom has no bonds");
  std::vector<int64_t> parent(n, -2), order;
  std::deque<int64_t> queue{root};
  parent[root] = -1;
  while (!queue.empty()) {
    const int64_t a = queue.front();
    queue.pop_front();
    order.push_back(a);
    for (int64_t b : adj[a])
      if (parent[b] == -2) {
        parent[b] = a;
        queue.push_back(b);
      }
  }
  if (static_cast<int64_t>(order.size()) != n)
    usage_error("zmatrix_from_bonds", "the bond graph is not connected (" +
                                          std::to_string(order.size()) + " of " +
                                          std::to_string(n) + " atoms reachable)");
  std::vector<bool> placed(n, false);
  ZMatrix z;
  auto pick = [&](const std::vector<int64_t>& from, std::initializer_list<int64_t> exclude) {
    for (int64_t c : from)
      if (placed[c] && std::find(exclude.begin(), exclude.end(), c) == exclude.end()) return c;
    return int64_t{-1};
  };
  for (int64_t idx = 0; idx < n; ++idx) {
    const int64_t i = order[idx];
    std::array<int64_t, 4> row{i, -1, -1, -1};
    if (idx >= 1) row[1] = parent[i];
    if (idx == 2) row[2] = row[1] == order[0] ? order[1] : order[0];
    if (idx >= 3) {
      const int64_t j = row[1];
      int64_t k = parent[j] >= 0 ? parent[j] : pick(adj[j], {i});
      // A sibling already placed on j (e.g. the first hydrogen of a methyl group) is the
      // torsion reference: the torsion is then the nearly constant offset (about +-120 deg)
      // from that sibling rather than a copy of the rotor angle, which decorrelates the
      // internal coordinates (as bgflow's Z-matrices for peptides do).
      int64_t l = -1;
      for (int64_t c : adj[j])
        if (placed[c] && c != i && c != k && parent[c] == j) {
          l = c;
          break;
        }
      if (l < 0) l = pick(adj[k], {i, j});
      if (l < 0) l = pick(adj[j], {i, k});
      if (k < 0 || l < 0)
        usage_error("zmatrix_from_bonds", "cannot find torsion references for atom " +
                                              std::to_string(i) + " (a chain of 3 atoms?)");
      row[2] = k;
      row[3] = l;
    }
    z.rows.push_back(row);
    placed[i] = true;
  }
  z.validate();
  return z;
}

namespace {

torch::Tensor norm3(const torch::Tensor& v) { return torch::linalg_norm(v, 2, {-1}); }
torch::Tensor unit(const torch::Tensor& v) { return v / norm3(v).unsqueeze(-1); }

torch::Tensor index_tensor(const std::vector<int64_t>& v) {
  return torch::tensor(v, torch::TensorOptions().dtype(torch::kInt64));
}

struct Layout {
  int64_t a0, a1, a2, j2, k2;
  std::vector<int64_t> I, J, K, L;  // full rows
};

Layout layout(const ZMatrix& z) {
  Layout o;
  o.a0 = z.rows[0][0];
  o.a1 = z.rows[1][0];
  o.a2 = z.rows[2][0];
  o.j2 = z.rows[2][1];
  o.k2 = z.rows[2][2];
  for (size_t r = 3; r < z.rows.size(); ++r) {
    o.I.push_back(z.rows[r][0]);
    o.J.push_back(z.rows[r][1]);
    o.K.push_back(z.rows[r][2]);
    o.L.push_back(z.rows[r][3]);
  }
  return o;
}

// Reference frame of the orientation (alpha, beta): u = R e_z, v = R e_x, w = R e_y with
// R = Rz(alpha) Ry(beta); each [B, 3].
std::array<torch::Tensor, 3> frame(const torch::Tensor& alpha, const torch::Tensor& beta) {
  const auto ca = torch::cos(alpha), sa = torch::sin(alpha);
  const auto cb = torch::cos(beta), sb = torch::sin(beta);
  const auto u = torch::stack({ca * sb, sa * sb, cb}, -1);
  const auto v = torch::stack({ca * cb, sa * cb, -sb}, -1);
  const auto w = torch::stack({-sa, ca, torch::zeros_like(ca)}, -1);
  return {u, v, w};
}

}  // namespace

InternalResult to_internal(const ZMatrix& z, const torch::Tensor& x, bool with_globals) {
  check_dim("to_internal", "x", x, 2);
  const int64_t n = z.atoms();
  check_size("to_internal", "x", x, 1, 3 * n);
  const auto X = x.reshape({x.size(0), n, 3});
  const auto lo = layout(z);
  const auto p0 = X.select(1, lo.a0), p1 = X.select(1, lo.a1), p2 = X.select(1, lo.a2);
  const auto e1 = p1 - p0;
  const auto b1 = norm3(e1);
  const auto beta = torch::atan2(norm3(e1.slice(-1, 0, 2)), e1.select(-1, 2));
  const auto alpha = torch::atan2(e1.select(-1, 1), e1.select(-1, 0));
  const auto d2 = p2 - X.select(1, lo.j2);
  const auto b2 = norm3(d2);
  const auto th2 = bond_angle(p2, X.select(1, lo.j2), X.select(1, lo.k2));
  const auto fr = frame(alpha, beta);
  const auto gamma = torch::atan2((d2 * fr[2]).sum(-1), (d2 * fr[1]).sum(-1));

  auto dev = [&](const std::vector<int64_t>& v) { return index_tensor(v).to(x.device()); };
  const auto Pi = X.index_select(1, dev(lo.I)), Pj = X.index_select(1, dev(lo.J));
  const auto Pk = X.index_select(1, dev(lo.K)), Pl = X.index_select(1, dev(lo.L));
  const auto b = norm3(Pi - Pj);
  const auto th = bond_angle(Pi, Pj, Pk);
  const auto phi = dihedral(Pi, Pj, Pk, Pl);

  const auto bonds = torch::cat({b1.unsqueeze(1), b2.unsqueeze(1), b}, 1);
  const auto angles = torch::cat({th2.unsqueeze(1), th}, 1);
  auto logdet = -(2.0 * torch::log(bonds).sum(1) + torch::log(torch::sin(angles)).sum(1));
  InternalResult out;
  if (with_globals) {
    out.q = torch::cat({p0, alpha.unsqueeze(1), beta.unsqueeze(1), gamma.unsqueeze(1), bonds,
                        angles, phi},
                       1);
    out.logdet = logdet - torch::log(torch::sin(beta));
  } else {
    out.q = torch::cat({bonds, angles, phi}, 1);
    out.logdet = logdet;
  }
  return out;
}

CartesianResult from_internal(const ZMatrix& z, const torch::Tensor& q) {
  check_dim("from_internal", "q", q, 2);
  const int64_t n = z.atoms();
  const bool globals = q.size(1) == 3 * n;
  if (!globals && q.size(1) != 3 * n - 6)
    usage_error("from_internal", "q has " + std::to_string(q.size(1)) +
                                     " coordinates, expected " + std::to_string(3 * n) +
                                     " (with globals) or " + std::to_string(3 * n - 6));
  const int64_t B = q.size(0);
  const auto opts = q.options();
  torch::Tensor t, alpha, beta, gamma, rest;
  if (globals) {
    t = q.slice(1, 0, 3);
    alpha = q.select(1, 3);
    beta = q.select(1, 4);
    gamma = q.select(1, 5);
    rest = q.slice(1, 6);
  } else {
    t = torch::zeros({B, 3}, opts);
    alpha = torch::zeros({B}, opts);
    beta = torch::zeros({B}, opts);
    gamma = torch::zeros({B}, opts);
    rest = q;
  }
  const auto bonds = rest.slice(1, 0, n - 1);
  const auto angles = rest.slice(1, n - 1, 2 * n - 3);
  const auto torsions = rest.slice(1, 2 * n - 3, 3 * n - 6);
  const auto lo = layout(z);
  std::vector<torch::Tensor> pos(n);
  const auto fr = frame(alpha, beta);
  pos[lo.a0] = t;
  pos[lo.a1] = t + bonds.select(1, 0).unsqueeze(1) * fr[0];
  {
    const auto a = unit(pos[lo.k2] - pos[lo.j2]);
    const auto b2 = bonds.select(1, 1).unsqueeze(1);
    const auto th = angles.select(1, 0).unsqueeze(1);
    const auto g = gamma.unsqueeze(1);
    pos[lo.a2] = pos[lo.j2] + b2 * (torch::cos(th) * a +
                                    torch::sin(th) * (torch::cos(g) * fr[1] + torch::sin(g) * fr[2]));
  }
  // Full rows by level: all rows whose references are placed are placed together.
  std::vector<int64_t> level(n, -1);
  level[lo.a0] = 0;
  level[lo.a1] = 1;
  level[lo.a2] = 2;
  const int64_t M = static_cast<int64_t>(lo.I.size());
  std::map<int64_t, std::vector<int64_t>> by_level;
  for (int64_t r = 0; r < M; ++r) {
    const int64_t lv = 1 + std::max({level[lo.J[r]], level[lo.K[r]], level[lo.L[r]]});
    level[lo.I[r]] = lv;
    by_level[lv].push_back(r);
  }
  for (const auto& [lv, rs] : by_level) {
    std::vector<torch::Tensor> pj, pk, pl;
    for (int64_t r : rs) {
      pj.push_back(pos[lo.J[r]]);
      pk.push_back(pos[lo.K[r]]);
      pl.push_back(pos[lo.L[r]]);
    }
    const auto Pj = torch::stack(pj, 1), Pk = torch::stack(pk, 1), Pl = torch::stack(pl, 1);
    std::vector<int64_t> cols(rs.begin(), rs.end());
    const auto ci = index_tensor(cols).to(q.device());
    const auto b = bonds.slice(1, 2).index_select(1, ci).unsqueeze(2);
    const auto th = angles.slice(1, 1).index_select(1, ci).unsqueeze(2);
    const auto ph = torsions.index_select(1, ci).unsqueeze(2);
    const auto a = unit(Pk - Pj);
    const auto m = Pl - Pk;
    const auto e = unit(m - (m * a).sum(-1, true) * a);
    const auto f = torch::linalg_cross(a, e, -1);
    const auto Pi = Pj + b * (torch::cos(th) * a +
                              torch::sin(th) * (torch::cos(ph) * e - torch::sin(ph) * f));
    for (size_t c = 0; c < rs.size(); ++c) pos[lo.I[rs[c]]] = Pi.select(1, static_cast<int64_t>(c));
  }
  CartesianResult out;
  out.x = torch::stack(pos, 1).reshape({B, 3 * n});
  out.logdet = 2.0 * torch::log(bonds).sum(1) + torch::log(torch::sin(angles)).sum(1);
  if (globals) out.logdet = out.logdet + torch::log(torch::sin(beta));
  return out;
}

}  // namespace nfkit
