// The "centred" coordinate map of Cartesian Boltzmann generators; conventions in cartesian.h.
#include "nfkit/boltzmann/cartesian.h"

#include <torch/torch.h>

#include <cmath>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"
#include "nfkit/flows/binned_autoregressive.h"
#include "nfkit/flows/linear.h"
#include "nfkit/flows/normalization.h"
#include "nfkit/flows/tarflow.h"

namespace nfkit {

using json = nlohmann::json;

torch::Tensor centre_configurations(const torch::Tensor& x) {
  const auto a = x.view({x.size(0), -1, 3});
  return (a - a.mean(1, true)).reshape({x.size(0), -1});
}

torch::Tensor random_rotations(int64_t n, torch::TensorOptions options) {
  // A normalised 4-D Gaussian is a uniform unit quaternion, whose rotation is uniform on SO(3).
  const auto q = torch::randn({n, 4}, options);
  const auto u = q / q.norm(2, 1, true);
  const auto w = u.select(1, 0), x = u.select(1, 1), y = u.select(1, 2), z = u.select(1, 3);
  return torch::stack({1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                       2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                       2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)}, 1)
      .view({n, 3, 3});
}

torch::Tensor rotate_configurations(const torch::Tensor& x, const torch::Tensor& R) {
  const auto a = x.view({x.size(0), -1, 3});
  return torch::matmul(a, R.transpose(1, 2)).reshape({x.size(0), -1});
}

namespace {
double log_truncated_mass(double k) {  // log P(|g| < k) for a standard normal g
  return std::log(std::erf(k / std::sqrt(2.0)));
}
}  // namespace

torch::Tensor CentredMap::neg_log_r(const torch::Tensor& t) const {
  if (!(sigma_ > 0.0))
    usage_error("centred coordinates", "the centre's spread sigma is not set (fit the map to data or configure it)");
  // a = sqrt(N) t has per-axis standard deviation sqrt(N) sigma; truncated at `truncation`
  // standard deviations per axis.
  const double n_atoms = static_cast<double>(z_.atoms());
  const double s_a = std::sqrt(n_atoms) * sigma_;
  const auto a = t * std::sqrt(n_atoms);
  auto nl = (a / s_a).square().sum(1) / 2 + 3 * (std::log(s_a) + 0.5 * std::log(2 * M_PI) + log_truncated_mass(truncation_));
  const auto beyond = (t.abs() > truncation_ * sigma_).any(1);
  return torch::where(beyond, torch::full_like(nl, NAN), nl);
}

CoordinateMap::Result CentredMap::to_flow(const torch::Tensor& x) const {
  const auto c = centre_configurations(x);
  if (!(sigma_ > 0.0))  // not fitted yet: the coordinates are known, the density correction is not
    return {c, torch::full({x.size(0)}, NAN, x.options())};
  return {c, neg_log_r(torch::zeros({x.size(0), 3}, x.options()))};
}

CoordinateMap::Result CentredMap::from_flow(const torch::Tensor& c) const {
  const auto t = c.view({c.size(0), -1, 3}).mean(1);
  return {centre_configurations(c), neg_log_r(t)};
}

std::shared_ptr<Flow> CentredMap::build_flow(const torch::Tensor& c_train, const ICFlowRecipe& recipe) const {
  return build_cartesian_spline_flow(dim(), c_train, recipe);
}

json CentredMap::config() const {
  return {{"sigma", sigma_}, {"truncation", truncation_}, {"rotations", rotations_}};
}

void CentredMap::configure(const json& c) {
  try {
    sigma_ = c.at("sigma").get<double>();
    truncation_ = c.value("truncation", 4.0);
    rotations_ = c.value("rotations", true);
  } catch (const json::exception& e) {
    usage_error("centred coordinates", std::string("malformed settings (") + e.what() + ")");
  }
  check_positive("centred coordinates", "sigma", sigma_);
  check_positive("centred coordinates", "truncation", truncation_);
}

void CentredMap::fit(const torch::Tensor& c_train) {
  check_dim("CentredMap::fit", "c_train", c_train, 2);
  const double s = centre_configurations(c_train).std().item<double>();
  sigma_ = s / std::sqrt(static_cast<double>(z_.atoms()));
}

torch::Tensor CentredMap::augment(const torch::Tensor& c) const {
  const int64_t B = c.size(0);
  auto x = centre_configurations(c);
  if (rotations_) x = rotate_configurations(x, random_rotations(B, c.options()));
  // Centres from the truncated normal, by rejection (a redraw is needed for 2e-4 of the rows).
  auto t = torch::randn({B, 3}, c.options()) * sigma_;
  for (auto bad = (t.abs() > truncation_ * sigma_).any(1); bad.any().item<bool>();
       bad = (t.abs() > truncation_ * sigma_).any(1)) {
    t = torch::where(bad.unsqueeze(1), torch::randn({B, 3}, c.options()) * sigma_, t);
  }
  return (x.view({B, -1, 3}) + t.unsqueeze(1)).reshape({B, -1});
}

