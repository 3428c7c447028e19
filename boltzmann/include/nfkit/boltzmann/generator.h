#pragma once
// Boltzmann generators in internal coordinates (Noé, Olsson, Köhler & Wu, Science 2019,
// arXiv 1812.01729): an exact-likelihood flow over the 3N-6 internal coordinates of a
// molecule (Z-matrix, physics/internal_coordinates.h), with circular splines for torsions
// (Rezende et al., ICML 2020) and neural-spline couplings (Durkan et al., NeurIPS 2019).
//
// Densities. The flow gives q_ic(q) over q = [bonds, angles, torsions]. A sample's Cartesian
// configuration x = X(q) (nm, canonical frame) has the reduced-space density
//   log q(x) = log q_ic(q) + log|det dq/dx|_reduced,
// and the Boltzmann density in the same reduced space is exp(-u(x)) / Z', so the importance
// weight is log w = -u(x) - log q(x) (the global rotation/translation integrate out to a
// constant, see internal_coordinates.h).
//
// The flow (build_ic_flow): a fixed z-scoring of bonds and angles, then `layers` blocks of
// four spline couplings -- torsions (two random halves) conditioned on everything else
// through cos/sin features, and bonds+angles (two random halves) -- over a standard normal x
// uniform-torus base (NormalTorus).
//
//   auto bg = nfkit::BoltzmannGenerator::build(z, md_q, recipe);
//   auto [x, log_q] = bg.sample(1000);
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nfkit/boltzmann/analysis.h"
#include "nfkit/flows/distribution.h"
#include "nfkit/flows/transform.h"
#include "nfkit/physics/energy.h"
#include "nfkit/physics/internal_coordinates.h"

namespace nfkit {

/// Cartesian x [B, 3N] (nm) -> [t, alpha, beta, gamma, bonds, angles, torsions] [B, 3N] as an
/// nfkit Transform (a bijection with the exact log|det|; see internal_coordinates.h).
class InternalCoordinateTransform : public Transform {
 public:
  explicit InternalCoordinateTransform(ZMatrix z);
  json config() const override;
  const ZMatrix& zmatrix() const { return z_; }

 protected:
  ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  ValueAndLogDet inverse_impl(const torch::Tensor& q, const torch::Tensor& context) override;

