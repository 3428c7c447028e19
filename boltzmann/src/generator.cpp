#include "nfkit/boltzmann/generator.h"

#include "nfkit/boltzmann/cartesian.h"

#include <torch/torch.h>

#include <random>

#include "nfkit/core/checks.h"
#include "nfkit/core/registry.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/coupling.h"
#include "nfkit/flows/normalization.h"

namespace nfkit {

// ---- InternalCoordinateTransform ------------------------------------------------------------

InternalCoordinateTransform::InternalCoordinateTransform(ZMatrix z)
    : Transform(3 * z.atoms(), 0), z_(std::move(z)) {
  z_.validate();
}

void register_boltzmann_transforms() {
  static const bool once = [] {
    register_transform("internal_coordinates", [](const json& c) -> TransformPtr {
      return std::make_shared<InternalCoordinateTransform>(ZMatrix::from_json(c.at("zmatrix")));
    });
    return true;
  }();
  (void)once;
}

namespace {
// Registered when the library is loaded (this file holds the generator, so it is linked
// wherever Boltzmann generators are used); register_boltzmann_transforms() is idempotent.
const bool kRegistered = (register_boltzmann_transforms(), true);
}  // namespace

json InternalCoordinateTransform::config() const {
  return {{"type", "internal_coordinates"}, {"zmatrix", z_.to_json()}};
}

ValueAndLogDet InternalCoordinateTransform::forward_impl(const torch::Tensor& x,
                                                         const torch::Tensor&) {
  auto r = to_internal(z_, x, /*with_globals=*/true);
  return {r.q, r.logdet};
}

ValueAndLogDet InternalCoordinateTransform::inverse_impl(const torch::Tensor& q,
                                                         const torch::Tensor&) {
  auto r = from_internal(z_, q);
  return {r.x, r.logdet};
}

// ---- the flow -------------------------------------------------------------------------------

std::shared_ptr<Flow> build_ic_flow(const ZMatrix& z, const torch::Tensor& q_train,
                                    const ICFlowRecipe& r) {
  const int64_t D = z.internal_dim();
  check_dim("build_ic_flow", "q_train", q_train, 2);
  check_size("build_ic_flow", "q_train", q_train, 1, D);
  check_positive_int("build_ic_flow", "layers", r.layers);
  const int64_t t0 = z.torsions_begin();
  std::vector<int64_t> torsions, others;
  for (int64_t i = 0; i < D; ++i) (i >= t0 ? torsions : others).push_back(i);

  // Fixed z-scoring of bonds and angles; torsions untouched.
  const auto q = q_train.to(torch::kFloat64);
  auto shift = torch::zeros({D}, torch::kFloat64);
  auto log_scale = torch::zeros({D}, torch::kFloat64);
  const auto ba = q.slice(1, 0, t0);
  shift.slice(0, 0, t0).copy_(ba.mean(0));
  log_scale.slice(0, 0, t0).copy_(torch::log(ba.std(0).clamp_min(1e-6)));
  std::vector<TransformPtr> layers;
  layers.push_back(std::make_shared<ElementwiseAffine>(shift, log_scale, /*learnable=*/false));

  std::mt19937_64 rng(r.seed);
  auto halves = [&](std::vector<int64_t> v) {
    std::shuffle(v.begin(), v.end(), rng);
    const size_t h = v.size() / 2;
    std::vector<int64_t> a(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(h));
    std::vector<int64_t> b(v.begin() + static_cast<std::ptrdiff_t>(h), v.end());
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    return std::make_pair(a, b);
  };
  auto coupling = [&](const std::vector<int64_t>& mask, bool circular) {
    auto o = CouplingOptions(D)
                 .hidden(r.hidden)
                 .hidden_layers(r.hidden_layers)
                 .bins(r.bins)
                 .bound(circular ? M_PI : r.bound)
                 .circular(circular)
                 .mask(mask)
                 .circular_dims(torsions);
    return std::make_shared<SplineCoupling>(o);
  };
  for (int64_t l = 0; l < r.layers; ++l) {
    auto [ta, tb] = halves(torsions);
    auto [oa, ob] = halves(others);
    if (!ta.empty()) layers.push_back(coupling(ta, true));
    if (!tb.empty()) layers.push_back(coupling(tb, true));
    if (!oa.empty()) layers.push_back(coupling(oa, false));
    if (!ob.empty()) layers.push_back(coupling(ob, false));
  }
  auto transform = std::make_shared<CompositeTransform>(layers);
  auto base = std::make_shared<NormalTorus>(D, torsions);
  return std::make_shared<Flow>(base, transform);
}

// ---- BoltzmannGenerator ---------------------------------------------------------------------

namespace {
// Indices of the free canonical coordinates in the flattened [3N] positions.
std::vector<int64_t> free_indices(const ZMatrix& z) {
  const int64_t a0 = z.rows[0][0], a1 = z.rows[1][0], a2 = z.rows[2][0];
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < z.atoms(); ++i) {
    if (i == a0) continue;
    if (i == a1) {
      idx.push_back(3 * i + 2);
      continue;
    }
    if (i == a2) {
      idx.push_back(3 * i);
      idx.push_back(3 * i + 2);
      continue;
    }
    for (int d = 0; d < 3; ++d) idx.push_back(3 * i + d);
  }
  return idx;
}
}  // namespace

