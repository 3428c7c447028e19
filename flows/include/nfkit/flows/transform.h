#pragma once
// The bijection contract of nfkit (after zuko's call_and_ladj and nflows' Transform).
//
// Direction: forward maps DATA to LATENT, x -> z, and returns {z, log|det dz/dx|};
// inverse maps latent to data, z -> x, and returns {x, log|det dx/dz|}. Both log-determinants
// have shape [B]. Inputs are [B, dim]; a transform constructed with context_dim > 0 requires a
// context [B, context_dim] of the same dtype and device, one constructed with context_dim == 0
// rejects a context.
//
// Public methods validate (shape, dtype, device, context) and then call the protected
// *_impl virtuals, which trust their inputs (non-virtual interface).
//
// Every transform can describe itself as JSON (config()); make_transform() in builder.h
// rebuilds an identical, untrained module from it, and load_state() fills in the weights.
//
//   auto t = std::make_shared<nfkit::AffineCoupling>(nfkit::AffineCouplingOptions(4));
//   auto [z, ladj] = t->forward(x);          // x: [B, 4]
//   auto [x2, ladj_inv] = t->inverse(z);     // x2 == x, ladj_inv == -ladj
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <tuple>
#include <vector>

namespace nfkit {

using json = nlohmann::json;
/// {value, log|det|} with log|det| of shape [B].
using ValueAndLogDet = std::tuple<torch::Tensor, torch::Tensor>;

class Transform : public torch::nn::Module {
 public:
  Transform(int64_t dim, int64_t context_dim);
  ~Transform() override = default;

  /// Data -> latent: {z, log|det dz/dx|}.
  ValueAndLogDet forward(const torch::Tensor& x, const torch::Tensor& context = {});
  /// Latent -> data: {x, log|det dx/dz|}.
  ValueAndLogDet inverse(const torch::Tensor& z, const torch::Tensor& context = {});

  int64_t dim() const { return dim_; }
  int64_t context_dim() const { return context_dim_; }

  /// JSON description {"type": ..., options...} from which make_transform() rebuilds it.
  virtual json config() const = 0;

  /// False where a direction is computed iteratively (autoregressive transforms): that
  /// direction is exact after `dim` sequential passes, one per coordinate (no tolerance).
  virtual bool forward_is_single_pass() const { return true; }
  virtual bool inverse_is_single_pass() const { return true; }

 protected:
  virtual ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) = 0;
  virtual ValueAndLogDet inverse_impl(const torch::Tensor& z, const torch::Tensor& context) = 0;

 private:
  void check_input(const char* fn, const char* name, const torch::Tensor& x,
                   const torch::Tensor& context) const;
  int64_t dim_;
  int64_t context_dim_;
};

using TransformPtr = std::shared_ptr<Transform>;

/// A sequence t_1, ..., t_n: forward applies t_1 first; log|det|s add. The context is passed
/// to the members built to take one, and withheld from the others.
class CompositeTransform : public Transform {
 public:
  explicit CompositeTransform(std::vector<TransformPtr> transforms);
  json config() const override;
  bool forward_is_single_pass() const override;
  bool inverse_is_single_pass() const override;
  const std::vector<TransformPtr>& transforms() const { return transforms_; }

 protected:
  ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  ValueAndLogDet inverse_impl(const torch::Tensor& z, const torch::Tensor& context) override;

 private:
  std::vector<TransformPtr> transforms_;
};

/// Swaps the directions of a transform: forward(x) = base.inverse(x). Turns a masked
/// autoregressive flow (MAF, fast density) into an inverse autoregressive flow (IAF, fast
/// sampling).
class InverseTransform : public Transform {
 public:
  explicit InverseTransform(TransformPtr base);
  json config() const override;
  bool forward_is_single_pass() const override { return base_->inverse_is_single_pass(); }
  bool inverse_is_single_pass() const override { return base_->forward_is_single_pass(); }
  const TransformPtr& base() const { return base_; }

 protected:
  ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  ValueAndLogDet inverse_impl(const torch::Tensor& z, const torch::Tensor& context) override;

 private:
  TransformPtr base_;
};

}  // namespace nfkit
