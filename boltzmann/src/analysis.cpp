#include "nfkit/boltzmann/analysis.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/core/runtime.h"

namespace nfkit {

BackboneDihedrals backbone_dihedrals(const Molecule& mol) {
  if (mol.size() == 0) usage_error("backbone_dihedrals", "empty molecule");
  // Residues in order of appearance.
  std::vector<std::string> residues;
  std::vector<int64_t> seqs;
  for (const auto& a : mol.atoms)
    if (seqs.empty() || seqs.back() != a.residue_seq) {
      seqs.push_back(a.residue_seq);
      residues.push_back(a.residue);
    }
  if (seqs.size() < 3)
    usage_error("backbone_dihedrals", "needs three residues (e.g. ACE-ALA-NME), found " +
                                          std::to_string(seqs.size()));
  auto find = [&](int64_t seq, const std::string& name) {
    for (int64_t i = 0; i < mol.size(); ++i)
      if (mol.atoms[i].residue_seq == seq && mol.atoms[i].name == name) return i;
    usage_error("backbone_dihedrals", "no atom " + name + " in residue " + std::to_string(seq));
  };
  BackboneDihedrals d;
  d.phi = {find(seqs[0], "C"), find(seqs[1], "N"), find(seqs[1], "CA"), find(seqs[1], "C")};
  d.psi = {find(seqs[1], "N"), find(seqs[1], "CA"), find(seqs[1], "C"), find(seqs[2], "N")};
  return d;
}

torch::Tensor ramachandran(const torch::Tensor& x, const BackboneDihedrals& d) {
  const auto phi = dihedral(x, d.phi[0], d.phi[1], d.phi[2], d.phi[3]);
  const auto psi = dihedral(x, d.psi[0], d.psi[1], d.psi[2], d.psi[3]);
  return torch::stack({phi, psi}, 1);
}

const std::vector<std::string>& basin_names() {
  static const std::vector<std::string> names = {"C7eq/beta", "alpha_R", "alpha_L/C7ax"};
  return names;
}

torch::Tensor basin_index(const torch::Tensor& phi_psi) {
  check_dim("basin_index", "phi_psi", phi_psi, 2);
  const auto deg = phi_psi.to(torch::kFloat64) * (180.0 / M_PI);
  const auto phi = deg.select(1, 0), psi = deg.select(1, 1);
  const auto alpha_l = phi >= 0;
  const auto alpha_r = (phi < 0) & (psi >= -120) & (psi < 50);
  auto idx = torch::zeros({phi_psi.size(0)}, torch::kInt64);
  idx.masked_fill_(alpha_r, 1);
  idx.masked_fill_(alpha_l, 2);
  return idx;
}

std::vector<BasinStats> basin_free_energies(const torch::Tensor& phi_psi,
                                            const torch::Tensor& log_w, int64_t rounds,
                                            uint64_t seed, int64_t block) {
  const auto idx = basin_index(phi_psi);
  const int64_t n = idx.size(0);
  const auto lw = log_w.defined() ? log_w.to(torch::kFloat64)
                                  : torch::zeros({n}, torch::kFloat64);
  check_size("basin_free_energies", "log_w", lw, 0, n);
  const int64_t K = static_cast<int64_t>(basin_names().size());
  auto probs = [&](const torch::Tensor& sel) {
    const auto w = normalized_weights(lw.index_select(0, sel));
    return torch::zeros({K}, torch::kFloat64).index_add_(0, idx.index_select(0, sel), w);
  };
  std::vector<BasinStats> out;
  for (int64_t k = 0; k < K; ++k) {
    BasinStats s;
    s.name = basin_names()[k];
    s.probability = bootstrap(
        n, [&](const torch::Tensor& sel) { return probs(sel)[k].item<double>(); }, rounds,
        derive_seed(seed, 11, static_cast<uint64_t>(k)), block);
    s.delta_f = bootstrap(
        n,
        [&](const torch::Tensor& sel) {
          const auto p = probs(sel);
          return -std::log(p[k].item<double>() / p[0].item<double>());
        },
        rounds, derive_seed(seed, 11, static_cast<uint64_t>(k)), block);
    out.push_back(s);
  }
  return out;
}

double wasserstein2_1d(const torch::Tensor& a_in, const torch::Tensor& b_in) {
  check_dim("wasserstein2_1d", "a", a_in, 1);
  check_dim("wasserstein2_1d", "b", b_in, 1);
  auto a = std::get<0>(a_in.to(torch::kFloat64).contiguous().sort());
  auto b = std::get<0>(b_in.to(torch::kFloat64).contiguous().sort());
  const int64_t n = a.size(0), m = b.size(0);
  if (n == 0 || m == 0) usage_error("wasserstein2_1d", "empty sample");
  if (!torch::isfinite(a).all().item<bool>() || !torch::isfinite(b).all().item<bool>())
    runtime_error("wasserstein2_1d", "samples must be finite");
  const double* pa = a.data_ptr<double>();
  const double* pb = b.data_ptr<double>();
  // Walk the merged quantile levels k/n and l/m.
  int64_t i = 0, j = 0;
  double t = 0.0, acc = 0.0;
  while (i < n && j < m) {
    const double ta = static_cast<double>(i + 1) / n, tb = static_cast<double>(j + 1) / m;
    const double next = std::min(ta, tb);
    const double d = pa[i] - pb[j];
    acc += (next - t) * d * d;
    t = next;
    if (ta <= next) ++i;
    if (tb <= next) ++j;
  }
  return std::sqrt(acc);
}

double torus_wasserstein2(const torch::Tensor& a_in, const torch::Tensor& b_in) {
  check_dim("torus_wasserstein2", "a", a_in, 2);
  check_dim("torus_wasserstein2", "b", b_in, 2);
  const int64_t n = a_in.size(0);
  check_size("torus_wasserstein2", "b", b_in, 0, n);
  const auto a = a_in.to(torch::kFloat64).contiguous();
  const auto b = b_in.to(torch::kFloat64).contiguous();
  // Cost matrix of wrapped squared distances.
  auto diff = (a.unsqueeze(1) - b.unsqueeze(0)).abs();  // [n, n, 2]
  diff = torch::minimum(diff, 2.0 * M_PI - diff);
  const auto cost = diff.pow(2).sum(2).contiguous();
  const double* C = cost.data_ptr<double>();
  // Hungarian algorithm with potentials (1-based arrays).
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u(n + 1, 0.0), v(n + 1, 0.0), minv(n + 1);
  std::vector<int64_t> p(n + 1, 0), way(n + 1, 0);
  std::vector<char> used(n + 1);
  for (int64_t i = 1; i <= n; ++i) {
    p[0] = i;
    int64_t j0 = 0;
    std::fill(minv.begin(), minv.end(), inf);
    std::fill(used.begin(), used.end(), 0);
    do {
      used[j0] = 1;
      const int64_t i0 = p[j0];
      double delta = inf;
      int64_t j1 = 0;
      const double* row = C + (i0 - 1) * n;
      for (int64_t j = 1; j <= n; ++j)
        if (!used[j]) {
          const double cur = row[j - 1] - u[i0] - v[j];
          if (cur < minv[j]) {
            minv[j] = cur;
            way[j] = j0;
          }
          if (minv[j] < delta) {
            delta = minv[j];
            j1 = j;
          }
        }
      for (int64_t j = 0; j <= n; ++j) {
        if (used[j]) {
          u[p[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (p[j0] != 0);
    do {
      const int64_t j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  double total = 0.0;
  for (int64_t j = 1; j <= n; ++j) total += C[(p[j] - 1) * n + (j - 1)];
  return std::sqrt(total / static_cast<double>(n));
}

torch::Tensor ramachandran_histogram(const torch::Tensor& phi_psi, int64_t bins,
                                     const torch::Tensor& log_w) {
  check_positive_int("ramachandran_histogram", "bins", bins);
  const auto pp = phi_psi.to(torch::kFloat64);
  auto cell = ((pp + M_PI) / (2.0 * M_PI) * bins).floor().to(torch::kInt64).clamp(0, bins - 1);
  const auto flat = cell.select(1, 0) * bins + cell.select(1, 1);
  const auto w = log_w.defined() ? normalized_weights(log_w)
                                 : torch::ones({pp.size(0)}, torch::kFloat64);
  return torch::zeros({bins * bins}, torch::kFloat64).index_add_(0, flat, w).view({bins, bins});
}

double ramachandran_kl(const torch::Tensor& a, const torch::Tensor& b, int64_t bins) {
  auto pa = ramachandran_histogram(a, bins);
  auto pb = ramachandran_histogram(b, bins);
  pa = pa / pa.sum();
  pb = pb / pb.sum();
  const double eps = 1e-10;
  const auto used = pa > 0;
  return (pa.masked_select(used) *
          (torch::log(pa.masked_select(used)) - torch::log(pb.masked_select(used) + eps)))
      .sum()
      .item<double>();
}

}  // namespace nfkit
