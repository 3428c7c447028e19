// The generic property test over every transform (STYLE.md 6): a new transform is one line
// in cases(). In float64, each case checks
//   * round trip: inverse(forward(x)) == x  (max abs error <= 1e-8 affine/linear, 1e-6 splines)
//   * log|det| equals the brute-force autograd Jacobian's (D <= 6) within 1e-6, in both
//     directions (inverse log|det| == -forward log|det| at the mapped point)
//   * gradients reach every parameter
//   * checkpoint round trip: rebuilt from its JSON config + HDF5 state, outputs are equal.
#include <catch2/catch.hpp>

#include <functional>

#include "helpers.h"
#include "nfkit/core/h5.h"
#include "nfkit/flows/autoregressive.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/coupling.h"
#include "nfkit/flows/linear.h"
#include "nfkit/flows/normalization.h"

using namespace nfkit;
using namespace nfkit::test;

namespace {

constexpr int64_t D = 5, C = 3;

struct Case {
  std::string name;
  std::function<TransformPtr()> make;
  double round_trip_tol;
  bool angles = false;  // inputs on [-pi, pi)
};

std::vector<Case> cases() {
  const double lin = 1e-8, spl = 1e-6;
  auto coupling = [](int64_t parity, int64_t ctx) {
    return CouplingOptions(D).parity(parity).hidden(16).context_dim(ctx);
  };
  auto ar = [](int64_t ctx) { return AutoregressiveOptions(D).hidden(16).context_dim(ctx); };
  return {
      {"affine coupling even", [=] { return std::make_shared<AffineCoupling>(coupling(0, 0)); }, lin},
      {"affine coupling odd, conditional", [=] { return std::make_shared<AffineCoupling>(coupling(1, C)); }, lin},
      {"spline coupling", [=] { return std::make_shared<SplineCoupling>(coupling(0, 0).bins(6).bound(2.0)); }, spl},
      {"spline coupling, conditional", [=] { return std::make_shared<SplineCoupling>(coupling(1, C).bins(5).bound(2.0)); }, spl},
      {"circular spline coupling", [=] { return std::make_shared<SplineCoupling>(coupling(0, 0).bins(6).bound(M_PI).circular(true)); }, spl, true},
      {"MAF", [=] { return std::make_shared<MaskedAffineAutoregressive>(ar(0)); }, lin},
      {"MAF, conditional", [=] { return std::make_shared<MaskedAffineAutoregressive>(ar(C)); }, lin},
      {"IAF (inverse MAF)", [=] { return std::make_shared<InverseTransform>(std::make_shared<MaskedAffineAutoregressive>(ar(0))); }, lin},
      {"spline autoregressive", [=] { return std::make_shared<SplineAutoregressive>(ar(0).bins(6).bound(2.0)); }, spl},
      {"spline autoregressive, conditional", [=] { return std::make_shared<SplineAutoregressive>(ar(C).bins(4).bound(2.0)); }, spl},
      {"circular spline autoregressive", [=] { return std::make_shared<SplineAutoregressive>(ar(0).bins(6).bound(M_PI).circular(true)); }, spl, true},
      {"actnorm", [=] { return std::make_shared<ActNorm>(D); }, lin},
      {"elementwise affine (learnable)", [=] { return std::make_shared<ElementwiseAffine>(torch::randn({D}), 0.3 * torch::randn({D}), true); }, lin},
      {"reverse permutation", [=] { return Permutation::reverse(D); }, lin},
      {"random permutation", [=] { return Permutation::random(D, 11); }, lin},
      {"LU linear", [=] { return std::make_shared<LULinear>(LULinearOptions(D).seed(5)); }, lin},
      {"composite, conditional",
       [=] {
         return std::make_shared<CompositeTransform>(std::vector<TransformPtr>{
             std::make_shared<ActNorm>(D), std::make_shared<SplineCoupling>(coupling(0, C).bins(4)),
             std::make_shared<LULinear>(LULinearOptions(D).seed(2)), Permutation::random(D, 3),
             std::make_shared<MaskedAffineAutoregressive>(ar(C))});
       },
       spl},
  };
}

torch::Tensor inputs(const Case& c, int64_t n) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  if (c.angles) return (torch::rand({n, D}, f64) * 2.0 - 1.0) * (M_PI - 1e-6);
  return 1.5 * torch::randn({n, D}, f64);  // some points beyond the spline bound (tails)
}

