#include "nfkit/opf/model.h"

#include <torch/nn/functional/activation.h>
#include <torch/torch.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "nfkit/core/error.h"
#include "nfkit/core/h5.h"
#include "nfkit/flows/checkpoint.h"

namespace nfkit {

namespace {
constexpr int64_t kModelVersion = 1;
constexpr int64_t kNodeIn = 7;  // 5 static + load + total load / capacity
constexpr int64_t kEdgeIn = 4;
constexpr int64_t kGenIn = 5;

torch::Tensor vec(const Eigen::VectorXd& v) {
  return torch::from_blob(const_cast<double*>(v.data()), {v.size()}, torch::kFloat64).clone();
}
torch::Tensor act(const torch::Tensor& x) { return torch::silu(x); }
}  // namespace

nlohmann::json OpfModelOptions::to_json() const {
  return {{"hidden", hidden_},
          {"layers", layers_},
          {"embed", embed_},
          {"velocity_hidden", velocity_hidden_},
          {"velocity_layers", velocity_layers_},
          {"time_features", time_features_}};
}

OpfModelOptions OpfModelOptions::from_json(const nlohmann::json& j) {
  OpfModelOptions o;
  o.hidden(j.at("hidden")).layers(j.at("layers")).embed(j.at("embed"));
  o.velocity_hidden(j.at("velocity_hidden"))
      .velocity_layers(j.at("velocity_layers"))
      .time_features(j.at("time_features"));
  return o;
}

void OpfModelOptions::validate() const {
  auto need = [](bool ok, const char* opt, const std::string& what) {
    if (!ok) usage_error("opf model", std::string(opt) + " must be " + what);
  };
  need(hidden_ >= 1, "--hidden", ">= 1");
  need(layers_ >= 1, "--layers", ">= 1");
  need(embed_ >= 1, "--embed", ">= 1");
  need(velocity_hidden_ >= 1, "--velocity-hidden", ">= 1");
  need(velocity_layers_ >= 1, "--velocity-layers", ">= 1");
  need(time_features_ >= 2 && time_features_ % 2 == 0, "--time-features", "even and >= 2");
}

OpfGraph OpfGraph::from_network(const DcNetwork& net) {
  OpfGraph g;
  g.nb = net.num_buses();
  g.ng = net.num_generators();
  g.nl = net.num_branches();
  const auto& pmin = net.pmin();
  const auto& pmax = net.pmax();
  g.p_scale = std::max(1e-3, pmax.mean());
  g.capacity = pmax.sum();
  double cs = 0.0;
  for (int64_t k = 0; k < g.ng; ++k)
    cs += std::abs(net.costs()[static_cast<size_t>(k)].marginal(0.5 * (pmin[k] + pmax[k])));
  g.c_scale = std::max(1.0, cs / static_cast<double>(g.ng));

  std::vector<int64_t> src(2 * g.nl), dst(2 * g.nl);
  g.edge_attr = torch::zeros({2 * g.nl, kEdgeIn});
  auto ea = g.edge_attr.accessor<float, 2>();
  const double bmean = net.susceptance().cwiseAbs().mean();
  std::vector<double> deg(g.nb, 0.0);
  for (int64_t k = 0; k < g.nl; ++k) {
    const int64_t f = net.branch_from()[k], t = net.branch_to()[k];
    src[k] = f, dst[k] = t, src[g.nl + k] = t, dst[g.nl + k] = f;
    deg[f] += 1, deg[t] += 1;
    const double rate = net.flow_limit()[k];
    for (int s = 0; s < 2; ++s) {
      const int64_t e = k + s * g.nl;
      ea[e][0] = static_cast<float>(std::abs(net.susceptance()[k]) / bmean);
      ea[e][1] = std::isfinite(rate) ? static_cast<float>(rate / g.p_scale) : 0.0f;
      ea[e][2] = std::isfinite(rate) ? 0.0f : 1.0f;
      ea[e][3] = s == 0 ? 1.0f : -1.0f;
    }
  }
  g.src = torch::tensor(src, torch::kInt64);
  g.dst = torch::tensor(dst, torch::kInt64);
  g.inv_sqrt_deg = torch::zeros({g.nb});
  for (int64_t i = 0; i < g.nb; ++i) g.inv_sqrt_deg[i] = 1.0 / std::sqrt(std::max(1.0, deg[i]));

  g.gen_attr = torch::zeros({g.ng, kGenIn});
  g.bus_attr = torch::zeros({g.nb, 5});
  auto ga = g.gen_attr.accessor<float, 2>();
  auto ba = g.bus_attr.accessor<float, 2>();
  std::vector<int64_t> gb(g.ng);
  for (int64_t i = 0; i < g.nb; ++i) {
    ba[i][0] = static_cast<float>(net.shunt_load()[i] / g.p_scale);
    ba[i][1] = i == net.reference_bus() ? 1.0f : 0.0f;
  }
  for (int64_t k = 0; k < g.ng; ++k) {
    const auto& c = net.costs()[static_cast<size_t>(k)];
    const int64_t b = net.generator_bus()[k];
    gb[k] = b;
    ga[k][0] = static_cast<float>(pmin[k] / g.p_scale);
    ga[k][1] = static_cast<float>(pmax[k] / g.p_scale);
    ga[k][2] = static_cast<float>(c.marginal(pmin[k]) / g.c_scale);
    ga[k][3] = static_cast<float>(c.marginal(0.5 * (pmin[k] + pmax[k])) / g.c_scale);
    ga[k][4] = static_cast<float>(c.marginal(pmax[k]) / g.c_scale);
    const float m0 = ga[k][2];
    ba[b][4] = ba[b][2] == 0.0f ? m0 : std::min(ba[b][4], m0);
    ba[b][2] += 1.0f;
    ba[b][3] += static_cast<float>(pmax[k] / g.p_scale);
  }
  g.gen_bus = torch::tensor(gb, torch::kInt64);
  g.pmin = vec(pmin);
  g.range = vec(pmax - pmin);
  g.gs = vec(net.shunt_load());
  g.fingerprint = {{"case", net.name()},
                   {"buses", g.nb},
                   {"generators", g.ng},
                   {"branches", g.nl},
                   {"dc_model", to_string(net.convention())},
                   {"sum_b", net.susceptance().sum()},
                   {"sum_pmax", pmax.sum()}};
  return g;
}

// ---------------------------------------------------------------- GNN

OpfGnn::OpfGnn(const OpfGraph& graph, OpfModelOptions opts) : g_(graph), o_(std::move(opts)) {
  o_.validate();
  const int64_t H = o_.hidden();
  enc1_ = register_module("enc1", torch::nn::Linear(kNodeIn, H));
  enc2_ = register_module("enc2", torch::nn::Linear(H, H));
  edge_enc_ = register_module("edge_enc", torch::nn::Linear(kEdgeIn, H));
  gen_enc_ = register_module("gen_enc", torch::nn::Linear(kGenIn, H));
  for (int64_t l = 0; l < o_.layers(); ++l) {
    const std::string s = std::to_string(l);
    a_.push_back(register_module("a" + s, torch::nn::Linear(H, H)));
    b_.push_back(register_module("b" + s, torch::nn::Linear(torch::nn::LinearOptions(H, H).bias(false))));
    w2_.push_back(register_module("w" + s, torch::nn::Linear(H, H)));
    u1_.push_back(register_module("u" + s, torch::nn::Linear(3 * H, H)));
    u2_.push_back(register_module("v" + s, torch::nn::Linear(H, H)));
    ln_.push_back(register_module("ln" + s, torch::nn::LayerNorm(torch::nn::LayerNormOptions({H}))));
  }
  head1_ = register_module("head1", torch::nn::Linear(2 * H, H));
  head2_ = register_module("head2", torch::nn::Linear(H, 1));
  lmp1_ = register_module("lmp1", torch::nn::Linear(H, H));
  lmp2_ = register_module("lmp2", torch::nn::Linear(H, 1));
  emb_ = register_module("emb", torch::nn::Linear(H, o_.embed()));
  // static graph tensors travel with the module (to(device))
  g_.src = register_buffer("src", g_.src);
  g_.dst = register_buffer("dst", g_.dst);
  g_.edge_attr = register_buffer("edge_attr", g_.edge_attr);
  g_.bus_attr = register_buffer("bus_attr", g_.bus_attr);
  g_.gen_attr = register_buffer("gen_attr", g_.gen_attr);
  g_.gen_bus = register_buffer("gen_bus", g_.gen_bus);
  g_.inv_sqrt_deg = register_buffer("inv_sqrt_deg", g_.inv_sqrt_deg);
}

GnnOutput OpfGnn::forward(const torch::Tensor& pd_mw, const torch::Tensor& in_service) {
  const auto dtype = g_.bus_attr.scalar_type();
  const torch::Tensor pd = pd_mw.to(dtype);
  const int64_t B = pd.size(0), nb = g_.nb, nl = g_.nl;
  const torch::Tensor total =
      (pd.sum(1, true) + static_cast<float>(g_.gs.sum().item<double>())) / static_cast<float>(g_.capacity);
  const torch::Tensor x =
      torch::cat({(pd / static_cast<float>(g_.p_scale)).unsqueeze(2), total.unsqueeze(2).expand({B, nb, 1}),
                  g_.bus_attr.unsqueeze(0).expand({B, nb, 5})},
                 2);
  const int64_t H = o_.hidden(), E2 = 2 * nl;
  // nodes of all instances in one [B * nb, H] matrix; edge endpoints offset per
  // instance
  const torch::Tensor off = (torch::arange(B, torch::kInt64) * nb).view({B, 1});
  const torch::Tensor src = (g_.src.view({1, E2}) + off).view(-1), dst = (g_.dst.view({1, E2}) + off).view(-1);
  torch::Tensor h = enc2_(act(enc1_(x.reshape({B * nb, kNodeIn}))));  // [B nb, H]
  const torch::Tensor e = edge_enc_(g_.edge_attr).repeat({B, 1});     // [B 2nl, H]
  torch::Tensor mask;
  if (in_service.defined()) mask = torch::cat({in_service, in_service}, 1).to(dtype).reshape({B * E2, 1});
  const torch::Tensor scale = g_.inv_sqrt_deg.repeat({B}).view({B * nb, 1});
  for (size_t l = 0; l < a_.size(); ++l) {
    const torch::Tensor hn = ln_[l](h);
    torch::Tensor m = w2_[l](act(a_[l](hn).index_select(0, src) + b_[l](hn).index_select(0, dst) + e));
    if (mask.defined()) m = m * mask;
    const torch::Tensor agg = torch::zeros_like(h).index_add_(0, dst, m) * scale;
    const torch::Tensor glob = hn.view({B, nb, H}).mean(1, true).expand({B, nb, H}).reshape({B * nb, H});
    h = h + u2_[l](act(u1_[l](torch::cat({hn, agg, glob}, 1))));
  }
  h = h.view({B, nb, H});
  GnnOutput out;
  const torch::Tensor hg = h.index_select(1, g_.gen_bus);  // [B, ng, H]
  const torch::Tensor ge = gen_enc_(g_.gen_attr).unsqueeze(0).expand_as(hg);
  const torch::Tensor z = act(head1_(torch::cat({hg, ge}, 2)));
  out.u = head2_(z).squeeze(2) + 0.5;
  out.emb = emb_(z);
  out.lmp = lmp2_(act(lmp1_(h))).squeeze(2) * static_cast<float>(g_.c_scale);
  return out;
}

// ---------------------------------------------------------------- velocity

OpfVelocity::OpfVelocity(const OpfGraph& graph, OpfModelOptions opts)
    : VelocityField(graph.ng, graph.ng * opts.embed() + graph.nb + 1), g_(graph), o_(std::move(opts)) {
  o_.validate();
  const int64_t C = o_.velocity_hidden();
  load_enc_ = register_module("load_enc", torch::nn::Linear(g_.nb, C));
  state_enc_ = register_module("state_enc", torch::nn::Linear(g_.ng, C));
  const int64_t in = 1 + o_.time_features() + 2 * o_.embed() + 2 + 2 * C;
  int64_t width = in;
  for (int64_t l = 0; l < o_.velocity_layers(); ++l) {
    layers_.push_back(register_module("l" + std::to_string(l), torch::nn::Linear(width, o_.velocity_hidden())));
    width = o_.velocity_hidden();
  }
  layers_.push_back(register_module("out", torch::nn::Linear(width, 1)));
  // zero output layer: the refinement starts as the identity on the GNN's
  // dispatch
  {
    torch::NoGradGuard ng;
    layers_.back()->weight.zero_();
    layers_.back()->bias.zero_();
  }
  const int64_t half = o_.time_features() / 2;
  freqs_ =
      register_buffer("freqs", torch::pow(10000.0, -torch::arange(half, torch::kFloat32) / static_cast<double>(half)));
  // unit coordinates to MW, for the balance mismatch
  pmin_ = register_buffer("pmin", g_.pmin.to(torch::kFloat32));
  range_ = register_buffer("range", g_.range.to(torch::kFloat32));
}

nlohmann::json OpfVelocity::config() const {
  return {{"type", "opf_velocity"}, {"options", o_.to_json()}, {"fingerprint", g_.fingerprint}};
}

torch::Tensor OpfVelocity::context(const GnnOutput& out, const torch::Tensor& pd) const {
  const int64_t B = out.emb.size(0);
  const torch::Tensor p = pd.to(torch::kFloat64);
  const torch::Tensor d = (p.sum(1, true) + g_.gs.sum()) / g_.p_scale;
  return torch::cat({out.emb.reshape({B, -1}), (p / g_.p_scale).to(out.emb.scalar_type()), d.to(out.emb.scalar_type())},
                    1);
}

torch::Tensor OpfVelocity::velocity(const torch::Tensor& t, const torch::Tensor& x, const torch::Tensor& ctx) {
  const int64_t B = x.size(0), ng = g_.ng, E = o_.embed();
  const torch::Tensor tb = (t.dim() == 0 ? t.expand({B}) : t).to(x.scalar_type()).view({B, 1});
  const torch::Tensor arg = 1000.0 * tb * freqs_.view({1, -1});
  const torch::Tensor tf = torch::cat({torch::sin(arg), torch::cos(arg)}, 1);  // [B, F]
  const torch::Tensor emb = ctx.slice(1, 0, ng * E).view({B, ng, E});
  const torch::Tensor loads = ctx.slice(1, ng * E, ng * E + g_.nb);          // [B, nb] pd / p_scale
  const torch::Tensor d = ctx.slice(1, ng * E + g_.nb, ng * E + g_.nb + 1);  // [B, 1] D / p_scale
  const torch::Tensor p = pmin_ + range_ * x;                                // MW
  const torch::Tensor mism = p.sum(1, true) / static_cast<float>(g_.p_scale) - d;
  const torch::Tensor glob = torch::cat({tf, emb.mean(1), mism, d, act(load_enc_(loads)), act(state_enc_(x))}, 1)
                                 .unsqueeze(1)
                                 .expand({B, ng, -1});
  torch::Tensor h = torch::cat({x.unsqueeze(2), emb, glob}, 2);
  for (size_t l = 0; l + 1 < layers_.size(); ++l) h = act(layers_[l](h));
  return layers_.back()(h).squeeze(2);
}

// ---------------------------------------------------------------- model

OpfModel::OpfModel(const DcNetwork& net, OpfModelOptions opts)
    : graph_(OpfGraph::from_network(net)), opts_(std::move(opts)) {
  opts_.validate();
  gnn_ = std::make_shared<OpfGnn>(graph_, opts_);
  vel_ = std::make_shared<OpfVelocity>(graph_, opts_);
}

torch::Tensor OpfModel::to_unit(const torch::Tensor& pg) const {
  return (pg.to(torch::kFloat64) - graph_.pmin) / graph_.range.clamp_min(1e-12);
}

torch::Tensor OpfModel::from_unit(const torch::Tensor& u) const {
  return graph_.pmin + graph_.range * u.to(torch::kFloat64);
}

torch::Tensor OpfModel::in_service(const torch::Tensor& outage) const {
  const int64_t B = outage.size(0);
  torch::Tensor m = torch::ones({B, graph_.nl});
  const auto o = outage.to(torch::kInt64).contiguous();
  const int64_t* p = o.data_ptr<int64_t>();
  for (int64_t i = 0; i < B; ++i) {
    if (p[i] < -1 || p[i] >= graph_.nl)
      usage_error("OpfModel", "outage " + std::to_string(p[i]) + " is not a branch of the grid");
    if (p[i] >= 0) m[i][p[i]] = 0.0;
  }
  return m;
}

OpfPrediction OpfModel::predict(const torch::Tensor& pd, const torch::Tensor& outage, const OdeOptions& ode) const {
  if (pd.dim() != 2 || pd.size(1) != graph_.nb)
    usage_error("OpfModel::predict", "pd must be [B, " + std::to_string(graph_.nb) + "] (MW per bus)");
  if (!torch::isfinite(pd).all().item<bool>()) usage_error("OpfModel::predict", "pd must be finite");
  // On the CPU the batch goes in fixed chunks of kChunk instances, one chunk per thread at a
  // time: the GNN's and the velocity field's operations are too small to gain from threads
  // inside each (case30, 1000 instances, 2 threads: 0.20-0.22 ms per instance as one batch,
  // 0.14-0.17 in chunks of 128 or 256), and fixed chunks give the same numbers on any number of
  // threads.
  constexpr int64_t kChunk = 128;
  const int64_t B = pd.size(0);
  const int64_t chunks = pd.is_cuda() ? 1 : std::max<int64_t>(1, (B + kChunk - 1) / kChunk);
  const int64_t size = pd.is_cuda() ? B : kChunk;
  std::vector<OpfPrediction> parts(static_cast<size_t>(chunks));
  auto run = [&](int64_t c) {
    c10::InferenceMode guard;
    const int64_t lo = c * size, len = std::min(size, B - lo);
    const torch::Tensor p = pd.narrow(0, lo, len);
    const torch::Tensor mask = outage.defined() ? in_service(outage.narrow(0, lo, len)) : torch::Tensor();
    const GnnOutput out = gnn_->forward(p, mask);
    OpfPrediction& r = parts[static_cast<size_t>(c)];
    r.pg_gnn = from_unit(out.u.clamp(0.0, 1.0));
    r.lmp = out.lmp.to(torch::kFloat64);
    const torch::Tensor ctx = vel_->context(out, p);
    const torch::Tensor u1 =
        odeint([&](double t, const torch::Tensor& y) { return vel_->forward(torch::tensor(t, y.options()), y, ctx); },
               out.u, 0.0, 1.0, ode);
    r.pg_cfm = from_unit(u1.clamp(0.0, 1.0));
  };
  if (chunks == 1)
    run(0);
  else
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) run(c);
    });
  if (chunks == 1) return parts[0];
  OpfPrediction all;
  std::vector<torch::Tensor> g, f, l;
  for (const auto& r : parts) g.push_back(r.pg_gnn), f.push_back(r.pg_cfm), l.push_back(r.lmp);
  all.pg_gnn = torch::cat(g);
  all.pg_cfm = torch::cat(f);
  all.lmp = torch::cat(l);
  return all;
}

