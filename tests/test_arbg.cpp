// Autoregressive models over binned coordinates (ArBG's density): exact normalisation by brute
// force, the sampler's log q against a second pass, sampled bin frequencies against the exact
// probabilities, importance weights of a tempered sampler, checkpoints and bad input.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "helpers.h"
#include "nfkit/core/error.h"
#include "nfkit/flows/binned_autoregressive.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/trainer.h"

using namespace nfkit;
using nfkit::test::perturb_parameters;
using nfkit::test::temp_path;

namespace {

// A float64 model with random weights on an uneven box.
std::shared_ptr<BinnedAutoregressive> perturbed_model(int64_t dim, int64_t bins, std::vector<int64_t> order,
                                                      uint64_t seed) {
  BinnedAutoregressiveOptions o;
  o.dim = dim;
  o.bins = bins;
  o.layers = 2;
  o.hidden = 16;
  o.head_dim = 8;
  o.order = std::move(order);
  torch::manual_seed(seed);
  const auto low = -1.0 - torch::rand({dim}, torch::kFloat64);
  const auto high = 0.5 + 2.0 * torch::rand({dim}, torch::kFloat64);
  auto q = std::make_shared<BinnedAutoregressive>(o, low, high);
  q->to(torch::kFloat64);
  perturb_parameters(*q, 0.5, seed + 1);
  q->eval();
  return q;
}

// The centres of all bins^dim cells [bins^dim, dim], first coordinate slowest.
torch::Tensor all_cell_centres(const BinnedAutoregressive& q) {
  const int64_t D = q.dim(), K = q.options().bins;
  const auto w = (q.high() - q.low()) / static_cast<double>(K);
  std::vector<torch::Tensor> axes;
  for (int64_t d = 0; d < D; ++d)
    axes.push_back(q.low()[d] + (torch::arange(K, torch::kFloat64) + 0.5) * w[d]);
  auto grids = torch::meshgrid(axes, "ij");
  std::vector<torch::Tensor> cols;
  for (auto& g : grids) cols.push_back(g.reshape({-1, 1}));
  return torch::cat(cols, 1);
}

double log_cell_volume(const BinnedAutoregressive& q) {
  return ((q.high() - q.low()) / static_cast<double>(q.options().bins)).log().sum().item<double>();
}

}  // namespace

TEST_CASE("binned autoregressive: the density integrates to one, with temperature and top-p", "[arbg]") {
  torch::NoGradGuard ng;
  for (const auto& [dim, bins, order] : std::vector<std::tuple<int64_t, int64_t, std::vector<int64_t>>>{
           {2, 5, {1, 0}}, {3, 4, {2, 0, 1}}, {1, 7, {}}}) {
    auto q = perturbed_model(dim, bins, order, 11);
    const auto centres = all_cell_centres(*q);
    for (double T : {1.0, 0.6, 1.4}) {
      for (double top_p : {1.0, 0.7}) {
        INFO("dim " << dim << " T " << T << " top_p " << top_p);
        q->set_temperature(T);
        q->set_top_p(top_p);
        const auto lq = q->log_prob(centres);
        const double mass = (lq + log_cell_volume(*q)).exp().sum().item<double>();
        CHECK(mass == Approx(1.0).margin(1e-10));
        if (top_p < 1.0) CHECK(lq.isinf().any().item<bool>());  // the nucleus drops cells
        // Constant within a cell: any point of the cell has its centre's density.
        const auto w = (q->high() - q->low()) / static_cast<double>(bins);
        const auto inside = centres + (torch::rand_like(centres) - 0.5) * 0.999 * w;
        const auto lq2 = q->log_prob(inside);
        const auto finite = lq.isfinite();
        CHECK((lq2.masked_select(finite) - lq.masked_select(finite)).abs().max().item<double>() < 1e-12);
      }
    }
  }
}