// A float64 transform with generic (non-identity) parameters, data-dependent init done.
TransformPtr prepared(const Case& c, uint64_t seed) {
  torch::manual_seed(seed);
  auto t = c.make();
  t->to(torch::kFloat64);
  t->train();
  torch::NoGradGuard ng;
  auto ctx = t->context_dim() > 0 ? torch::randn({64, t->context_dim()}, torch::kFloat64) : torch::Tensor();
  t->forward(inputs(c, 64), ctx);  // ActNorm initialises here
  perturb_parameters(*t, 0.3, seed);
  t->eval();
  return t;
}

}  // namespace

TEST_CASE("every transform: round trip, log|det| vs autograd, gradients, checkpoint", "[transforms]") {
  for (const auto& c : cases()) {
    SECTION(c.name) {
      auto t = prepared(c, 1234);
      torch::manual_seed(99);
      const int64_t B = 32;
      const auto x = inputs(c, B);
      const auto ctx = t->context_dim() > 0 ? torch::randn({B, t->context_dim()}, torch::kFloat64)
                                            : torch::Tensor();
      check_transform_properties(t, x, ctx, c.round_trip_tol);  // helpers.h
    }
  }
}

TEST_CASE("transforms reject wrong shapes and contexts with one-line usage errors", "[transforms]") {
  auto t = std::make_shared<AffineCoupling>(CouplingOptions(4).context_dim(2));
  t->to(torch::kFloat64);
  const auto x = torch::randn({3, 4}, torch::kFloat64);
  CHECK_THROWS_AS(t->forward(x), UsageError);                                          // missing context
  CHECK_THROWS_WITH(t->forward(torch::randn({3, 5}, torch::kFloat64), torch::randn({3, 2}, torch::kFloat64)),
                    Catch::Contains("x has shape [3, 5]"));
  CHECK_THROWS_WITH(t->forward(x, torch::randn({2, 2}, torch::kFloat64)), Catch::Contains("context has 2 rows, but 3 are needed"));
  auto u = Permutation::reverse(4);
  CHECK_THROWS_WITH(u->forward(x, torch::randn({3, 2}, torch::kFloat64)),
                    Catch::Contains("built without context_dim"));
  CHECK_THROWS_AS(std::make_shared<Permutation>(std::vector<int64_t>{0, 0, 1}), UsageError);
  CHECK_THROWS_AS(std::make_shared<AffineCoupling>(CouplingOptions(1)), UsageError);
}

TEST_CASE("autoregressive inverse is iterative and says so, IAF swaps the directions", "[transforms]") {
  auto maf = std::make_shared<MaskedAffineAutoregressive>(AutoregressiveOptions(4));
  CHECK(maf->forward_is_single_pass());
  CHECK_FALSE(maf->inverse_is_single_pass());
  auto iaf = std::make_shared<InverseTransform>(maf);
  CHECK_FALSE(iaf->forward_is_single_pass());
  CHECK(iaf->inverse_is_single_pass());
}

TEST_CASE("MADE masks make the transform autoregressive: dz_i/dx_j = 0 for j > i", "[transforms]") {
  for (bool spline : {false, true}) {
    auto o = AutoregressiveOptions(6).hidden(24).context_dim(2).bins(5).bound(3.0);
    TransformPtr t = spline ? TransformPtr(std::make_shared<SplineAutoregressive>(o))
                            : TransformPtr(std::make_shared<MaskedAffineAutoregressive>(o));
    t->to(torch::kFloat64);
    perturb_parameters(*t, 0.5, 3);
    torch::manual_seed(4);
    auto x = torch::randn({1, 6}, torch::kFloat64).requires_grad_(true);
    auto c = torch::randn({1, 2}, torch::kFloat64);
    auto z = std::get<0>(t->forward(x, c));
    for (int64_t i = 0; i < 6; ++i) {
      auto g = torch::autograd::grad({z[0][i]}, {x}, {}, true, false, true)[0];
      for (int64_t j = i + 1; j < 6; ++j) CHECK(g[0][j].item<double>() == 0.0);
      if (i > 0) CHECK(g[0].narrow(0, 0, i).abs().sum().item<double>() > 0);
    }
    // The first coordinate's parameters depend on the context (summed over a batch, so that
    // a few inactive ReLU units cannot hide it).
    auto cc = torch::randn({16, 2}, torch::kFloat64).requires_grad_(true);
    auto z1 = std::get<0>(t->forward(0.5 * torch::randn({16, 6}, torch::kFloat64), cc));
    auto gc = torch::autograd::grad({z1.select(1, 0).sum()}, {cc}, {}, false, false, true)[0];
    CHECK(gc.defined());
    CHECK(gc.abs().sum().item<double>() > 0);
  }
}

