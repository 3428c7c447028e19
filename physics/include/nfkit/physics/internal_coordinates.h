#pragma once
// Internal coordinates (Z-matrix) of a molecule, with the exact Jacobian: the coordinate
// system of Boltzmann generators for small molecules (Noé et al., Science 2019; Köhler et al.
// 2021 bgflow; Midgley et al. 2023).
//
// A Z-matrix places atoms in order: the root a0, then a1 bonded to a0, then a2 bonded to a0 or
// a1, then every further atom i by a bond b (i-j), an angle theta (i-j-k) and a torsion phi
// (i-j-k-l) to atoms placed before it. zmatrix_from_bonds() builds one from the bond graph by
// breadth-first search (heavy atoms first); an atom whose parent already carries a placed
// child takes that sibling as its torsion reference (a phase offset, nearly constant for
// methyl hydrogens), else the parent of its angle partner.
//
// Coordinates. Cartesian x [B, 3N] (nm) <-> q = [t (3), alpha, beta, gamma, bonds (N-1),
// angles (N-2), torsions (N-3)], a bijection of R^{3N} (up to measure-zero sets):
//   t = x_{a0}; (b1, beta, alpha) the spherical coordinates of x_{a1} - x_{a0} (polar beta,
//   azimuth alpha); gamma the rotation of a2 about that axis from the reference direction
//   R(alpha, beta) e_x; the rest the usual bonds (nm), angles in (0, pi) and torsions in
//   [-pi, pi) (IUPAC sign, as dihedral()).
// Volume element: dx = sin(beta) d^3t dalpha dbeta dgamma * b1^2 * b2^2 sin(theta2) *
//   prod_i b_i^2 sin(theta_i), so log|det dq/dx| = -sum(2 log b + log sin theta) - log sin beta.
// The six global coordinates carry no energy; integrating them out leaves the reduced density
// over the 3N-6 internal coordinates with log|det|_reduced = -sum(2 log b + log sin theta)
// (the constant 8 pi^2 V drops out of importance weights and free-energy differences).
//
//   auto z = nfkit::zmatrix_from_bonds(22, bonds);
//   auto ic = nfkit::to_internal(z, x);          // {q, logdet}
//   auto back = nfkit::from_internal(z, ic.q);   // {x, logdet of the inverse}
#include <torch/types.h>

#include <array>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace nfkit {

struct ZMatrix {
  /// Rows in placement order: {i, j, k, l}; row 0 = {a0, -1, -1, -1}, row 1 = {a1, a0, -1,
  /// -1}, row 2 = {a2, j, k, -1} with {j, k} = {a0, a1}.
  std::vector<std::array<int64_t, 4>> rows;
  int64_t atoms() const { return static_cast<int64_t>(rows.size()); }
  /// Internal coordinates without the six global ones: 3N - 6.
  int64_t internal_dim() const { return 3 * atoms() - 6; }
  /// Index ranges in q without the global six: bonds [0, N-1), angles [N-1, 2N-3), torsions
  /// [2N-3, 3N-6).
  int64_t bonds_begin() const { return 0; }
  int64_t angles_begin() const { return atoms() - 1; }
  int64_t torsions_begin() const { return 2 * atoms() - 3; }
  nlohmann::json to_json() const;
  static ZMatrix from_json(const nlohmann::json& j);
  /// Throws (naming the row) unless every atom appears once and references earlier atoms.
  void validate() const;
};

/// A Z-matrix from bonds over n atoms. root < 0 picks the heavy atom with most heavy
/// neighbours; heavy: per-atom flags (empty = all heavy).
ZMatrix zmatrix_from_bonds(int64_t n, const std::vector<std::pair<int64_t, int64_t>>& bonds,
                           const std::vector<bool>& heavy = {}, int64_t root = -1);

struct InternalResult {
  torch::Tensor q;       ///< [B, 3N] with the globals first, or [B, 3N-6] without
  torch::Tensor logdet;  ///< [B] log|det dq/dx| (full) or the reduced one
};

/// Cartesian x [B, 3N] nm -> internal coordinates. with_globals=false drops t, alpha, beta,
/// gamma and returns the reduced log|det|. Differentiable.
InternalResult to_internal(const ZMatrix& z, const torch::Tensor& x, bool with_globals = false);

struct CartesianResult {
  torch::Tensor x;       ///< [B, 3N] nm
  torch::Tensor logdet;  ///< [B] log|det dx/dq| (= minus to_internal's)
};

/// Internal coordinates q [B, 3N] (with globals) or [B, 3N-6] (then t = 0, alpha = beta =
/// gamma = 0: a1 on the +z axis, canonical frame) -> Cartesian. Differentiable.
CartesianResult from_internal(const ZMatrix& z, const torch::Tensor& q);

}  // namespace nfkit
