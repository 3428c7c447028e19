#include "nfkit/flows/builder.h"


#include <torch/torch.h>

#include "nfkit/core/checks.h"
#include "nfkit/core/registry.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/autoregressive.h"
#include "nfkit/flows/binned_autoregressive.h"
#include "nfkit/flows/coupling.h"
#include "nfkit/flows/linear.h"
#include "nfkit/flows/normalization.h"
#include "nfkit/flows/sources.h"
#include "nfkit/flows/tarflow.h"

namespace nfkit {

namespace {

Registry<TransformFactory>& transform_registry() {
  static Registry<TransformFactory> r({
      {"composite",
       [](const json& c) -> TransformPtr {
         std::vector<TransformPtr> ts;
         for (const auto& m : c.at("transforms")) ts.push_back(make_transform(m));
         return std::make_shared<CompositeTransform>(ts);
       }},
      {"inverse", [](const json& c) -> TransformPtr { return std::make_shared<InverseTransform>(make_transform(c.at("base"))); }},
      {"affine_coupling",
       [](const json& c) -> TransformPtr { return std::make_shared<AffineCoupling>(CouplingOptions::from_json(c.at("options"))); }},
      {"spline_coupling",
       [](const json& c) -> TransformPtr { return std::make_shared<SplineCoupling>(CouplingOptions::from_json(c.at("options"))); }},
      {"affine_autoregressive",
       [](const json& c) -> TransformPtr {
         return std::make_shared<MaskedAffineAutoregressive>(AutoregressiveOptions::from_json(c.at("options")));
       }},
      {"spline_autoregressive",
       [](const json& c) -> TransformPtr {
         return std::make_shared<SplineAutoregressive>(AutoregressiveOptions::from_json(c.at("options")));
       }},
      {"permutation",
       [](const json& c) -> TransformPtr { return std::make_shared<Permutation>(c.at("permutation").get<std::vector<int64_t>>()); }},
      {"lu_linear",
       [](const json& c) -> TransformPtr {
         return std::make_shared<LULinear>(LULinearOptions(c.at("options").at("dim").get<int64_t>())
                                               .seed(c.at("options").at("seed").get<uint64_t>()));
       }},
      {"tarflow", [](const json& c) -> TransformPtr { return std::make_shared<TarFlow>(TarFlowOptions::from_json(c.at("options"))); }},
      {"actnorm", [](const json& c) -> TransformPtr { return std::make_shared<ActNorm>(c.at("dim").get<int64_t>()); }},
      {"elementwise_affine",
       [](const json& c) -> TransformPtr {
         const int64_t d = c.at("dim").get<int64_t>();
         return std::make_shared<ElementwiseAffine>(torch::zeros({d}), torch::zeros({d}), c.at("learnable").get<bool>());
       }},
  });
  return r;
}

}  // namespace

void register_transform(const std::string& type, TransformFactory factory) {
  transform_registry().add("register_transform", type, std::move(factory));
}

std::vector<std::string> transform_types() { return transform_registry().names(); }

TransformPtr make_transform(const json& c) {
  const std::string type = c.at("type").get<std::string>();
  const auto f = transform_registry().find(type);
  if (!f)
    runtime_error("make_transform", "unknown transform type '" + type + "', expected one of " +
                                        transform_registry().joined_names());
  return f(c);
}

DistributionPtr make_distribution(const json& c) {
  const std::string type = c.at("type").get<std::string>();
  if (type == "standard_normal") return std::make_shared<StandardNormal>(c.at("dim").get<int64_t>());
  if (type == "diagonal_normal") return std::make_shared<DiagonalNormal>(c.at("dim").get<int64_t>());
  if (type == "normal_torus")
    return std::make_shared<NormalTorus>(c.at("dim").get<int64_t>(),
                                         c.at("circular_dims").get<std::vector<int64_t>>());
  if (type == "box_uniform")
    return std::make_shared<BoxUniform>(
        torch::tensor(c.at("low").get<std::vector<double>>(), torch::kFloat64),
        torch::tensor(c.at("high").get<std::vector<double>>(), torch::kFloat64));
  if (type == "flow") return make_flow(c);
  if (type == "binned_autoregressive")
    return std::make_shared<BinnedAutoregressive>(
        BinnedAutoregressiveOptions::from_json(c.at("options")),
        torch::tensor(c.at("low").get<std::vector<double>>(), torch::kFloat64),
        torch::tensor(c.at("high").get<std::vector<double>>(), torch::kFloat64));
  if (type == "toy_density") return std::make_shared<ToyDistribution>(c.at("spec").get<std::string>());
  if (type == "empirical")  // the rows are a buffer, filled by read_state
    return std::make_shared<Empirical>(torch::zeros({c.at("n").get<int64_t>(), c.at("dim").get<int64_t>()}));
  runtime_error("make_distribution", "unknown distribution type '" + type + "'");
}

std::shared_ptr<Flow> make_flow(const json& c) {
  if (c.value("type", "") != "flow") runtime_error("make_flow", "configuration is not a flow");
  return std::make_shared<Flow>(make_distribution(c.at("base")), make_transform(c.at("transform")));
}

const std::vector<std::string>& flow_kinds() {
  static const std::vector<std::string> kinds{"realnvp", "maf", "nsf", "nsf-ar"};
  return kinds;
}

void check_flow_kind(const std::string& kind) {
  const auto& kinds = flow_kinds();
  if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end())
    usage_error("--flow", "'" + kind + "' is not a flow kind, expected realnvp, maf, nsf or nsf-ar");
}

