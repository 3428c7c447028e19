#include "nfkit/flows/coupling.h"

#include <torch/torch.h>

#include "nfkit/core/checks.h"

namespace nfkit {

json CouplingOptions::to_json() const {
  return {{"dim", dim_},       {"parity", parity_},     {"hidden", hidden_},
          {"hidden_layers", hidden_layers_}, {"context_dim", context_dim_},
          {"scale_clamp", scale_clamp_}, {"bins", bins_}, {"bound", bound_},
          {"circular", circular_}};
}

CouplingOptions CouplingOptions::from_json(const json& j) {
  return CouplingOptions(j.at("dim").get<int64_t>())
      .parity(j.at("parity").get<int64_t>())
      .hidden(j.at("hidden").get<int64_t>())
      .hidden_layers(j.at("hidden_layers").get<int64_t>())
      .context_dim(j.at("context_dim").get<int64_t>())
      .scale_clamp(j.at("scale_clamp").get<double>())
      .bins(j.at("bins").get<int64_t>())
      .bound(j.at("bound").get<double>())
      .circular(j.at("circular").get<bool>());
}

CouplingTransform::CouplingTransform(const CouplingOptions& opts,
                                     std::unique_ptr<ElementwiseMap> map, std::string type)
    : Transform(opts.dim(), opts.context_dim()), opts_(opts), map_(std::move(map)), type_(std::move(type)) {
  if (opts.dim() < 2)
    usage_error("Coupling", "dim is " + std::to_string(opts.dim()) + ", but a coupling needs >= 2");
  if (opts.parity() != 0 && opts.parity() != 1)
    usage_error("Coupling", "parity is " + std::to_string(opts.parity()) + ", but must be 0 or 1");
  auto all = torch::arange(opts.dim(), torch::kInt64);
  const auto is_t = all.remainder(2) == opts.parity();
  // Plain members, not buffers: Module::to(dtype) would turn integer buffers into floats.
  transform_idx_ = all.masked_select(is_t);
  identity_idx_ = all.masked_select(is_t.logical_not());
  const int64_t n_id = identity_idx_.numel(), n_t = transform_idx_.numel();
  const int64_t features = map_->circular() ? 2 * n_id : n_id;
  net_ = register_module(
      "net", MLP(features + opts.context_dim(), n_t * map_->params(),
                 NetOptions{opts.hidden(), opts.hidden_layers()}));
}

ValueAndLogDet CouplingTransform::apply(const torch::Tensor& x, const torch::Tensor& context,
                                        bool inverse) {
  if (identity_idx_.device() != x.device()) {
    identity_idx_ = identity_idx_.to(x.device());
    transform_idx_ = transform_idx_.to(x.device());
  }
  const auto xa = x.index_select(1, identity_idx_);
  const auto xb = x.index_select(1, transform_idx_);
  auto h = conditioner_features(xa, *map_);
  if (context.defined()) h = torch::cat({h, context}, 1);
  const auto params = net_->forward(h).view({x.size(0), xb.size(1), map_->params()});
  auto [yb, lad] = map_->apply(xb, params, inverse);
  return {x.index_copy(1, transform_idx_, yb), lad.sum(1)};
}

ValueAndLogDet CouplingTransform::forward_impl(const torch::Tensor& x, const torch::Tensor& c) {
  return apply(x, c, false);
}

ValueAndLogDet CouplingTransform::inverse_impl(const torch::Tensor& z, const torch::Tensor& c) {
  return apply(z, c, true);
}

json CouplingTransform::config() const { return {{"type", type_}, {"options", opts_.to_json()}}; }

AffineCoupling::AffineCoupling(const CouplingOptions& opts)
    : CouplingTransform(opts, std::make_unique<AffineMap>(opts.scale_clamp()), "affine_coupling") {}

SplineCoupling::SplineCoupling(const CouplingOptions& opts)
    : CouplingTransform(opts, std::make_unique<SplineMap>(opts.bins(), opts.bound(), opts.circular()), "spline_coupling") {}

}  // namespace nfkit