TEST_CASE("rational-quadratic spline: identity tails, fixed boundaries, circular periodicity", "[transforms]") {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  torch::manual_seed(5);
  const int64_t K = 7;
  auto w = torch::randn({4, K}, f64), h = torch::randn({4, K}, f64);
  auto d = torch::randn({4, K - 1}, f64);
  auto x = torch::tensor({-5.0, -3.0, 3.0, 6.0}, f64);
  auto [y, lad] = rational_quadratic_spline(x, w, h, d, false, 3.0, false);
  CHECK(torch::allclose(y, x, 0, 1e-12));  // tails and boundaries map to themselves
  CHECK(lad.abs().max().item<double>() < 1e-12);
  // Circular: the derivative at -B equals the one at +B (smooth on the circle).
  auto dc = torch::randn({2, K}, f64);
  auto wc = w.narrow(0, 0, 2), hc = h.narrow(0, 0, 2);
  auto ends = torch::tensor({-M_PI, M_PI}, f64);
  auto [yc, ladc] = rational_quadratic_spline(ends, wc.narrow(0, 0, 1).expand({2, K}),
                                              hc.narrow(0, 0, 1).expand({2, K}),
                                              dc.narrow(0, 0, 1).expand({2, K}), false, M_PI, true);
  CHECK(yc[0].item<double>() == Approx(-M_PI).margin(1e-12));
  CHECK(yc[1].item<double>() == Approx(M_PI).margin(1e-12));
  CHECK(ladc[0].item<double>() == Approx(ladc[1].item<double>()).margin(1e-12));
}

TEST_CASE("fused CPU spline kernel equals the ATen reference: values and gradients", "[transforms]") {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  for (bool circular : {false, true}) {
    for (bool inverse : {false, true}) {
      INFO("circular " << circular << ", inverse " << inverse);
      torch::manual_seed(circular * 2 + inverse);
      const int64_t K = 6, n = 400;
      const double B = circular ? M_PI : 2.5;
      auto x = circular ? (torch::rand({n}, f64) * 2 - 1) * B : torch::randn({n}, f64) * 2.0;
      auto w = torch::randn({n, K}, f64), h = torch::randn({n, K}, f64);
      auto d = torch::randn({n, spline_derivative_count(K, circular)}, f64);
      auto run = [&](bool reference) {
        std::vector<torch::Tensor> in{x.clone().requires_grad_(true), w.clone().requires_grad_(true),
                                      h.clone().requires_grad_(true), d.clone().requires_grad_(true)};
        auto [y, lad] = reference
                            ? rational_quadratic_spline_reference(in[0], in[1], in[2], in[3], inverse, B, circular)
                            : rational_quadratic_spline(in[0], in[1], in[2], in[3], inverse, B, circular);
        // An arbitrary scalar of both outputs, so both upstream gradients are non-trivial.
        ((y * torch::cos(x)).sum() + (lad * torch::sin(x)).sum()).backward();
        std::vector<torch::Tensor> out{y.detach(), lad.detach()};
        for (auto& t : in) out.push_back(t.grad());
        return out;
      };
      const auto ref = run(true), fused = run(false);
      const char* names[] = {"y", "lad", "dx", "dwidths", "dheights", "dderivatives"};
      for (size_t i = 0; i < ref.size(); ++i) {
        INFO(names[i]);
        CHECK((ref[i] - fused[i]).abs().max().item<double>() < 1e-9);
      }
    }
  }
}
