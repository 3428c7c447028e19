#pragma once
// Sampling metrics of Boltzmann generators for peptides (as in Tan et al., ICML 2025, and
// Rehman et al. 2026):
//
//   * Ramachandran basins of alanine dipeptide, a partition of the (phi, psi) torus
//     (degrees, phi and psi in [-180, 180)):
//       alpha_L/C7ax : phi >= 0
//       alpha_R      : phi < 0 and -120 <= psi < 50
//       C7eq/beta    : phi < 0 and (psi >= 50 or psi < -120)
//     Free-energy differences Delta F(A - B) = -ln(P_A / P_B) in k_B T, with bootstrap errors.
//   * E-W2: the 1-D Wasserstein-2 distance between two samples of reduced energies (exact,
//     from the quantile functions of the empirical distributions).
//   * T-W2: the Wasserstein-2 distance on the (phi, psi) torus with the wrap-around distance
//     d^2 = sum_k min(|dk|, 2 pi - |dk|)^2, exact for equal-size samples by optimal assignment
//     (Hungarian algorithm, Kuhn 1955 / Munkres 1957, O(n^3)).
//   * KL(reference || model) between Ramachandran histograms (pseudo-count 1e-10 per bin).
//   * TICA-W2 (the ArBG / SBG metric): time-lagged independent component analysis
//     (Molgedey & Schuster 1994; Pérez-Hernández et al. 2013) fitted on the reference MD
//     (reversible estimate, pairs within one walker), and the exact W2 between reference and
//     samples in its two slowest components. Features as in SBG (Tan et al. 2025): distances
//     between all C, N and S atoms, and sin / cos of phi and psi.
//   * Chirality: the L/D handedness of each amino acid's CA (the sign of the volume spanned by
//     N, C and CB around it), checked against the structure's own. Force fields cannot tell
//     mirror images apart, so a generator may produce D-residues with perfectly good energies;
//     they are a different molecule, and their phi / psi land in the mirrored Ramachandran
//     region (alpha_R <-> alpha_L).
#include <torch/types.h>

#include <array>
#include <string>
#include <vector>

#include "nfkit/boltzmann/reweight.h"
#include "nfkit/physics/molecule.h"

namespace nfkit {

/// Atom indices of the backbone dihedrals of a dipeptide: phi = C(prev)-N-CA-C, psi =
/// N-CA-C-N(next).
struct BackboneDihedrals {
  std::array<int64_t, 4> phi{}, psi{};
};
/// From a molecule with residues ACE-ALA-NME (or any X-Y-Z with the usual atom names; the
/// middle residue is the second). Throws naming the missing atom.
BackboneDihedrals backbone_dihedrals(const Molecule& mol);

/// (phi, psi) in radians [B, 2] of configurations x [B, 3N] nm.
torch::Tensor ramachandran(const torch::Tensor& x, const BackboneDihedrals& d);

/// The basins' names, in basin_index order: {"C7eq/beta", "alpha_R", "alpha_L/C7ax"}.
const std::vector<std::string>& basin_names();
/// Basin index [B] (int64) of (phi, psi) [B, 2] radians.
torch::Tensor basin_index(const torch::Tensor& phi_psi);

struct BasinStats {
  std::string name;
  Estimate probability;
  Estimate delta_f;  ///< -ln(P_basin / P_C7eq) in k_B T (0 for C7eq itself)
};
/// Basin probabilities and free energies relative to C7eq/beta; log_w undefined = unweighted.
/// Errors by bootstrap; block > 1 resamples contiguous blocks of that many frames (moving-block
/// bootstrap), as correlated MD frames need.
std::vector<BasinStats> basin_free_energies(const torch::Tensor& phi_psi,
                                            const torch::Tensor& log_w, int64_t rounds,
                                            uint64_t seed, int64_t block = 1);

/// Exact 1-D W2 between the empirical distributions of a [n] and b [m].
double wasserstein2_1d(const torch::Tensor& a, const torch::Tensor& b);

/// Exact W2 on the torus between the samples a [n, 2] and b [m, 2] (radians, period 2 pi):
/// nfkit::wasserstein2 (flows/optimal_transport.h) with period 2 pi, certified optimal.
/// Euclidean W2 (TICA-W2) is nfkit::wasserstein2 itself.
double torus_wasserstein2(const torch::Tensor& a, const torch::Tensor& b);

/// A stereocentre: `centre` with three substituents a, b, c (CA: N, C, CB) and the sign of its
/// volume (a - centre) . ((b - centre) x (c - centre)) in the reference structure.
struct Stereocentre {
  std::string name;  ///< "ALA2:CA"
  int64_t centre = 0, a = 0, b = 0, c = 0;
  double sign = 1.0;
};
/// The CA stereocentres of a molecule's amino acids (residues with N, CA, C and CB; glycine and
/// caps have none), with the handedness of mol's own positions.
std::vector<Stereocentre> stereocentres(const Molecule& mol);
/// The signed volume [B] (nm^3) at one stereocentre of configurations x [B, 3N].
torch::Tensor chirality_volume(const torch::Tensor& x, const Stereocentre& s);
/// [B] bool: every stereocentre of x [B, 3N] has its reference handedness.
torch::Tensor chirality_ok(const torch::Tensor& x, const std::vector<Stereocentre>& centres);
/// Mirror images (z -> -z) of x [B, 3N]: every stereocentre flips, energies are unchanged.
torch::Tensor mirror_image(const torch::Tensor& x);

/// TICA features [B, F] of x [B, 3N]: C/N/S pair distances (nm), sin and cos of phi and psi.
torch::Tensor tica_features(const torch::Tensor& x, const Molecule& mol, const BackboneDihedrals& d);

/// A fitted TICA: project(features) = (features - mean) @ components, components [F, dim] with
/// unit variance and the lag-`lag` autocorrelations `eigenvalues` (largest first).
struct Tica {
  torch::Tensor mean, components, eigenvalues;
  int64_t lag = 0;
  torch::Tensor project(const torch::Tensor& features) const;
};
/// TICA of features [T, F] with lag `lag` frames; pairs only within one walker (walker [T],
/// walker-major frames). Directions of the instantaneous covariance with eigenvalue below
/// eps times the largest are dropped before the eigenproblem.
Tica fit_tica(const torch::Tensor& features, const torch::Tensor& walker, int64_t lag,
              int64_t dim = 2, double eps = 1e-6);

/// KL(P_a || P_b) of (phi, psi) histograms with bins x bins cells on [-pi, pi)^2.
double ramachandran_kl(const torch::Tensor& a, const torch::Tensor& b, int64_t bins = 36);

/// Histogram counts [bins, bins] (phi rows, psi columns) of (phi, psi) [n, 2] radians,
/// weighted by normalized_weights(log_w) when log_w is defined.
torch::Tensor ramachandran_histogram(const torch::Tensor& phi_psi, int64_t bins,
                                     const torch::Tensor& log_w = {});

}  // namespace nfkit