CanonicalResult to_canonical(const ZMatrix& z, const torch::Tensor& x) {
  const auto q = to_internal(z, x).q;
  const auto placed = from_internal(z, q).x;  // the canonical frame
  const auto idx = torch::tensor(free_indices(z), torch::kInt64).to(x.device());
  const int64_t a2 = z.rows[2][0];
  const auto rho2 = placed.select(1, 3 * a2);
  return {placed.index_select(1, idx), -2.0 * torch::log(q.select(1, 0)) - torch::log(rho2)};
}

CanonicalResult from_canonical(const ZMatrix& z, const torch::Tensor& c, torch::Tensor* x) {
  check_dim("from_canonical", "c", c, 2);
  check_size("from_canonical", "c", c, 1, z.internal_dim());
  const auto idx = torch::tensor(free_indices(z), torch::kInt64).to(c.device());
  *x = torch::zeros({c.size(0), 3 * z.atoms()}, c.options()).index_copy(1, idx, c);
  const int64_t a1 = z.rows[1][0], a2 = z.rows[2][0];
  const auto b1 = x->select(1, 3 * a1 + 2);
  const auto rho2 = x->select(1, 3 * a2);
  auto ld = -2.0 * torch::log(b1) - torch::log(rho2);
  ld = torch::where((b1 > 0) & (rho2 > 0), ld, torch::full_like(ld, NAN));
  return {c, ld};
}

std::shared_ptr<Flow> build_cartesian_spline_flow(int64_t dim, const torch::Tensor& c_train,
                                                  const ICFlowRecipe& recipe) {
  FlowRecipe fr;
  fr.kind = "nsf";
  fr.dim = dim;
  fr.layers = 4 * recipe.layers;  // as many couplings as the internal-coordinate flow
  fr.hidden = recipe.hidden;
  fr.hidden_layers = recipe.hidden_layers;
  fr.bins = recipe.bins;
  fr.bound = recipe.bound;
  fr.seed = recipe.seed;
  return nfkit::build_flow(fr, c_train);
}

// ---- coordinate maps ------------------------------------------------------------------------

CoordinateMap::CoordinateMap(ZMatrix z) : z_(std::move(z)) { z_.validate(); }

torch::Tensor CoordinateMap::flow_energy(
    const torch::Tensor& c, const std::function<torch::Tensor(const torch::Tensor&)>& energy_x) const {
  const auto r = from_flow(c);
  return energy_x(r.value) + torch::nan_to_num(r.logdet, 1e12);
}

torch::Tensor CoordinateMap::wrap(const torch::Tensor& c) const {
  const auto cols = periodic();
  if (cols.empty()) return c;
  auto out = c.clone();
  const auto idx = torch::tensor(cols, torch::kInt64).to(c.device());
  const auto t = c.index_select(1, idx);
  // Into (-pi, pi]: pi - ((pi - t) mod 2 pi), with the floor-mod of torch::remainder.
  out.index_copy_(1, idx, M_PI - torch::remainder(M_PI - t, 2.0 * M_PI));
  return out;
}