TEST_CASE("binned autoregressive: the sampler's log q equals a second pass, and bins have their probabilities", "[arbg]") {
  torch::NoGradGuard ng;
  auto q = perturbed_model(2, 4, {1, 0}, 21);
  const auto centres = all_cell_centres(*q);
  for (double T : {1.0, 1.3}) {
    for (double top_p : {1.0, 0.8}) {
      INFO("T " << T << " top_p " << top_p);
      q->set_temperature(T);
      q->set_top_p(top_p);
      torch::manual_seed(5);
      const int64_t n = 40000;
      auto [x, log_q] = q->sample_and_log_prob(n);
      REQUIRE(x.sizes() == torch::IntArrayRef({n, 2}));
      CHECK(q->count_outside(x) == 0);
      CHECK((log_q - q->log_prob(x)).abs().max().item<double>() < 1e-10);
      // Cell frequencies against the exact cell probabilities (binomial 5 sigma).
      const auto k = q->bin_index(x);
      const auto cell = k.select(1, 0) * 4 + k.select(1, 1);
      const auto counts = torch::bincount(cell, {}, 16).to(torch::kFloat64);
      const auto p = (q->log_prob(centres) + log_cell_volume(*q)).exp();
      const auto sigma = (p * (1 - p) / n).sqrt() + 1e-12;
      CHECK(((counts / n - p).abs() / sigma).max().item<double>() < 5.0);
      CHECK(counts.masked_select(p == 0).sum().item<double>() == 0.0);
    }
  }
  // Float32 (the training dtype): the KV-cache pass and the full pass agree to float rounding.
  BinnedAutoregressiveOptions o;
  o.dim = 12;
  o.bins = 64;
  o.layers = 2;
  o.hidden = 32;
  torch::manual_seed(3);
  BinnedAutoregressive q32(o, -torch::ones({12}), torch::ones({12}));
  perturb_parameters(q32, 0.3, 4);
  auto [x, log_q] = q32.sample_and_log_prob(500);
  CHECK((log_q - q32.log_prob(x)).abs().max().item<double>() < 1e-4);
}

TEST_CASE("binned autoregressive: a tempered sampler's importance weights give unbiased expectations", "[arbg]") {
  // Target: a correlated 2-D Gaussian, rho = 0.6, unit variances; the model is fitted to its
  // samples, then sampled at T = 1.5 (wider than the fit). Self-normalised importance
  // weights p / q_T with q_T's exact log-density recover E[x0 x1] = rho and E[x0^2] = 1; the
  // same samples weighted with the untempered log q do not.
  torch::manual_seed(1);
  const double rho = 0.6;
  const auto L = torch::tensor({{1.0, 0.0}, {rho, std::sqrt(1 - rho * rho)}}, torch::kFloat64);
  const auto data = torch::randn({20000, 2}, torch::kFloat64).matmul(L.t());
  BinnedAutoregressiveOptions o;
  o.dim = 2;
  o.bins = 48;
  o.layers = 1;
  o.hidden = 32;
  o.head_dim = 16;
  auto q = std::make_shared<BinnedAutoregressive>(o, torch::full({2}, -6.0), torch::full({2}, 6.0));
  q->to(torch::kFloat64);
  Objective obj;
  obj.train = data;
  Trainer(q, TrainerOptions().steps(400).batch_size(512).lr(3e-3).eval_every(400).quiet(true).seed(2), obj).train();
  q->eval();
  torch::NoGradGuard ng;
  auto log_p = [&](const torch::Tensor& x) {
    const auto a = x.select(1, 0), b = x.select(1, 1);
    return -(a * a - 2 * rho * a * b + b * b) / (2 * (1 - rho * rho));
  };
  q->set_temperature(1.5);
  torch::manual_seed(7);
  auto [x, log_qT] = q->sample_and_log_prob(40000);
  q->set_temperature(1.0);
  const auto log_q1 = q->log_prob(x);
  auto estimate = [&](const torch::Tensor& log_q) {
    const auto w = torch::softmax(log_p(x) - log_q, 0);
    const auto f = x.select(1, 0) * x.select(1, 1), g = x.select(1, 0).square();
    const double ess = 1.0 / w.square().sum().item<double>();
    return std::make_tuple((w * f).sum().item<double>(), (w * g).sum().item<double>(), ess);
  };
  const auto [xy, xx, ess] = estimate(log_qT);
  INFO("ESS " << ess);
  // Standard errors of self-normalised estimates with ESS >= ~10000: ~0.015.
  REQUIRE(ess > 5000);
  CHECK(xy == Approx(rho).margin(0.05));
  CHECK(xx == Approx(1.0).margin(0.06));
  const auto [xy_naive, xx_naive, ess_naive] = estimate(log_q1);
  CHECK(std::abs(xx_naive - 1.0) > 0.2);  // weighting by the untempered density is biased
}

