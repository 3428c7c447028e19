#include "nfkit/boltzmann/analysis.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/optimal_transport.h"

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

double torus_wasserstein2(const torch::Tensor& a, const torch::Tensor& b) {
  check_dim("torus_wasserstein2", "a", a, 2);
  check_dim("torus_wasserstein2", "b", b, 2);
  check_size("torus_wasserstein2", "a", a, 1, 2);
  check_size("torus_wasserstein2", "b", b, 1, 2);
  return wasserstein2(a, b, 2.0 * M_PI);
}

// ---- chirality ------------------------------------------------------------------------------

std::vector<Stereocentre> stereocentres(const Molecule& mol) {
  std::vector<Stereocentre> out;
  const auto x = mol.positions();
  for (int64_t i = 0; i < mol.size(); ++i) {
    const auto& a = mol.atoms[i];
    if (a.name != "CA") continue;
    auto in_residue = [&](const std::string& name) {
      for (int64_t k = 0; k < mol.size(); ++k)
        if (mol.atoms[k].residue_seq == a.residue_seq && mol.atoms[k].chain == a.chain &&
            mol.atoms[k].name == name)
          return k;
      return int64_t{-1};
    };
    const int64_t n = in_residue("N"), c = in_residue("C"), cb = in_residue("CB");
    if (n < 0 || c < 0 || cb < 0) continue;  // glycine, or not an amino acid
    Stereocentre s;
    s.name = a.residue + std::to_string(a.residue_seq) + ":CA";
    s.centre = i;
    s.a = n;
    s.b = c;
    s.c = cb;
    const double v = chirality_volume(x.reshape({1, -1}), s)[0].item<double>();
    s.sign = v >= 0 ? 1.0 : -1.0;
    out.push_back(s);
  }
  return out;
}

torch::Tensor chirality_volume(const torch::Tensor& x, const Stereocentre& s) {
  check_dim("chirality_volume", "x", x, 2);
  const auto X = x.reshape({x.size(0), -1, 3});
  const auto o = X.select(1, s.centre);
  const auto va = X.select(1, s.a) - o, vb = X.select(1, s.b) - o, vc = X.select(1, s.c) - o;
  return (va * torch::cross(vb, vc, 1)).sum(1);
}

torch::Tensor chirality_ok(const torch::Tensor& x, const std::vector<Stereocentre>& centres) {
  auto ok = torch::ones({x.size(0)}, torch::kBool);
  for (const auto& s : centres) ok = ok & (chirality_volume(x, s) * s.sign > 0);
  return ok;
}

torch::Tensor mirror_image(const torch::Tensor& x) {
  check_dim("mirror_image", "x", x, 2);
  const auto X = x.reshape({x.size(0), -1, 3});
  const auto flip = torch::tensor({1.0, 1.0, -1.0}, X.options());
  return (X * flip).reshape_as(x);
}

// ---- TICA -----------------------------------------------------------------------------------

torch::Tensor tica_features(const torch::Tensor& x, const Molecule& mol, const BackboneDihedrals& d) {
  std::vector<int64_t> heavy;
  for (int64_t i = 0; i < mol.size(); ++i) {
    const auto& e = mol.atoms[i].element;
    if (e == "C" || e == "N" || e == "S") heavy.push_back(i);
  }
  const auto X = x.to(torch::kFloat64).reshape({x.size(0), -1, 3});
  const auto H = X.index_select(1, torch::tensor(heavy, torch::kInt64));
  const int64_t k = static_cast<int64_t>(heavy.size());
  const auto iu = torch::triu_indices(k, k, 1);
  const auto dist = (H.index_select(1, iu[0]) - H.index_select(1, iu[1])).norm(2, -1);  // [B, k(k-1)/2]
  const auto pp = ramachandran(x, d);
  return torch::cat({dist, torch::sin(pp), torch::cos(pp)}, 1);
}

torch::Tensor Tica::project(const torch::Tensor& features) const {
  return torch::matmul(features.to(torch::kFloat64) - mean, components);
}

Tica fit_tica(const torch::Tensor& features, const torch::Tensor& walker, int64_t lag, int64_t dim,
              double eps) {
  check_dim("fit_tica", "features", features, 2);
  check_positive_int("fit_tica", "lag", lag);
  check_positive_int("fit_tica", "dim", dim);
  const int64_t T = features.size(0);
  check_size("fit_tica", "walker", walker, 0, T);
  // Pairs (t, t + lag) inside one walker's stretch of frames.
  const auto w = walker.to(torch::kInt64).contiguous();
  const int64_t* pw = w.data_ptr<int64_t>();
  std::vector<int64_t> i0;
  for (int64_t t = 0; t + lag < T; ++t)
    if (pw[t] == pw[t + lag]) i0.push_back(t);  // walker-major: same walker throughout
  if (i0.size() < 2)
    runtime_error("fit_tica", "no pairs of frames " + std::to_string(lag) +
                                  " apart within one walker (the reference is too short for the lag)");
  const auto idx = torch::tensor(i0, torch::kInt64);
  const auto X = features.to(torch::kFloat64);
  const auto X0 = X.index_select(0, idx), Xt = X.index_select(0, idx + lag);
  Tica t;
  t.lag = lag;
  // Reversible estimate: means and instantaneous covariances from both ends of the pairs, the
  // time-lagged covariance symmetrised (Noé & Nüske 2013; Pérez-Hernández et al. 2013).
  t.mean = 0.5 * (X0.mean(0) + Xt.mean(0));
  const auto A = X0 - t.mean, B = Xt - t.mean;
  const double M = static_cast<double>(A.size(0));
  const auto C00 = (torch::matmul(A.t(), A) + torch::matmul(B.t(), B)) / (2.0 * M);
  const auto C0t = (torch::matmul(A.t(), B) + torch::matmul(B.t(), A)) / (2.0 * M);
  // Whiten with C00's eigenvectors, dropping directions with eigenvalue below eps * largest
  // (constant or linearly dependent features).
  const auto [s, V] = torch::linalg::eigh(C00, "L");
  const auto keep = s > eps * s.max();
  const auto Vk = V.index({torch::indexing::Slice(), keep});
  const auto W = Vk / torch::sqrt(s.masked_select(keep));
  const auto K = torch::matmul(W.t(), torch::matmul(C0t, W));
  const auto [lam, U] = torch::linalg::eigh(0.5 * (K + K.t()), "L");
  const int64_t r = lam.size(0), k = std::min(dim, r);
  const auto order = torch::arange(r - 1, r - 1 - k, -1, torch::kInt64);  // largest first
  t.eigenvalues = lam.index_select(0, order);
  t.components = torch::matmul(W, U.index_select(1, order));
  return t;
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
