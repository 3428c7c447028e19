#include "nfkit/flows/coupling.h"

#include <torch/torch.h>

#include "nfkit/core/checks.h"

namespace nfkit {

json CouplingOptions::to_json() const {
  json j = {{"dim", dim_},       {"parity", parity_},     {"hidden", hidden_},
            {"hidden_layers", hidden_layers_}, {"context_dim", context_dim_},
            {"scale_clamp", scale_clamp_}, {"bins", bins_}, {"bound", bound_},
            {"circular", circular_}};
  if (!mask_.empty()) j["mask"] = mask_;
  if (!circular_dims_.empty()) j["circular_dims"] = circular_dims_;
  if (identity_at_zero_) j["identity_at_zero"] = true;  // absent: files from before it existed
  return j;
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
      .circular(j.at("circular").get<bool>())
      .mask(j.value("mask", std::vector<int64_t>{}))
      .circular_dims(j.value("circular_dims", std::vector<int64_t>{}))
      .identity_at_zero(j.value("identity_at_zero", false));
}

CouplingTransform::CouplingTransform(const CouplingOptions& opts,
                                     std::unique_ptr<ElementwiseMap> map, std::string type)
    : Transform(opts.dim(), opts.context_dim()), opts_(opts), map_(std::move(map)), type_(std::move(type)) {
  if (opts.dim() < 2)
    usage_error("Coupling", "dim is " + std::to_string(opts.dim()) + ", but a coupling needs >= 2");
  if (opts.parity() != 0 && opts.parity() != 1)
    usage_error("Coupling", "parity is " + std::to_string(opts.parity()) + ", but must be 0 or 1");
  auto all = torch::arange(opts.dim(), torch::kInt64);
  auto is_t = all.remainder(2) == opts.parity();
  auto check_indices = [&](const std::vector<int64_t>& v, const char* name) {
    std::vector<bool> seen(opts.dim(), false);
    for (int64_t i : v) {
      if (i < 0 || i >= opts.dim() || seen[i])
        usage_error("Coupling", std::string(name) + " holds " + std::to_string(i) +
                                    ", but indices must be distinct and in [0, " +
                                    std::to_string(opts.dim()) + ")");
      seen[i] = true;
    }
  };
  if (!opts.mask().empty()) {
    check_indices(opts.mask(), "mask");
    if (static_cast<int64_t>(opts.mask().size()) >= opts.dim())
      usage_error("Coupling", "mask must leave at least one coordinate to condition on");
    is_t = torch::zeros({opts.dim()}, torch::kBool);
    for (int64_t i : opts.mask()) is_t[i] = true;
  }
  check_indices(opts.circular_dims(), "circular_dims");
  // Plain members, not buffers: Module::to(dtype) would turn integer buffers into floats.
  transform_idx_ = all.masked_select(is_t);
  identity_idx_ = all.masked_select(is_t.logical_not());
  const int64_t n_id = identity_idx_.numel(), n_t = transform_idx_.numel();
  int64_t features = map_->circular() ? 2 * n_id : n_id;
  if (!opts.circular_dims().empty()) {
    std::vector<bool> circ(opts.dim(), false);
    for (int64_t i : opts.circular_dims()) circ[i] = true;
    std::vector<int64_t> plain, angles;
    for (int64_t p = 0; p < n_id; ++p)
      (circ[identity_idx_[p].item<int64_t>()] ? angles : plain).push_back(p);
    plain_feat_ = torch::tensor(plain, torch::kInt64);
    circ_feat_ = torch::tensor(angles, torch::kInt64);
    features = static_cast<int64_t>(plain.size() + 2 * angles.size());
  }
  net_ = register_module(
      "net", MLP(features + opts.context_dim(), n_t * map_->params(),
                 NetOptions{opts.hidden(), opts.hidden_layers()}));
}

ValueAndLogDet CouplingTransform::apply(const torch::Tensor& x, const torch::Tensor& context,
                                        bool inverse) {
  if (identity_idx_.device() != x.device()) {
    identity_idx_ = identity_idx_.to(x.device());
    transform_idx_ = transform_idx_.to(x.device());
    if (plain_feat_.defined()) {
      plain_feat_ = plain_feat_.to(x.device());
      circ_feat_ = circ_feat_.to(x.device());
    }
  }
  const auto xa = x.index_select(1, identity_idx_);
  const auto xb = x.index_select(1, transform_idx_);
  torch::Tensor h;
  if (plain_feat_.defined()) {
    const auto ang = xa.index_select(1, circ_feat_);
    h = torch::cat({xa.index_select(1, plain_feat_), torch::cos(ang), torch::sin(ang)}, 1);
  } else {
    h = conditioner_features(xa, *map_);
  }
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
    : CouplingTransform(opts, std::make_unique<SplineMap>(opts.bins(), opts.bound(), opts.circular(),
                                                                  opts.identity_at_zero()), "spline_coupling") {}

}  // namespace nfkit
