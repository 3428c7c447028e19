#pragma once
// Building flows: from their JSON configuration (checkpoints), and from a short recipe
// (the command line's --flow KIND).
//
// Recipes (each layer = one block; L = layers):
//   realnvp : L x [AffineCoupling(parity l % 2)], random permutations between blocks if dim > 2
//   maf     : L x [MaskedAffineAutoregressive, reverse permutation]
//   nsf     : L x [SplineCoupling(parity l % 2)], random permutations between blocks if dim > 2
//   nsf-ar  : L x [SplineAutoregressive, reverse permutation]
// with, for the spline kinds, affine_layers affine blocks of the same family first (MAF for
// nsf-ar, affine couplings for nsf; each followed by a permutation), preceded by a fixed
// standardisation of the training data (so that spline intervals and
// initial scales fit the data) and over a standard normal base.
//
//   nfkit::FlowRecipe r; r.kind = "nsf"; r.dim = 2;
//   auto flow = nfkit::build_flow(r, train_x);
#include <functional>
#include <string>

#include "nfkit/flows/distribution.h"

namespace nfkit {

TransformPtr make_transform(const json& config);

/// Rebuilds a transform from its config(); register_transform adds a type (or replaces one):
/// a transform defined outside flows/ (boltzmann's internal coordinates, a user's) registers
/// its config "type" once and is then restored from checkpoints like the built-in ones.
using TransformFactory = std::function<TransformPtr(const json& config)>;
void register_transform(const std::string& type, TransformFactory factory);
/// The registered types, sorted.
std::vector<std::string> transform_types();
DistributionPtr make_distribution(const json& config);
/// A Flow from Flow::config(). Parameters are freshly initialised; load weights separately.
std::shared_ptr<Flow> make_flow(const json& config);

struct FlowRecipe {
  std::string kind = "nsf";  ///< realnvp | maf | nsf | nsf-ar
  int64_t dim = 2;
  int64_t layers = 4;
  int64_t hidden = 64;
  int64_t hidden_layers = 2;
  int64_t bins = 8;
  double bound = 4.0;
  /// Spline kinds: zero-initialised conditioners start at the identity (see SplineMap).
  bool identity_at_zero = false;
  /// Spline kinds: affine blocks before the spline blocks. A spline on [-bound, bound] cannot
  /// rescale by orders of magnitude (a funnel's neck); an affine autoregressive block can.
  int64_t affine_layers = 0;
  int64_t context_dim = 0;
  uint64_t seed = 1;  ///< seeds the random permutations
};

/// The flow kinds build_flow knows, for help texts and validation.
const std::vector<std::string>& flow_kinds();

/// Throws UsageError (naming --flow) unless kind is one of flow_kinds().
void check_flow_kind(const std::string& kind);

/// Builds a recipe's flow; with train_x [N, dim] the first layer standardises by its mean
/// and standard deviation. Float32; call ->to(torch::kFloat64) for double precision.
std::shared_ptr<Flow> build_flow(const FlowRecipe& recipe, const torch::Tensor& train_x = {});

}  // namespace nfkit