void TransformerRecipe::check() const {
  check_positive_int("--blocks", "value", blocks);
  check_positive_int("--layers", "value", layers);
  check_positive_int("--hidden", "value", hidden);
  check_positive_int("--head-dim", "value", head_dim);
  if (hidden % head_dim != 0) usage_error("--hidden", "must be a multiple of --head-dim (" + std::to_string(head_dim) + ")");
  if (bins < 2) usage_error("--arbg-bins", "must be >= 2");
  if (tokens != "atom" && tokens != "coordinate")
    usage_error("--tokens", "'" + tokens + "' is not a token layout, expected atom or coordinate");
  if (order != "atom" && order != "axis")
    usage_error("--token-order", "'" + order + "' is not a token order, expected atom or axis");
  check_nonnegative("--box-margin", "value", margin);
}

json TransformerRecipe::to_json() const {
  return {{"blocks", blocks}, {"layers", layers}, {"hidden", hidden}, {"head_dim", head_dim},
          {"tokens", tokens}, {"bins", bins}, {"order", order}, {"margin", margin}};
}

const std::vector<std::string>& generator_model_kinds() {
  static const std::vector<std::string> kinds{"nsf", "tarflow", "arbg"};
  return kinds;
}

std::string model_type(const std::string& kind) {
  if (kind == "nsf" || kind == "tarflow") return "flow";
  if (kind == "arbg") return "binned_autoregressive";
  usage_error("--model", "'" + kind + "' is not a model kind, expected nsf, tarflow or arbg");
}

std::shared_ptr<Distribution> build_generator_model(const std::string& kind, const CoordinateMap& map,
                                                    const torch::Tensor& c_train, const ICFlowRecipe& recipe,
                                                    const TransformerRecipe& tr) {
  model_type(kind);  // names the kinds on a bad one
  check_dim("build_generator_model", "c_train", c_train, 2);
  check_size("build_generator_model", "c_train", c_train, 1, map.dim());
  if (kind == "nsf") return map.build_flow(c_train, recipe);
  tr.check();
  const int64_t D = map.dim();
  const auto train = c_train.to(torch::kFloat64);
  if (kind == "tarflow") {
    const bool atoms = tr.tokens == "atom";
    if (atoms && D != 3 * map.zmatrix().atoms())
      usage_error("--tokens", "atom tokens need the 3 coordinates of every atom; the " + map.name() + " coordinates are " +
                                  std::to_string(D) + " numbers for " + std::to_string(map.zmatrix().atoms()) +
                                  " atoms (use --tokens coordinate or --coordinates centred)");
    const int64_t T = atoms ? D / 3 : D;
    auto opts = TarFlowOptions().channels(atoms ? 3 : 1).height(T).width(1).patch(1).blocks(tr.blocks)
                    .layers(tr.layers).hidden(tr.hidden).head_dim(tr.head_dim);
    // One scale for every coordinate (the spread of augmented training coordinates; a rotated
    // molecule has no preferred axis), no shift (the map centres).
    const auto aug = map.augment(train);
    const double s = aug.std().item<double>();
    std::vector<TransformPtr> ts;
    ts.push_back(std::make_shared<ElementwiseAffine>(torch::zeros({D}, torch::kFloat64),
                                                     torch::full({D}, std::log(s), torch::kFloat64), false));
    if (atoms) {  // atom-major (n * 3 + k) -> TarFlow's channel-major layout (k * T + n)
      std::vector<int64_t> perm(static_cast<size_t>(D));
      for (int64_t k = 0; k < 3; ++k)
        for (int64_t n = 0; n < T; ++n) perm[static_cast<size_t>(k * T + n)] = n * 3 + k;
      ts.push_back(std::make_shared<Permutation>(perm));
    }
    ts.push_back(std::make_shared<TarFlow>(opts));
    return std::make_shared<Flow>(std::make_shared<StandardNormal>(D), std::make_shared<CompositeTransform>(ts));
  }
  // arbg
  BinnedAutoregressiveOptions o;
  o.dim = D;
  o.bins = tr.bins;
  o.layers = 2 * tr.layers;
  o.hidden = tr.hidden;
  o.head_dim = tr.head_dim;
  if (tr.order == "axis") {
    if (D != 3 * map.zmatrix().atoms())
      usage_error("--token-order", "axis order needs the 3 coordinates of every atom (--coordinates centred)");
    for (int64_t k = 0; k < 3; ++k)
      for (int64_t n = 0; n < D / 3; ++n) o.order.push_back(n * 3 + k);
  }
  torch::Tensor low, high;
  const auto* centred = dynamic_cast<const CentredMap*>(&map);
  if (centred && centred->rotations()) {
    const auto c = centre_configurations(train).view({train.size(0), -1, 3});
    const double R = c.norm(2, 2).max().item<double>() + centred->truncation() * centred->sigma();
    high = torch::full({D}, R * (1.0 + 2.0 * tr.margin), torch::kFloat64);
    low = -high;
  } else {
    auto lo = std::get<0>(train.min(0)), hi = std::get<0>(train.max(0));
    if (centred) {
      lo = lo - centred->truncation() * centred->sigma();
      hi = hi + centred->truncation() * centred->sigma();
    }
    const auto pad = ((hi - lo) * tr.margin).clamp_min(1e-6);
    low = lo - pad;
    high = hi + pad;
  }
  return std::make_shared<BinnedAutoregressive>(o, low, high);
}

}  // namespace nfkit