void OpfModel::save(const std::string& path, const nlohmann::json& metadata) const {
  H5Writer w(path, "opf_model", kModelVersion);
  const nlohmann::json cfg = {{"options", opts_.to_json()}, {"fingerprint", graph_.fingerprint}};
  w.set_attr("/", "config", cfg.dump());
  w.set_attr("/", "metadata", metadata.dump());
  write_state(w, "gnn", *gnn_);
  write_state(w, "velocity", *vel_);
  w.commit();
}

OpfModel OpfModel::load(const std::string& path, const DcNetwork& net, nlohmann::json* metadata) {
  H5Reader r(path);
  r.expect_format("opf_model", kModelVersion);
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(r.attr_string("/", "config"));
  } catch (const nlohmann::json::exception&) {
    runtime_error("OpfModel::load", path + ": attribute config is not valid JSON");
  }
  // The model, as the file's config describes it (a member's lambda: it may set private parts).
  auto build = [&]() {
    OpfModel m(net, OpfModelOptions::from_json(cfg.at("options")));
    const auto& want = cfg.at("fingerprint");
    const auto& have = m.graph_.fingerprint;
    auto close = [](double a, double b) { return std::abs(a - b) <= 1e-9 * std::max(1.0, std::abs(a)); };
    if (want.at("buses") != have.at("buses") || want.at("generators") != have.at("generators") ||
        want.at("branches") != have.at("branches") || want.at("dc_model") != have.at("dc_model") ||
        !close(want.at("sum_b"), have.at("sum_b")) || !close(want.at("sum_pmax"), have.at("sum_pmax")))
      runtime_error("OpfModel::load", path + " was trained on " + want.at("case").get<std::string>() + " (" +
                                          std::to_string(want.at("buses").get<int64_t>()) + " buses, " +
                                          std::to_string(want.at("generators").get<int64_t>()) + " generators, " +
                                          want.at("dc_model").get<std::string>() + " DC model), not on " + net.source() +
                                          " (" + std::to_string(net.num_buses()) + " buses, " +
                                          std::to_string(net.num_generators()) + " generators, " +
                                          to_string(net.convention()) + ")");
    read_state(r, "gnn", *m.gnn_);
    read_state(r, "velocity", *m.vel_);
    if (metadata)
      *metadata =
          r.has_attr("/", "metadata") ? nlohmann::json::parse(r.attr_string("/", "metadata")) : nlohmann::json::object();
    return m;
  };
  // A config with a missing or mistyped field is a runtime error naming the file (found by
  // fuzz/fuzz_h5: nlohmann's out_of_range escaped).
  try {
    return build();
  } catch (const nlohmann::json::exception& e) {
    runtime_error("OpfModel::load", path + ": attribute config or metadata does not hold what an OPF model needs (" +
                                        e.what() + ")");
  }
}

}  // namespace nfkit