std::shared_ptr<Flow> build_flow(const FlowRecipe& r, const torch::Tensor& train_x) {
  const char* fn = "build_flow";
  check_positive_int(fn, "dim", r.dim);
  check_positive_int(fn, "layers", r.layers);
  check_flow_kind(r.kind);
  const bool coupling = r.kind == "realnvp" || r.kind == "nsf";
  if (coupling && r.dim < 2)
    usage_error("--flow", r.kind + " is a coupling flow and needs dim >= 2; use maf or nsf-ar for 1-D data");

  std::vector<TransformPtr> ts;
  if (train_x.defined()) {
    check_dim(fn, "train_x", train_x, 2);
    check_size(fn, "train_x", train_x, 1, r.dim);
    ts.push_back(ElementwiseAffine::standardize(train_x));
  }
  if (r.affine_layers < 0)
    usage_error("--affine-layers", "is " + std::to_string(r.affine_layers) + ", but must be >= 0");
  const bool spline = r.kind == "nsf" || r.kind == "nsf-ar";
  for (int64_t l = 0; spline && l < r.affine_layers; ++l) {
    // Parities and permutation seeds of their own: the spline blocks after them keep the
    // parities and permutations they have without affine blocks.
    if (coupling) {
      ts.push_back(std::make_shared<AffineCoupling>(
          CouplingOptions(r.dim).parity(l % 2).hidden(r.hidden).hidden_layers(r.hidden_layers)
              .context_dim(r.context_dim)));
      if (r.dim > 2)
        ts.push_back(Permutation::random(r.dim, derive_seed(r.seed, 11, static_cast<uint64_t>(l))));
    } else {
      ts.push_back(std::make_shared<MaskedAffineAutoregressive>(
          AutoregressiveOptions(r.dim).hidden(r.hidden).hidden_layers(r.hidden_layers)
              .context_dim(r.context_dim)));
      if (r.dim > 1) ts.push_back(Permutation::reverse(r.dim));
    }
  }
  for (int64_t l = 0; l < r.layers; ++l) {
    if (coupling) {
      auto o = CouplingOptions(r.dim).parity(l % 2).hidden(r.hidden).hidden_layers(r.hidden_layers)
                   .context_dim(r.context_dim).bins(r.bins).bound(r.bound)
                   .identity_at_zero(r.identity_at_zero);
      if (r.kind == "realnvp")
        ts.push_back(std::make_shared<AffineCoupling>(o));
      else
        ts.push_back(std::make_shared<SplineCoupling>(o));
      if (r.dim > 2 && l + 1 < r.layers)
        ts.push_back(Permutation::random(r.dim, derive_seed(r.seed, 7, static_cast<uint64_t>(l))));
    } else {
      auto o = AutoregressiveOptions(r.dim).hidden(r.hidden).hidden_layers(r.hidden_layers)
                   .context_dim(r.context_dim).bins(r.bins).bound(r.bound)
                   .identity_at_zero(r.identity_at_zero);
      if (r.kind == "maf")
        ts.push_back(std::make_shared<MaskedAffineAutoregressive>(o));
      else
        ts.push_back(std::make_shared<SplineAutoregressive>(o));
      if (r.dim > 1 && l + 1 < r.layers) ts.push_back(Permutation::reverse(r.dim));
    }
  }
  return std::make_shared<Flow>(std::make_shared<StandardNormal>(r.dim),
                                std::make_shared<CompositeTransform>(ts));
}

}  // namespace nfkit