 private:
  ZMatrix z_;
};

/// Registers InternalCoordinateTransform ("internal_coordinates") with make_transform
/// (flows/builder.h). Done when the library loads; calling it again is harmless.
void register_boltzmann_transforms();

struct ICFlowRecipe {
  int64_t layers = 4;         ///< blocks of four couplings
  int64_t hidden = 256;
  int64_t hidden_layers = 2;
  int64_t bins = 8;
  double bound = 5.0;         ///< spline half-width for standardised bonds and angles
  uint64_t seed = 1;          ///< seeds the random halves
};

/// The flow over internal coordinates, standardised with q_train [N, 3N-6] (bonds, angles).
std::shared_ptr<Flow> build_ic_flow(const ZMatrix& z, const torch::Tensor& q_train,
                                    const ICFlowRecipe& recipe);

/// The spline flow of the Cartesian maps: 4 x recipe.layers rational-quadratic spline
/// couplings (as many as the internal-coordinate flow) over dim coordinates, standardised with
/// c_train.
std::shared_ptr<Flow> build_cartesian_spline_flow(int64_t dim, const torch::Tensor& c_train,
                                                  const ICFlowRecipe& recipe);

/// Cartesian coordinates in the canonical frame of a Z-matrix: root atom a0 at the origin, a1
/// on the +z axis, a2 in the x-z plane with x > 0. Of the 3N numbers, the 3N-6 free ones
/// (a1's z, a2's x and z, every other atom's x, y, z) are the coordinates of the Cartesian
/// flow. Integrating out the global rotation and translation leaves the Boltzmann density over
/// them as exp(-u) * b1^2 * rho2 (b1 = |a1 - a0|, rho2 = a2's distance from the a0-a1 axis),
/// so log q(x) in the reduced space of internal coordinates (as above) is
///   log q_cart(c) - 2 log b1 - log rho2.
struct CanonicalResult {
  torch::Tensor c;          ///< [B, 3N-6] free canonical coordinates (nm)
  torch::Tensor logdet;     ///< [B] -2 log b1 - log rho2 (add to log q_cart)
};
CanonicalResult to_canonical(const ZMatrix& z, const torch::Tensor& x);
/// Free canonical coordinates [B, 3N-6] -> Cartesian [B, 3N] (nm) in the canonical frame, and
/// the same log-density correction (-2 log b1 - log rho2; NaN where b1 <= 0 or rho2 <= 0,
/// which lies outside the canonical frame).
CanonicalResult from_canonical(const ZMatrix& z, const torch::Tensor& c, torch::Tensor* x);

/// What a generator's flow models: a map between Cartesian configurations x [B, 3N] (nm) and the
/// flow's 3N-6 coordinates c, with the correction `logdet` of the reduced-space density,
///   log q(x) = log q_flow(c) + logdet,
/// the same in both directions (to_flow(x).logdet at x equals from_flow(c).logdet at c = c(x)).
/// It drops the six global degrees of freedom, so it is not an nfkit::Transform (those are
/// bijections of one dimension). Maps are looked up by name (make_coordinate_map); built in:
///   "internal"  bonds, angles, torsions (InternalCoordinateTransform without the globals)
///   "cartesian" the free Cartesian coordinates in the canonical frame (to_canonical)
/// A new map registers its name once (register_coordinate_map) and then serves `bg train
/// --coordinates NAME`, BoltzmannGenerator and the model files.
class CoordinateMap {
 public:
  explicit CoordinateMap(ZMatrix z);
  virtual ~CoordinateMap() = default;
  virtual std::string name() const = 0;
  const ZMatrix& zmatrix() const { return z_; }
  /// Coordinates the model sees: 3N - 6 for "internal" and "cartesian", 3N for "centred"
  /// (cartesian.h).
  virtual int64_t dim() const { return z_.internal_dim(); }
  struct Result {
    torch::Tensor value;   ///< c [B, 3N-6] (to_flow) or x [B, 3N] (from_flow)
    torch::Tensor logdet;  ///< [B]; NaN where c lies outside the map's range
  };
  virtual Result to_flow(const torch::Tensor& x) const = 0;
  virtual Result from_flow(const torch::Tensor& c) const = 0;
  /// A fresh flow for these coordinates, standardised with training coordinates c_train.
  virtual std::shared_ptr<Flow> build_flow(const torch::Tensor& c_train, const ICFlowRecipe& recipe) const = 0;
  /// The energy of the flow's space, u(X(c)) + logdet(c) [B] (reduced), so that exp(-u_flow)
  /// is the Boltzmann density over c; outside the map's range a large finite value (1e12).
  torch::Tensor flow_energy(const torch::Tensor& c,
                            const std::function<torch::Tensor(const torch::Tensor&)>& energy_x) const;
  /// Columns of c that are angles of period 2 pi on (-pi, pi] (the torsions of "internal";
  /// none by default).
  virtual std::vector<int64_t> periodic() const { return {}; }
  /// c with its periodic columns mapped into (-pi, pi].
  torch::Tensor wrap(const torch::Tensor& c) const;
  /// Settings of the map that a model file must keep (null: none); configure() restores them
  /// (a usage error for a map without settings given some).
  virtual nlohmann::json config() const { return nullptr; }
  virtual void configure(const nlohmann::json& config);
  /// Data-dependent settings from the training coordinates c_train, before the model is built.
  virtual void fit(const torch::Tensor& /*c_train*/) {}
  /// A training minibatch c [B, dim] after the map's random augmentation (identity by
  /// default; "centred" turns and shifts), drawn from torch's global generator.
  virtual torch::Tensor augment(const torch::Tensor& c) const { return c; }

