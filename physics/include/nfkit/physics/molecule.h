#pragma once
// Molecular structure: a PDB reader (ATOM/HETATM records, fixed columns of the wwPDB format
// v3.3), bonds from covalent radii, and dihedral angles.
//
//   auto mol = nfkit::read_pdb("data/alanine_dipeptide/ala2.pdb");
//   auto x = mol.positions();                       // [N, 3] nm
//   auto phi = nfkit::dihedral(X, 4, 6, 8, 14);     // radians, IUPAC sign convention
#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

namespace nfkit {

struct Atom {
  int64_t serial = 0;
  std::string name;      ///< "CA"
  std::string residue;   ///< "ALA"
  int64_t residue_seq = 0;
  std::string chain;
  std::string element;   ///< "C" (from columns 77-78, else from the atom name)
  double x = 0, y = 0, z = 0;  ///< nm (the file's Angstrom / 10)
};

struct Molecule {
  std::vector<Atom> atoms;
  int64_t size() const { return static_cast<int64_t>(atoms.size()); }
  /// Positions [N, 3] in nm, float64.
  torch::Tensor positions() const;
  /// Index of the first atom with this name in this residue (-1 if none).
  int64_t find(const std::string& residue, const std::string& name) const;
};

/// Reads ATOM/HETATM records (the first MODEL only). One-line errors name the file and line.
Molecule read_pdb(const std::string& path);

/// Covalent radius in nm of an element symbol (Cordero et al., Dalton Trans. 2008).
double covalent_radius(const std::string& element);

/// Bonded pairs (i < j): distance < r_i + r_j + tolerance (nm).
std::vector<std::pair<int64_t, int64_t>> guess_bonds(const Molecule& mol,
                                                     double tolerance = 0.045);

/// Dihedral angles [B] in radians in [-pi, pi] of atoms (i, j, k, l) for positions x [B, N, 3]
/// or [B, 3N]: the angle between the planes (i, j, k) and (j, k, l), positive when looking
/// along j->k the bond j-i must turn clockwise onto k-l (IUPAC; phi/psi of proteins).
torch::Tensor dihedral(const torch::Tensor& x, int64_t i, int64_t j, int64_t k, int64_t l);

/// The same for four position tensors [..., 3].
torch::Tensor dihedral(const torch::Tensor& p0, const torch::Tensor& p1, const torch::Tensor& p2,
                       const torch::Tensor& p3);

/// Angle in radians in [0, pi] at p1 between p0 and p2 ([..., 3] each).
torch::Tensor bond_angle(const torch::Tensor& p0, const torch::Tensor& p1,
                         const torch::Tensor& p2);

}  // namespace nfkit
