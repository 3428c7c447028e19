#include "nfkit/physics/molecule.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>

#include "nfkit/core/error.h"

namespace nfkit {

namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(' ');
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(' ');
  return s.substr(b, e - b + 1);
}

std::string field(const std::string& line, size_t col, size_t len) {
  if (line.size() <= col) return "";
  return trim(line.substr(col, len));
}

}  // namespace

torch::Tensor Molecule::positions() const {
  auto x = torch::empty({size(), 3}, torch::kFloat64);
  auto a = x.accessor<double, 2>();
  for (int64_t i = 0; i < size(); ++i) {
    a[i][0] = atoms[i].x;
    a[i][1] = atoms[i].y;
    a[i][2] = atoms[i].z;
  }
  return x;
}

int64_t Molecule::find(const std::string& residue, const std::string& name) const {
  for (int64_t i = 0; i < size(); ++i)
    if (atoms[i].residue == residue && atoms[i].name == name) return i;
  return -1;
}

Molecule read_pdb(const std::string& path) {
  std::ifstream in(path);
  if (!in) runtime_error("pdb", path + ": cannot open the file");
  Molecule mol;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string rec = line.substr(0, std::min<size_t>(6, line.size()));
    if (rec == "ENDMDL") break;
    if (rec != "ATOM  " && rec != "HETATM") continue;
    const std::string where = path + ":" + std::to_string(lineno);
    if (line.size() < 54)
      runtime_error("pdb", where + ": ATOM record has " + std::to_string(line.size()) +
                               " characters, but coordinates need columns 31-54");
    Atom a;
    try {
      a.serial = std::stoll(field(line, 6, 5));
    } catch (const std::exception&) {
      runtime_error("pdb", where + ": atom serial number (columns 7-11) is not an integer");
    }
    a.name = field(line, 12, 4);
    a.residue = field(line, 17, 3);
    a.chain = field(line, 21, 1);
    try {
      a.residue_seq = std::stoll(field(line, 22, 4));
    } catch (const std::exception&) {
      runtime_error("pdb", where + ": residue number (columns 23-26) is not an integer");
    }
    double xyz[3];
    for (int d = 0; d < 3; ++d) {
      const std::string f = field(line, 30 + 8 * d, 8);
      size_t used = 0;
      try {
        xyz[d] = std::stod(f, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != f.size() || !std::isfinite(xyz[d]))
        runtime_error("pdb", where + ": coordinate " + std::string(1, "xyz"[d]) + " (columns " +
                                 std::to_string(31 + 8 * d) + "-" + std::to_string(38 + 8 * d) +
                                 ") is '" + f + "', expected a finite number");
    }
    a.x = xyz[0] / 10.0;
    a.y = xyz[1] / 10.0;
    a.z = xyz[2] / 10.0;
    a.element = field(line, 76, 2);
    if (a.element.empty()) {
      for (char c : a.name)
        if (std::isalpha(static_cast<unsigned char>(c))) {
          a.element = std::string(1, c);
          break;
        }
    }
    if (a.element.size() == 2) a.element[1] = static_cast<char>(std::tolower(a.element[1]));
    mol.atoms.push_back(a);
  }
  if (mol.atoms.empty()) runtime_error("pdb", path + ": no ATOM or HETATM records");
  return mol;
}

double covalent_radius(const std::string& element) {
  static const std::map<std::string, double> r = {
      {"H", 0.031}, {"C", 0.076}, {"N", 0.071}, {"O", 0.066}, {"S", 0.105}, {"P", 0.107},
      {"F", 0.057}, {"Cl", 0.102}, {"Br", 0.120}, {"I", 0.139}, {"Se", 0.120}};
  const auto it = r.find(element);
  if (it == r.end())
    usage_error("covalent_radius", "no covalent radius for element '" + element + "'");
  return it->second;
}

std::vector<std::pair<int64_t, int64_t>> guess_bonds(const Molecule& mol, double tolerance) {
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t n = mol.size();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) {
      const auto& a = mol.atoms[i];
      const auto& b = mol.atoms[j];
      const double d = std::sqrt((a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y) +
                                 (a.z - b.z) * (a.z - b.z));
      if (d < covalent_radius(a.element) + covalent_radius(b.element) + tolerance)
        out.emplace_back(i, j);
    }
  return out;
}

torch::Tensor dihedral(const torch::Tensor& p0, const torch::Tensor& p1, const torch::Tensor& p2,
                       const torch::Tensor& p3) {
  const auto b0 = p0 - p1;
  const auto b1 = p2 - p1;
  const auto b2 = p3 - p2;
  const auto b1n = b1 / torch::linalg_norm(b1, 2, {-1}, true);
  const auto v = b0 - (b0 * b1n).sum(-1, true) * b1n;
  const auto w = b2 - (b2 * b1n).sum(-1, true) * b1n;
  const auto x = (v * w).sum(-1);
  const auto y = (torch::linalg_cross(b1n, v, -1) * w).sum(-1);
  return torch::atan2(y, x);
}

torch::Tensor bond_angle(const torch::Tensor& p0, const torch::Tensor& p1,
                         const torch::Tensor& p2) {
  const auto a = p0 - p1;
  const auto b = p2 - p1;
  const auto c = torch::linalg_cross(a, b, -1);
  return torch::atan2(torch::linalg_norm(c, 2, {-1}), (a * b).sum(-1));
}

torch::Tensor dihedral(const torch::Tensor& x, int64_t i, int64_t j, int64_t k, int64_t l) {
  const auto X = x.dim() == 2 ? x.reshape({x.size(0), -1, 3}) : x;
  return dihedral(X.select(1, i), X.select(1, j), X.select(1, k), X.select(1, l));
}

}  // namespace nfkit