void CoordinateMap::configure(const json& config) {
  if (!config.is_null() && !config.empty())
    usage_error("coordinate map", "the " + name() + " coordinates take no settings, got " + config.dump());
}

FlowCoordinateEnergy::FlowCoordinateEnergy(std::shared_ptr<const CoordinateMap> map, Energy& energy,
                                           std::vector<Stereocentre> stereocentres)
    : map_(std::move(map)), energy_(energy), stereocentres_(std::move(stereocentres)) {
  if (energy_.dim() != 3 * map_->zmatrix().atoms())
    usage_error("energy", energy_.name() + " has dimension " + std::to_string(energy_.dim()) +
                              ", expected 3N = " + std::to_string(3 * map_->zmatrix().atoms()));
}

std::string FlowCoordinateEnergy::name() const { return energy_.name() + " in " + map_->name() + " coordinates"; }

torch::Tensor FlowCoordinateEnergy::evaluate(const torch::Tensor& c, torch::Tensor* forces) {
  check_dim("FlowCoordinateEnergy", "c", c, 2);
  check_size("FlowCoordinateEnergy", "c", c, 1, dim());
  const auto cw = map_->wrap(c.detach().to(torch::kFloat64).cpu());
  torch::Tensor wrong;  // the other handedness at a stereocentre, judged on the configuration
                        // the map builds for the energy
  auto energy_x = [this, &wrong, forces](const torch::Tensor& x) {
    if (!stereocentres_.empty()) wrong = ~chirality_ok(x.detach(), stereocentres_);
    return forces ? reduced_energy(energy_, x) : energy_.evaluate(x);
  };
  // flow_energy puts 1e12 outside the map's range; anything that large is +inf here.
  auto finalize = [&wrong](const torch::Tensor& u) {
    auto bad = ~(u < 1e11);
    if (wrong.defined()) bad = bad | wrong;
    return std::make_pair(torch::where(bad, torch::full_like(u, INFINITY), u), bad);
  };
  if (!forces) {
    torch::NoGradGuard ng;
    return finalize(map_->flow_energy(cw, energy_x)).first;
  }
  torch::AutoGradMode grad_on(true);
  auto cg = cw.clone().requires_grad_(true);
  const auto u = map_->flow_energy(cg, energy_x);
  auto g = torch::autograd::grad({u.sum()}, {cg})[0];
  auto [uf, bad] = finalize(u.detach());
  *forces = torch::where(bad.unsqueeze(1) | ~torch::isfinite(g), torch::zeros_like(g), -g);
  return uf;
}

namespace {

class InternalMap : public CoordinateMap {
 public:
  using CoordinateMap::CoordinateMap;
  std::string name() const override { return "internal"; }
  Result to_flow(const torch::Tensor& x) const override {
    auto r = to_internal(z_, x);
    return {r.q, r.logdet};
  }
  Result from_flow(const torch::Tensor& q) const override {
    auto r = from_internal(z_, q);
    return {r.x, -r.logdet};
  }
  std::shared_ptr<Flow> build_flow(const torch::Tensor& q_train, const ICFlowRecipe& recipe) const override {
    return build_ic_flow(z_, q_train, recipe);
  }
  std::vector<int64_t> periodic() const override {
    std::vector<int64_t> cols;
    for (int64_t j = z_.torsions_begin(); j < z_.internal_dim(); ++j) cols.push_back(j);
    return cols;
  }
};

class CartesianMap : public CoordinateMap {
 public:
  using CoordinateMap::CoordinateMap;
  std::string name() const override { return "cartesian"; }
  Result to_flow(const torch::Tensor& x) const override {
    auto r = to_canonical(z_, x);
    return {r.c, r.logdet};
  }
  Result from_flow(const torch::Tensor& c) const override {
    torch::Tensor x;
    auto r = from_canonical(z_, c, &x);
    return {x, r.logdet};
  }
  std::shared_ptr<Flow> build_flow(const torch::Tensor& c_train, const ICFlowRecipe& recipe) const override {
    return build_cartesian_spline_flow(dim(), c_train, recipe);
  }
};

Registry<CoordinateMapFactory>& coordinate_registry() {
  static Registry<CoordinateMapFactory> r(
      {{"internal", [](const ZMatrix& z) -> std::shared_ptr<CoordinateMap> { return std::make_shared<InternalMap>(z); }},
       {"cartesian", [](const ZMatrix& z) -> std::shared_ptr<CoordinateMap> { return std::make_shared<CartesianMap>(z); }},
       {"centred", [](const ZMatrix& z) -> std::shared_ptr<CoordinateMap> { return std::make_shared<CentredMap>(z); }}});
  return r;
}

}  // namespace

