// Autoregressive models over binned coordinates (ArBG's density): exact normalisation by brute
// force, the sampler's log q against a second pass, sampled bin frequencies against the exact
// probabilities, importance weights of a tempered sampler, checkpoints and bad input. Cartesian
// Boltzmann generators (boltzmann/cartesian.h): the centred map's extended-space weights on an
// analytic target, augmentation, and TarFlow / ArBG generators through the pipeline.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "helpers.h"
#include "nfkit/boltzmann/cartesian.h"
#include "nfkit/boltzmann/md.h"
#include "nfkit/boltzmann/pipeline.h"
#include "nfkit/core/error.h"
#include "nfkit/physics/molecule.h"
#include "nfkit/physics/openmm_energy.h"
#include "nfkit/flows/binned_autoregressive.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/trainer.h"

using namespace nfkit;
using nfkit::test::perturb_parameters;
using nfkit::test::temp_path;
using nfkit::test::ala2_batch;
using nfkit::test::ala2_pdb;

namespace {

BinnedAutoregressiveOptions options(int64_t dim, int64_t bins, int64_t layers, int64_t hidden, int64_t head_dim) {
  BinnedAutoregressiveOptions o;
  o.dim = dim;
  o.bins = bins;
  o.layers = layers;
  o.hidden = hidden;
  o.head_dim = head_dim;
  return o;
}

// A float64 model with random weights on an uneven box.
std::shared_ptr<BinnedAutoregressive> perturbed_model(int64_t dim, int64_t bins, std::vector<int64_t> order,
                                                      uint64_t seed) {
  auto o = options(dim, bins, 2, 16, 8);
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
  torch::manual_seed(3);
  BinnedAutoregressive q32(options(12, 64, 2, 32, 32), -torch::ones({12}), torch::ones({12}));
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
  auto q = std::make_shared<BinnedAutoregressive>(options(2, 48, 1, 32, 16), torch::full({2}, -6.0), torch::full({2}, 6.0));
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
  const auto o = options(2, 8, 1, 16, 8);
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

TEST_CASE("centred coordinates: extended-space weights are exact on an analytic target", "[arbg][boltzmann]") {
  // Target: p(x) ∝ exp(-|x|^2 / 2) on the 3N - 3 dimensional space of centred configurations,
  // Z = (2 pi)^((3N - 3) / 2) in orthonormal coordinates. Proposal: an isotropic normal on R^3N
  // of variance v. With the map's weights log w = -u(x) - log q, self-normalised importance
  // sampling recovers E|x|^2 = 3N - 3 and the mean weight recovers Z (so the centre's density,
  // its truncation included, enters exactly).
  const auto mol = read_pdb(ala2_pdb());
  const auto z = zmatrix_for(mol);
  const int64_t N = static_cast<int64_t>(mol.size()), D = 3 * N;
  const double v = 1.1, sigma = std::sqrt(1.5 / N);  // the proposal's centre is narrower than r
  auto map = make_coordinate_map("centred", z, {{"sigma", sigma}, {"truncation", 3.0}});
  REQUIRE(map->dim() == D);
  torch::manual_seed(4);
  const int64_t n = 200000;
  const auto c = torch::randn({n, D}, torch::kFloat64) * std::sqrt(v);
  const auto log_qc = -(c.square().sum(1)) / (2 * v) - 0.5 * D * std::log(2 * M_PI * v);
  const auto r = map->from_flow(c);
  // Centred, and NaN exactly where some axis of the centre lies beyond 3 sigma.
  CHECK(r.value.view({n, N, 3}).mean(1).abs().max().item<double>() < 1e-12);
  const auto t = c.view({n, N, 3}).mean(1);
  CHECK(torch::equal(r.logdet.isnan(), (t.abs() > 3.0 * sigma).any(1)));
  const auto log_q = log_qc + r.logdet;
  const auto u = r.value.square().sum(1) / 2;
  auto log_w = -u - log_q;
  log_w = torch::where(log_w.isnan(), torch::full_like(log_w, -INFINITY), log_w);
  const auto w = torch::softmax(log_w, 0);
  const double ess = 1.0 / w.square().sum().item<double>();
  INFO("ESS " << ess);
  REQUIRE(ess > 0.4 * n);  // about 0.6 n: v != 1 on 3N - 3 directions, r wider than the centre's
  CHECK((w * r.value.square().sum(1)).sum().item<double>() == Approx(D - 3).margin(0.1));
  const double log_z = torch::logsumexp(log_w, 0).item<double>() - std::log(static_cast<double>(n));
  CHECK(log_z == Approx(0.5 * (D - 3) * std::log(2 * M_PI)).margin(0.01));
  // to_flow puts the centre at zero: log q there is the extended density at a = 0.
  const auto back = map->to_flow(r.value.narrow(0, 0, 5));
  CHECK(torch::allclose(back.value, r.value.narrow(0, 0, 5)));
  CHECK(back.logdet[0].item<double>() == Approx(map->from_flow(torch::zeros({1, D}, torch::kFloat64)).logdet[0].item<double>()));
}

TEST_CASE("centred coordinates: augmentation turns about the centre and shifts by the truncated normal", "[arbg][boltzmann]") {
  const auto mol = read_pdb(ala2_pdb());
  const auto z = zmatrix_for(mol);
  const int64_t N = static_cast<int64_t>(mol.size());
  auto map = std::dynamic_pointer_cast<CentredMap>(make_coordinate_map("centred", z));
  REQUIRE(map);
  const auto x = ala2_batch(4000, 0.01, 3);
  map->fit(map->to_flow(x).value);
  CHECK(map->sigma() == Approx(centre_configurations(x).std().item<double>() / std::sqrt(N)));
  torch::manual_seed(1);
  const auto c = map->augment(map->to_flow(x).value);
  const auto t = c.view({-1, N, 3}).mean(1);
  CHECK(t.std().item<double>() == Approx(map->sigma()).epsilon(0.05));
  CHECK(t.abs().max().item<double>() <= 4.0 * map->sigma());
  // A rigid motion: distances between atoms are kept, orientations are spread.
  auto dist = [N](const torch::Tensor& y) {
    const auto a = y.view({-1, N, 3});
    return (a.unsqueeze(2) - a.unsqueeze(1)).norm(2, 3);
  };
  CHECK(torch::allclose(dist(c), dist(x), 1e-9, 1e-9));
  const auto first_bond = (c.view({-1, N, 3}).select(1, 1) - c.view({-1, N, 3}).select(1, 0));
  const auto dir = first_bond / first_bond.norm(2, 1, true);
  CHECK(dir.mean(0).abs().max().item<double>() < 0.05);  // uniform directions average to zero
  // Rotations are proper and uniform: det 1, R R^T = I.
  const auto R = random_rotations(1000);
  CHECK(torch::allclose(torch::det(R), torch::ones({1000}, torch::kFloat64)));
  CHECK(torch::allclose(torch::matmul(R, R.transpose(1, 2)), torch::eye(3, torch::kFloat64).expand({1000, 3, 3}), 1e-12, 1e-12));
}

TEST_CASE("cartesian generators: tarflow and arbg train, save, load and sample with exact log q", "[arbg][boltzmann]") {
  const auto mol = read_pdb(ala2_pdb());
  const auto z = zmatrix_for(mol);
  Trajectory md;
  md.x = ala2_batch(400, 0.004, 5);
  md.walker = torch::zeros({400}, torch::kInt64);
  md.path = "synthetic";
  for (const std::string kind : {"tarflow", "arbg"}) {
    INFO(kind);
    BGTrainOptions o;
    o.model = kind;
    o.coordinates = "centred";
    o.transformer.blocks = 2;
    o.transformer.layers = 1;
    o.transformer.hidden = 32;
    o.transformer.head_dim = 16;
    o.transformer.bins = 64;
    o.trainer.steps(30).batch_size(64).eval_every(15).quiet(true);
    const auto model = temp_path("cart-" + kind + ".h5");
    const auto rep = train_generator(z, md, nullptr, o, model);
    CHECK(rep.train.steps_done == 30);
    CHECK(std::isfinite(rep.train.best_val));
    json meta;
    auto bg = load_generator(model, &meta);
    CHECK(bg.coordinates() == "centred");
    CHECK(meta.at("model") == kind);
    CHECK(meta.at("coordinate_map").at("sigma").get<double>() > 0);
    CHECK(bg.model().dim() == 3 * mol.size());
    // The sampling pass's log q of the model over c equals a second pass (float64).
    torch::manual_seed(3);
    torch::NoGradGuard ng;
    auto [c, lq] = bg.model().sample_and_log_prob(64);
    CHECK((lq - bg.model().log_prob(c)).abs().max().item<double>() < 1e-5);
    // Generator samples: centred configurations with log q = log q~(c) - log r(sqrt(N) t).
    torch::manual_seed(3);
    auto [x, log_q] = bg.sample(64, 64);  // one chunk: the same draws as above
    CHECK(x.view({64, -1, 3}).mean(1).abs().max().item<double>() < 1e-9);
    const auto t = c.view({64, -1, 3}).mean(1);
    const auto* centred = dynamic_cast<const CentredMap*>(&bg.coordinate_map());
    REQUIRE(centred);
    const auto expect = lq + centred->neg_log_r(t);
    const auto finite = torch::isfinite(expect);
    CHECK(torch::allclose(log_q.masked_select(finite), expect.masked_select(finite), 1e-9, 1e-9));
    if (kind == "arbg") {
      auto q = std::dynamic_pointer_cast<BinnedAutoregressive>(bg.model_ptr());
      REQUIRE(q);
      // The box covers every rotation and shift of the training frames.
      const auto cm = bg.coordinate_map().to_flow(md.x).value;
      for (int rep_i = 0; rep_i < 5; ++rep_i) CHECK(q->count_outside(bg.coordinate_map().augment(cm)) == 0);
    }
  }
  // Options the models refuse, naming the option.
  BGTrainOptions bad;
  bad.model = "arbg";
  bad.coordinates = "centred";
  bad.transformer.hidden = 30;
  CHECK_THROWS_WITH(bad.check(), Catch::Contains("--hidden"));
  bad = BGTrainOptions();
  bad.model = "pixelcnn";
  CHECK_THROWS_WITH(bad.check(), Catch::Contains("--model"));
  bad = BGTrainOptions();
  bad.model = "tarflow";
  bad.coordinates = "cartesian";  // 3N - 6 coordinates: no atom tokens
  bad.trainer.steps(2).quiet(true);
  CHECK_THROWS_WITH(train_generator(z, md, nullptr, bad, temp_path("x.h5")), Catch::Contains("--tokens"));
}

TEST_CASE("cli: bg train --model refuses bad models and options with the option's name", "[arbg][cli]") {
  using nfkit::test::ala2_system;
  using nfkit::test::check_cli_fails;
  const auto none = temp_path("arbg-none.h5");
  const std::vector<std::string> base{"bg", "train", "--out", none, "--pdb", ala2_pdb(), "--system", ala2_system()};
  auto with = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  check_cli_fails(with({"--model", "pixelcnn"}), 2, "--model", none);
  check_cli_fails(with({"--model", "nsf-ic", "--coordinates", "cartesian"}), 2, "--coordinates", none);
  check_cli_fails(with({"--model", "tarflow", "--hidden", "30"}), 2, "--hidden", none);
  check_cli_fails(with({"--model", "arbg", "--arbg-bins", "1"}), 2, "--arbg-bins", none);
  check_cli_fails(with({"--model", "arbg", "--token-order", "spiral"}), 2, "--token-order", none);
  check_cli_fails(with({"--model", "arbg", "--objective", "fab"}), 2, "--model", none);
}
