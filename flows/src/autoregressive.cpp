#include "nfkit/flows/autoregressive.h"

#include <torch/torch.h>

namespace nfkit {

json AutoregressiveOptions::to_json() const {
  json j = {{"dim", dim_},           {"hidden", hidden_},   {"hidden_layers", hidden_layers_},
            {"context_dim", context_dim_}, {"scale_clamp", scale_clamp_}, {"bins", bins_},
            {"bound", bound_},       {"circular", circular_}};
  if (identity_at_zero_) j["identity_at_zero"] = true;  // absent: files from before it existed
  return j;
}

AutoregressiveOptions AutoregressiveOptions::from_json(const json& j) {
  return AutoregressiveOptions(j.at("dim").get<int64_t>())
      .hidden(j.at("hidden").get<int64_t>())
      .hidden_layers(j.at("hidden_layers").get<int64_t>())
      .context_dim(j.at("context_dim").get<int64_t>())
      .scale_clamp(j.at("scale_clamp").get<double>())
      .bins(j.at("bins").get<int64_t>())
      .bound(j.at("bound").get<double>())
      .circular(j.at("circular").get<bool>())
      .identity_at_zero(j.value("identity_at_zero", false));
}

AutoregressiveTransform::AutoregressiveTransform(const AutoregressiveOptions& opts,
                                                 std::unique_ptr<ElementwiseMap> map, std::string type)
    : Transform(opts.dim(), opts.context_dim()), opts_(opts), map_(std::move(map)), type_(std::move(type)) {
  std::vector<int64_t> degrees;
  const int reps = map_->circular() ? 2 : 1;  // cos and sin features of each angle
  for (int r = 0; r < reps; ++r)
    for (int64_t i = 1; i <= opts.dim(); ++i) degrees.push_back(i);
  made_ = register_module("made", MADE(opts.dim(), degrees, map_->params(), opts.context_dim(),
                                       NetOptions{opts.hidden(), opts.hidden_layers()}));
}

torch::Tensor AutoregressiveTransform::params(const torch::Tensor& x, const torch::Tensor& c) {
  return made_->forward(conditioner_features(x, *map_), c);
}

ValueAndLogDet AutoregressiveTransform::forward_impl(const torch::Tensor& x,
                                                     const torch::Tensor& c) {
  auto [z, lad] = map_->apply(x, params(x, c), /*inverse=*/false);
  return {z, lad.sum(1)};
}

ValueAndLogDet AutoregressiveTransform::inverse_impl(const torch::Tensor& z,
                                                     const torch::Tensor& c) {
  // Pass k fixes coordinate k exactly (its parameters depend on coordinates < k only,
  // already final), so `dim` passes invert exactly.
  torch::Tensor x = torch::zeros_like(z);
  torch::Tensor lad;
  for (int64_t k = 0; k < dim(); ++k) std::tie(x, lad) = map_->apply(z, params(x, c), true);
  return {x, lad.sum(1)};
}

json AutoregressiveTransform::config() const { return {{"type", type_}, {"options", opts_.to_json()}}; }

MaskedAffineAutoregressive::MaskedAffineAutoregressive(const AutoregressiveOptions& opts)
    : AutoregressiveTransform(opts, std::make_unique<AffineMap>(opts.scale_clamp()), "affine_autoregressive") {}

SplineAutoregressive::SplineAutoregressive(const AutoregressiveOptions& opts)
    : AutoregressiveTransform(opts, std::make_unique<SplineMap>(opts.bins(), opts.bound(), opts.circular(),
                                                                     opts.identity_at_zero()), "spline_autoregressive") {}

}  // namespace nfkit