TEST_CASE("binned autoregressive: checkpoints restore the model, the box and the order", "[arbg]") {
  for (const auto dtype : {torch::kFloat32, torch::kFloat64}) {
    auto q = perturbed_model(3, 6, {2, 1, 0}, 31);
    q->to(dtype);
    const std::string path = temp_path("arbg.h5");
    save_flow(path, *q, {{"note", "test"}});
    auto loaded = load_distribution(path);
    auto r = std::dynamic_pointer_cast<BinnedAutoregressive>(loaded.model);
    REQUIRE(r);
    CHECK(r->options().order == std::vector<int64_t>{2, 1, 0});
    CHECK(loaded.metadata.at("note") == "test");
    torch::manual_seed(2);
    const auto x = q->sample(64);
    CHECK(torch::equal(q->log_prob(x), r->log_prob(x)));
    CHECK(r->tensor_options().dtype() == q->tensor_options().dtype());
    std::filesystem::remove(path);
    // A flow loader names the kind it found.
    save_flow(path, *q);
    CHECK_THROWS_WITH(load_flow(path), Catch::Contains("binned_autoregressive"));
    std::filesystem::remove(path);
  }
}

TEST_CASE("binned autoregressive: data outside the box and bad options", "[arbg]") {
  BinnedAutoregressiveOptions o;
  o.dim = 2;
  o.bins = 8;
  o.layers = 1;
  o.hidden = 16;
  o.head_dim = 8;
  BinnedAutoregressive q(o, torch::zeros({2}), torch::ones({2}));
  const auto x = torch::tensor({{0.5, 0.5}, {1.0, 0.5}, {-0.01, 0.2}, {0.999, 0.0}, {std::nan(""), 0.1}});
  CHECK(q.count_outside(x) == 3);
  const auto lq = q.log_prob(x);
  CHECK(std::isinf(lq[1].item<double>()));
  CHECK(std::isinf(lq[2].item<double>()));
  CHECK(std::isinf(lq[4].item<double>()));
  CHECK(lq[0].item<double>() == Approx(0.0).margin(1e-6));  // untrained: uniform on the unit box
  CHECK(lq[3].item<double>() == Approx(0.0).margin(1e-6));
  auto bad = o;
  bad.order = {0, 0};
  CHECK_THROWS_WITH(BinnedAutoregressive(bad, torch::zeros({2}), torch::ones({2})),
                    Catch::Contains("not a permutation"));
  bad.order = {0};
  CHECK_THROWS_WITH(BinnedAutoregressive(bad, torch::zeros({2}), torch::ones({2})),
                    Catch::Contains("order has 1 entries"));
  CHECK_THROWS_WITH(BinnedAutoregressive(o, torch::ones({2}), torch::ones({2})), Catch::Contains("low < high"));
  CHECK_THROWS_AS(q.set_top_p(0.0), UsageError);
  CHECK_THROWS_AS(q.set_temperature(-1.0), UsageError);
  // A box from data with a margin covers the data.
  torch::manual_seed(0);
  const auto data = torch::randn({1000, 2});
  auto fitted = make_binned_autoregressive(o, data, 0.05);
  CHECK(fitted->count_outside(data) == 0);
}
