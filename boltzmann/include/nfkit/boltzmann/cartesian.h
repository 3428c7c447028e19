#pragma once
// All-atom Cartesian coordinates for transformer Boltzmann generators: the "centred" coordinate
// map of Sequential Boltzmann Generators (SBG; Tan, Bose, Lin, Klein, Bronstein & Tong, ICML
// 2025, arXiv 2502.18462) and Autoregressive Boltzmann Generators (ArBG; Rehman et al. 2026),
// whose models see the 3N Cartesian coordinates of a configuration with its centre removed,
// turned by a random rotation and shifted by a random centre during training.
//
// The centre is the mean of the atom positions (not mass-weighted, as in both references).
// The Boltzmann density lives on the 3N - 3 dimensional space of centred configurations x, but
// the model q~ is a density on R^3N. Write a point of R^3N as c = x + 1 (x) t (every atom
// shifted by t in R^3); in orthonormal coordinates that is (x, a) with a = sqrt(N) t. The map
// draws t from an isotropic normal of standard deviation sigma per axis, truncated at
// `truncation` sigma, so during training the model sees p(x) r(a), with r the density of a.
// Importance sampling in the extended space (x, a) with target p(x) r(a) and proposal q~ is
// exact, and its x-marginal is p, so
//
//     log w = -u(x) + log r(sqrt(N) t) - log q~(c),     x = c - mean(c), t = mean(c),
//
// with no approximation of the marginal of q~ over t. Through the CoordinateMap contract
// (log q = log q~(c) + logdet): from_flow(c).logdet = -log r(sqrt(N) t), NaN beyond the
// truncation (outside the map's range: weight zero, where the extended target is zero). to_flow(x) puts the centre at
// t = 0, so log_prob(x) = log q~(x) - log r(0) is the extended model's density at a = 0, the
// number the held-out NLL reports for Cartesian models (stated in docs/boltzmann.md). This is
// the exact extended-space weight, not SBG's proposition 1 (which corrects the model density by
// the density of the centre under the model); we chose it because it needs no second density and
// keeps log w exact for any model, including ArBG's piecewise-constant one.
//
// Before the map is fitted or configured, to_flow gives the centred coordinates with a NaN
// correction and from_flow is a usage error. sigma defaults to s / sqrt(N), s the standard deviation of the centred training coordinates, so
// a has the spread of the other coordinates. Map settings (sigma, truncation, rotations) travel
// in the model file's metadata (CoordinateMap::config).
#include <torch/types.h>

#include <string>
#include <vector>

#include "nfkit/boltzmann/generator.h"

namespace nfkit {

/// x [B, 3N] with the mean atom position of each row removed.
torch::Tensor centre_configurations(const torch::Tensor& x);

/// n rotation matrices [n, 3, 3] uniform on SO(3) (normalised Gaussian quaternions), from
/// torch's global generator.
torch::Tensor random_rotations(int64_t n, torch::TensorOptions options = torch::kFloat64);

/// x [B, 3N] with every row's atoms turned by R [B, 3, 3] about the origin.
torch::Tensor rotate_configurations(const torch::Tensor& x, const torch::Tensor& R);

/// The transformer models of `bg train --model tarflow|arbg` (the spline flows, "nsf", take
/// ICFlowRecipe).
struct TransformerRecipe {
  int64_t blocks = 4;      ///< TarFlow blocks (token order reversed every other block)
  int64_t layers = 2;      ///< transformer layers per TarFlow block; ArBG: 2 x layers in its one
  int64_t hidden = 128;    ///< transformer width
  int64_t head_dim = 32;
  /// TarFlow tokens: "atom" (one token of x, y, z per atom, as SBG; the map's dimension must be
  /// a multiple of 3) or "coordinate" (one token per coordinate).
  std::string tokens = "atom";
  int64_t bins = 1024;     ///< ArBG: bins per coordinate (the paper: 4096 for alanine dipeptide)
  /// ArBG token order: "atom" (x, y, z of atom 0, then atom 1, ...: the topology's order, ArBG's
  /// default) or "axis" (every x, then every y, then every z).
  std::string order = "atom";
  double margin = 0.05;    ///< ArBG: box margin, a fraction of each coordinate's range
  void check() const;
  nlohmann::json to_json() const;
};

/// The model kinds of `bg train --model`: "nsf" (the map's spline flow), "tarflow", "arbg".
const std::vector<std::string>& generator_model_kinds();
/// The model_config "type" a kind's model has ("flow" or "binned_autoregressive").
std::string model_type(const std::string& kind);

/// A fresh model of `kind` over the map's coordinates, sized by recipe (nsf) or tr, with its
/// fixed standardisation (TarFlow: one scale for every coordinate, from augmented training
/// coordinates) or box (ArBG: covering every augmentation of the training coordinates c_train:
/// with rotations +-(largest atom distance from the centre + the centre's truncation) per
/// coordinate, else the coordinates' range; widened by tr.margin).
std::shared_ptr<Distribution> build_generator_model(const std::string& kind, const CoordinateMap& map,
                                                    const torch::Tensor& c_train, const ICFlowRecipe& recipe,
                                                    const TransformerRecipe& tr);

class CentredMap : public CoordinateMap {
 public:
  explicit CentredMap(ZMatrix z) : CoordinateMap(std::move(z)) {}
  std::string name() const override { return "centred"; }
  int64_t dim() const override { return 3 * z_.atoms(); }
  Result to_flow(const torch::Tensor& x) const override;
  Result from_flow(const torch::Tensor& c) const override;
  std::shared_ptr<Flow> build_flow(const torch::Tensor& c_train, const ICFlowRecipe& recipe) const override;
  nlohmann::json config() const override;
  void configure(const nlohmann::json& config) override;
  void fit(const torch::Tensor& c_train) override;
  torch::Tensor augment(const torch::Tensor& c) const override;

  double sigma() const { return sigma_; }
  double truncation() const { return truncation_; }
  bool rotations() const { return rotations_; }
  /// -log r(sqrt(N) t) [B] for centres t [B, 3] (NaN beyond the truncation).
  torch::Tensor neg_log_r(const torch::Tensor& t) const;

 private:
  double sigma_ = 0.0;       // nm; 0 until fit() or configure()
  double truncation_ = 4.0;  // in sigma, per axis
  bool rotations_ = true;
};

}  // namespace nfkit