void register_coordinate_map(const std::string& name, CoordinateMapFactory factory) {
  coordinate_registry().add("register_coordinate_map", name, std::move(factory));
}

std::vector<std::string> coordinate_map_names() { return coordinate_registry().names(); }

std::shared_ptr<CoordinateMap> make_coordinate_map(const std::string& name, const ZMatrix& z,
                                                   const json& config) {
  const auto f = coordinate_registry().find(name);
  if (!f)
    usage_error("--coordinates", "'" + name + "' is not a coordinate map, expected one of " +
                                     coordinate_registry().joined_names());
  auto map = f(z);
  if (!config.is_null()) map->configure(config);
  return map;
}

// ---- the generator --------------------------------------------------------------------------

BoltzmannGenerator::BoltzmannGenerator(ZMatrix z, std::shared_ptr<Distribution> model, std::string coordinates)
    : BoltzmannGenerator(make_coordinate_map(coordinates, z), std::move(model)) {}

BoltzmannGenerator::BoltzmannGenerator(std::shared_ptr<CoordinateMap> map, std::shared_ptr<Distribution> model)
    : z_(map->zmatrix()), model_(std::move(model)), map_(std::move(map)) {
  if (model_->dim() != map_->dim())
    usage_error("BoltzmannGenerator", "the model has dimension " + std::to_string(model_->dim()) +
                                          ", but the " + map_->name() + " coordinates have " +
                                          std::to_string(map_->dim()));
}

torch::Tensor BoltzmannGenerator::log_prob(const torch::Tensor& x) {
  const auto r = map_->to_flow(x.to(model_->tensor_options()));
  return model_->log_prob(r.value) + r.logdet;
}

std::pair<torch::Tensor, torch::Tensor> BoltzmannGenerator::sample(int64_t n, int64_t chunk) {
  check_positive_int("BoltzmannGenerator::sample", "n", n);
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> xs, lqs;
  for (int64_t done = 0; done < n; done += chunk) {
    const int64_t m = std::min(chunk, n - done);
    auto [c, lq] = model_->sample_and_log_prob(m);
    const auto r = map_->from_flow(c);
    // Outside the map's range (logdet NaN): log q = +inf, so the weight is zero.
    auto l = lq + r.logdet;
    l = torch::where(torch::isnan(r.logdet), torch::full_like(l, INFINITY), l);
    xs.push_back(r.value.to(torch::kCPU, torch::kFloat64));
    lqs.push_back(l.to(torch::kCPU, torch::kFloat64));
  }
  return {torch::cat(xs), torch::cat(lqs)};
}

torch::Tensor internal_energy(const ZMatrix& z, const torch::Tensor& q,
                              const std::function<torch::Tensor(const torch::Tensor&)>& energy_x) {
  auto c = from_internal(z, q);
  return energy_x(c.x) - c.logdet;
}

torch::Tensor linlog_cut(const torch::Tensor& u, double high, double max) {
  const auto big = (u > max) | ~torch::isfinite(u);
  const auto safe = torch::where(big, torch::full_like(u, high), u);
  const auto soft = high + torch::log1p(torch::clamp_min(safe - high, 0.0));
  auto out = torch::where(safe > high, soft, safe);
  const double cap = high + std::log1p(max - high);
  return torch::where(big, torch::full_like(u, cap), out);
}

}  // namespace nfkit