 protected:
  ZMatrix z_;
};

using CoordinateMapFactory = std::function<std::shared_ptr<CoordinateMap>(const ZMatrix&)>;
/// Registers (or replaces) a coordinate map under `name`.
void register_coordinate_map(const std::string& name, CoordinateMapFactory factory);
/// The map called `name` for Z-matrix z, configured with `config` when it is not null; a usage
/// error naming the known maps otherwise.
std::shared_ptr<CoordinateMap> make_coordinate_map(const std::string& name, const ZMatrix& z,
                                                   const nlohmann::json& config = nullptr);
/// The registered names, sorted.
std::vector<std::string> coordinate_map_names();

/// The Boltzmann distribution over a map's flow coordinates as an nfkit::Energy of c
/// [B, 3N-6]: u_flow(c) = u(X(c)) + logdet(c) (CoordinateMap::flow_energy), so that
/// exp(-u_flow) / Z is the target in the space the flow models, with forces by automatic
/// differentiation through the map and the Cartesian energy's forces. wrap() maps torsions
/// into (-pi, pi] (samplers move on the torus); rows outside the map's range (a negative bond,
/// an angle outside (0, pi)) get +inf and zero force. With stereocentres, so do configurations
/// in which any of them has the other handedness: the target is then the Boltzmann
/// distribution of the given enantiomer, which is what MD samples (it never inverts a
/// stereocentre) while the force field gives a mirror image the same energy -- trained from the
/// energy alone without this, a FAB run on alanine dipeptide put 99.6% of its samples on
/// D-alanine. For samplers and FAB in the flow's space:
///   nfkit::FlowCoordinateEnergy e(map, openmm, nfkit::stereocentres(mol));
///   nfkit::train_fab(flow, e, fab_options);
class FlowCoordinateEnergy : public Energy {
 public:
  FlowCoordinateEnergy(std::shared_ptr<const CoordinateMap> map, Energy& energy,
                       std::vector<Stereocentre> stereocentres = {});
  int64_t dim() const override { return map_->dim(); }
  std::string name() const override;
  torch::Tensor evaluate(const torch::Tensor& c, torch::Tensor* forces = nullptr) override;
  torch::Tensor wrap(const torch::Tensor& c) const override { return map_->wrap(c); }

 private:
  std::shared_ptr<const CoordinateMap> map_;
  Energy& energy_;
  std::vector<Stereocentre> stereocentres_;
};

class BoltzmannGenerator {
 public:
  /// coordinates: a registered CoordinateMap name: "internal" (the flow models bonds, angles,
  /// torsions) or "cartesian" (the flow models the free canonical Cartesian coordinates).
  BoltzmannGenerator(ZMatrix z, std::shared_ptr<Distribution> model, std::string coordinates = "internal");
  /// model: any Distribution over the map's coordinates (a flow, a TarFlow, an ArBG model).
  BoltzmannGenerator(std::shared_ptr<CoordinateMap> map, std::shared_ptr<Distribution> model);
  std::string coordinates() const { return map_->name(); }
  const CoordinateMap& coordinate_map() const { return *map_; }

  const ZMatrix& zmatrix() const { return z_; }
  Distribution& model() { return *model_; }
  std::shared_ptr<Distribution> model_ptr() { return model_; }
  /// The model as a Flow (null when it is another kind of density, e.g. ArBG's).
  std::shared_ptr<Flow> flow_ptr() { return std::dynamic_pointer_cast<Flow>(model_); }

  /// log q(x) [B] in the reduced space (see above), x [B, 3N] nm.
  torch::Tensor log_prob(const torch::Tensor& x);
  /// n samples: Cartesian x [n, 3N] nm (canonical frame) and log q(x) [n], float64 on CPU,
  /// drawn in chunks of `chunk` without gradients.
  std::pair<torch::Tensor, torch::Tensor> sample(int64_t n, int64_t chunk = 8192);

 private:
  ZMatrix z_;
  std::shared_ptr<Distribution> model_;
  std::shared_ptr<CoordinateMap> map_;
};

/// The energy of the flow's space: u_ic(q) = u(X(q)) - log|det dX/dq| [B] (reduced), so that
/// exp(-u_ic) is the Boltzmann density over internal coordinates. energy_x: u of Cartesian
/// configurations [B, 3N], differentiable.
torch::Tensor internal_energy(const ZMatrix& z, const torch::Tensor& q,
                              const std::function<torch::Tensor(const torch::Tensor&)>& energy_x);

/// Training-time regularisation of reduced energies for reverse KL (Noé et al. 2019, "lin-log"
/// cut): u below `high` unchanged, above it high + log(1 + u - high), and +inf or anything above
/// `max` replaced by the value at `max` with zero gradient. Keeps clashing samples from
/// dominating the gradient; never used for importance weights.
torch::Tensor linlog_cut(const torch::Tensor& u, double high = 1000.0, double max = 1e9);

}  // namespace nfkit
