#include "nfkit/opf/pipeline.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iomanip>
#include <map>
#include <sstream>
#include <tuple>

#include "nfkit/core/error.h"
#include "nfkit/core/files.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/flow_matching.h"

namespace nfkit {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Eigen::VectorXd row(const torch::Tensor& t, int64_t i) {
  const torch::Tensor r = t[i].to(torch::kFloat64).contiguous();
  return Eigen::Map<const Eigen::VectorXd>(r.data_ptr<double>(), r.numel());
}

std::string fmt(double v, int prec = 4) {
  std::ostringstream s;
  s << std::setprecision(prec) << v;
  return s.str();
}

std::vector<torch::Tensor> snapshot(torch::nn::Module& m) {
  std::vector<torch::Tensor> s;
  for (const auto& p : m.parameters()) s.push_back(p.detach().clone());
  return s;
}
void restore(torch::nn::Module& m, const std::vector<torch::Tensor>& s) {
  torch::NoGradGuard ng;
  auto ps = m.parameters();
  for (size_t i = 0; i < ps.size(); ++i) ps[i].copy_(s[i]);
}

double cosine_lr(double lr, int64_t step, int64_t total) {
  return 0.5 * lr *
         (1.0 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, total))));
}

void set_lr(torch::optim::Adam& opt, double lr) {
  for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamOptions&>(g.options()).lr(lr);
}

// One training stage: epochs of shuffled minibatches (the epoch's order seeded by
// (seed, 13, seed_offset + epoch)), Adam with cosine decay and gradient clipping at 10, the
// validation score after every epoch, the best weights restored at the end; progress about ten
// times; stops early when asked.
struct Stage {
  std::string name;  // "gnn", "cfm"
  int64_t epochs = 1;
  double lr = 1e-3;
  uint64_t seed_offset = 0;
  std::function<torch::Tensor(const torch::Tensor& batch)> loss;  // rows of the training set
  std::function<double()> validate;                                // lower is better
  std::function<std::string()> note;                               // appended to progress lines
};
struct StageResult {
  int64_t best_epoch = 0;
  double best = 0.0;
  std::vector<std::pair<int64_t, double>> curve;
  bool interrupted = false;
};
StageResult run_stage(torch::nn::Module& module, const Stage& st, int64_t rows, int64_t batch, uint64_t seed,
                      const std::function<void(const std::string&)>& progress,
                      const std::function<bool()>& stop, Clock::time_point t0) {
  torch::optim::Adam opt(module.parameters(), torch::optim::AdamOptions(st.lr));
  const int64_t steps_per_epoch = (rows + batch - 1) / batch;
  StageResult r;
  r.best = st.validate();
  auto best_w = snapshot(module);
  const int64_t total = st.epochs * steps_per_epoch;
  int64_t step = 0;
  const int64_t every = std::max<int64_t>(1, st.epochs / 10);
  for (int64_t ep = 1; ep <= st.epochs; ++ep) {
    torch::manual_seed(derive_seed(seed, 13, st.seed_offset + static_cast<uint64_t>(ep)));
    const torch::Tensor order = torch::randperm(rows, torch::kInt64);
    double sum = 0.0;
    for (int64_t s = 0; s < steps_per_epoch; ++s, ++step) {
      const torch::Tensor loss = st.loss(order.slice(0, s * batch, std::min(rows, (s + 1) * batch)));
      set_lr(opt, cosine_lr(st.lr, step, total));
      opt.zero_grad();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(module.parameters(), 10.0);
      opt.step();
      sum += loss.item<double>();
    }
    const double v = st.validate();
    r.curve.emplace_back(ep, v);
    if (v < r.best) {
      r.best = v;
      best_w = snapshot(module);
      r.best_epoch = ep;
    }
    if (ep % every == 0 || ep == st.epochs)
      progress(st.name + " epoch " + std::to_string(ep) + "/" + std::to_string(st.epochs) + "  loss " +
               fmt(sum / steps_per_epoch) + "  val rmse " + fmt(v) + " (best " + fmt(r.best) +
               (st.note ? st.note() : std::string()) + ")  " + fmt(since(t0), 3) + " s");
    if (stop()) {
      r.interrupted = true;
      break;
    }
  }
  restore(module, best_w);
  return r;
}

void check_dataset(const OpfDataset& data, const DcNetwork& net, const std::string& what) {
  if (data.size() == 0) runtime_error("opf", what + " has no scenarios");
  if (data.pd.size(1) != net.num_buses() || data.pg.size(1) != net.num_generators() ||
      data.flows.size(1) != net.num_branches())
    runtime_error("opf", what + " (case " + data.case_name + ", " + std::to_string(data.pd.size(1)) + " buses, " +
                             std::to_string(data.pg.size(1)) + " generators) does not come from " + net.source() +
                             " (" + std::to_string(net.num_buses()) + " buses, " +
                             std::to_string(net.num_generators()) + " generators)");
  if (data.dc_model != to_string(net.convention()))
    runtime_error("opf",
                  what + " was solved in the " + data.dc_model + " DC model, not " + to_string(net.convention()));
}

}  // namespace

OpfLossPhysics::OpfLossPhysics(const PowerCase& pc, DcConvention conv, const DcNetwork& base,
                               const torch::Tensor& outages) {
  nb = base.num_buses();
  nl = base.num_branches();
  std::vector<int64_t> keys = {-1};
  {
    const auto o = std::get<0>(torch::_unique(outages.to(torch::kInt64)));
    for (int64_t i = 0; i < o.numel(); ++i)
      if (o[i].item<int64_t>() >= 0) keys.push_back(o[i].item<int64_t>());
  }
  ptdf = torch::zeros({static_cast<int64_t>(keys.size()), nl, nb});
  fshift = torch::zeros({static_cast<int64_t>(keys.size()), nl});
  std::map<int, int64_t> base_index;  // file row -> base branch index
  for (int64_t k = 0; k < nl; ++k) base_index[base.branch_rows()[k]] = k;
  for (size_t s = 0; s < keys.size(); ++s) {
    const DcNetwork net = keys[s] < 0 ? base : DcNetwork(with_branch_outage(pc, base.branch_rows()[keys[s]]), conv);
    const Eigen::MatrixXd p = net.ptdf();
    const Eigen::VectorXd f = net.flows(-net.shunt_load(), Eigen::VectorXd::Zero(net.num_generators()));
    std::vector<int64_t> rows;
    for (int64_t k = 0; k < net.num_branches(); ++k) rows.push_back(base_index.at(net.branch_rows()[k]));
    const torch::Tensor ri = torch::tensor(rows, torch::kInt64);
    // Eigen is column-major: the [nb, nl_k] view of p's storage is p^T
    const torch::Tensor pk =
        torch::from_blob(const_cast<double*>(p.data()), {nb, net.num_branches()}, torch::kFloat64).t();
    ptdf[static_cast<int64_t>(s)].index_copy_(0, ri, pk.to(torch::kFloat32));
    fshift[static_cast<int64_t>(s)].index_copy_(
        0, ri, torch::from_blob(const_cast<double*>(f.data()), {f.size()}, torch::kFloat64).to(torch::kFloat32));
    slot[keys[s]] = static_cast<int64_t>(s);
  }
  rate = torch::zeros({nl});
  limited = torch::zeros({nl});
  for (int64_t k = 0; k < nl; ++k)
    if (std::isfinite(base.flow_limit()[k])) {
      rate[k] = base.flow_limit()[k];
      limited[k] = 1.0;
    }
  gen_bus =
      torch::tensor(std::vector<int64_t>(base.generator_bus().begin(), base.generator_bus().end()), torch::kInt64);
  gs = torch::from_blob(const_cast<double*>(base.shunt_load().data()), {nb}, torch::kFloat64).to(torch::kFloat32);
  int order = 1;
  for (const auto& c : base.costs())
    if (c.model == GenCost::Model::kPolynomial) order = std::max(order, c.order());
  const int64_t ng = base.num_generators();
  {
    const Eigen::VectorXd r = base.pmax() - base.pmin();
    balance_scale = std::max(1e-3, r.norm());
  }
  dcoef = torch::zeros({ng, order});
  for (int64_t g = 0; g < ng; ++g) {
    const auto& c = base.costs()[static_cast<size_t>(g)];
    if (c.model == GenCost::Model::kPolynomial) {
      const int n = c.order();
      for (int k = 0; k < n; ++k) dcoef[g][k] = (k + 1) * c.coeffs[static_cast<size_t>(n - (k + 1))];
    } else {
      Pwl w;
      w.g = g;
      const int np = c.num_points();
      std::vector<float> xs, sl;
      for (int j = 0; j < np; ++j) xs.push_back(static_cast<float>(c.coeffs[2 * j]));
      for (int j = 0; j + 1 < np; ++j)
        sl.push_back(
            static_cast<float>((c.coeffs[2 * j + 3] - c.coeffs[2 * j + 1]) / (c.coeffs[2 * j + 2] - c.coeffs[2 * j])));
      w.xs = torch::tensor(xs);
      w.slopes = torch::tensor(sl);
      pwl.push_back(w);
    }
  }
}

torch::Tensor OpfLossPhysics::slots(const torch::Tensor& outage) const {
  std::vector<int64_t> s(static_cast<size_t>(outage.numel()));
  const auto o = outage.contiguous();
  for (int64_t i = 0; i < o.numel(); ++i) s[static_cast<size_t>(i)] = slot.at(o[i].item<int64_t>());
  return torch::tensor(s, torch::kInt64);
}
torch::Tensor OpfLossPhysics::flows(const torch::Tensor& pd, const torch::Tensor& pg, const torch::Tensor& sl) const {
  const torch::Tensor inj = torch::zeros_like(pd).index_add_(1, gen_bus, pg) - pd - gs;
  return torch::bmm(ptdf.index_select(0, sl), inj.unsqueeze(2)).squeeze(2) + fshift.index_select(0, sl);
}
OpfLossTerms OpfLossPhysics::terms(const torch::Tensor& pd, const torch::Tensor& pg, const torch::Tensor& u,
                                   const torch::Tensor& lmp, const torch::Tensor& sl, double p_scale,
                                   double c_scale) const {
  OpfLossTerms t;
  const double ps = p_scale, cs = c_scale;
  t.balance = ((pg.sum(1) - pd.sum(1) - gs.sum()) / balance_scale).pow(2).mean();
  t.line = (torch::relu(flows(pd, pg, sl).abs() - rate) * limited / ps).pow(2).mean();
  const torch::Tensor r = (marginal(pg) - lmp.index_select(1, gen_bus)) / cs;
  t.kkt = (torch::relu(r) * u + torch::relu(-r) * (1.0 - u)).mean();
  return t;
}

torch::Tensor OpfLossPhysics::marginal(const torch::Tensor& pg) const {
  torch::Tensor m = torch::zeros_like(pg);
  for (int64_t k = dcoef.size(1) - 1; k >= 0; --k) m = m * pg + dcoef.select(1, k);
  for (const auto& w : pwl) {
    const torch::Tensor p = pg.select(1, w.g).unsqueeze(1);
    const int64_t ns = w.slopes.numel();
    torch::Tensor idx = (p >= w.xs.slice(0, 1, ns).unsqueeze(0)).sum(1);
    m.select(1, w.g).copy_(w.slopes.index_select(0, idx));
  }
  return m;
}

nlohmann::json OpfTrainOptions::to_json() const {
  return {{"model", model.to_json()},
          {"epochs", epochs},
          {"cfm_epochs", cfm_epochs},
          {"batch_size", batch_size},
          {"lr", lr},
          {"cfm_lr", cfm_lr},
          {"val_fraction", val_fraction},
          {"w_pg", w_pg},
          {"w_lmp", w_lmp},
          {"w_balance", w_balance},
          {"w_line", w_line},
          {"w_kkt", w_kkt},
          {"cfm_sigma", cfm_sigma},
          {"ode", ode.to_json()},
          {"seed", seed}};
}

void OpfTrainOptions::validate() const {
  model.validate();
  auto need = [](bool ok, const char* opt, const std::string& what) {
    if (!ok) usage_error("opf train", std::string(opt) + " must be " + what);
  };
  need(epochs >= 1, "--epochs", ">= 1");
  need(cfm_epochs >= 0, "--cfm-epochs", ">= 0");
  need(batch_size >= 1, "--batch", ">= 1");
  need(lr > 0 && std::isfinite(lr), "--lr", "> 0");
  need(cfm_lr > 0 && std::isfinite(cfm_lr), "--cfm-lr", "> 0");
  need(val_fraction > 0 && val_fraction < 1, "--val-fraction", "in (0, 1)");
  for (double w : {w_pg, w_lmp, w_balance, w_line, w_kkt})
    need(w >= 0 && std::isfinite(w), "a loss weight (--w-*)", ">= 0");
  need(cfm_sigma >= 0, "--cfm-sigma", ">= 0");
  ode.validate();
}

nlohmann::json OpfTrainReport::to_json() const {
  return {{"train", train},
          {"val", val},
          {"gnn_best_epoch", gnn_best_epoch},
          {"gnn_val_rmse", gnn_val_rmse},
          {"cfm_best_epoch", cfm_best_epoch},
          {"cfm_val_rmse", std::isfinite(cfm_val_rmse) ? nlohmann::json(cfm_val_rmse) : nlohmann::json()},
          {"seconds", seconds},
          {"interrupted", interrupted},
          {"gnn_curve", gnn_curve},
          {"cfm_curve", cfm_curve}};
}

torch::Tensor outage_indices(const OpfDataset& data, const DcNetwork& base) {
  std::map<int64_t, int64_t> index;  // 1-based file row -> network index
  for (int64_t k = 0; k < base.num_branches(); ++k) index[base.branch_rows()[k] + 1] = k;
  const int64_t n = data.size();
  torch::Tensor out = torch::full({n}, -1, torch::kInt64);
  const auto o = data.outage.to(torch::kInt64).contiguous();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = o[i].item<int64_t>();
    if (r == 0) continue;
    const auto it = index.find(r);
    if (it == index.end())
      runtime_error("opf", "dataset scenario " + std::to_string(i) + ": outage of branch row " + std::to_string(r) +
                               ", which is not an in-service branch of " + base.source());
    out[i] = it->second;
  }
  return out;
}

OpfTrained train_opf_model(const OpfDataset& data, const PowerCase& pc, DcConvention conv,
                           const OpfTrainOptions& opts) {
  opts.validate();
  const auto t0 = Clock::now();
  const DcNetwork net(pc, conv);
  check_dataset(data, net, "the training dataset");
  const torch::Tensor ok = (data.status == 0).nonzero().squeeze(1);
  const int64_t n = ok.numel();
  if (n < 10)
    runtime_error("opf train", "the training dataset has " + std::to_string(n) + " optimal scenarios; need >= 10");

  torch::manual_seed(derive_seed(opts.seed, 13, 0));
  OpfTrained tr{OpfModel(net, opts.model), {}};
  OpfModel& model = tr.model;
  OpfTrainReport& rep = tr.report;
  const torch::Tensor perm = ok.index_select(0, torch::randperm(n, torch::kInt64));
  const int64_t nval =
      std::max<int64_t>(1, static_cast<int64_t>(std::llround(opts.val_fraction * static_cast<double>(n))));
  const torch::Tensor itr = perm.slice(0, nval), iva = perm.slice(0, 0, nval);
  rep.train = itr.numel();
  rep.val = iva.numel();

  const torch::Tensor all_out = outage_indices(data, net);
  const OpfLossPhysics phys(pc, conv, net, all_out.index_select(0, ok));
  auto take = [&](const torch::Tensor& idx) {
    struct Part {
      torch::Tensor pd, y, lmp, mask, slot, demand;
    } p;
    p.pd = data.pd.index_select(0, idx).to(torch::kFloat32);
    p.y = model.to_unit(data.pg.index_select(0, idx)).to(torch::kFloat32);
    p.lmp = data.lmp.index_select(0, idx).to(torch::kFloat32);
    const torch::Tensor o = all_out.index_select(0, idx);
    p.mask = model.in_service(o);
    p.slot = phys.slots(o);
    p.demand = p.pd.sum(1) + phys.gs.sum();
    return p;
  };
  const auto tr_data = take(itr), va_data = take(iva);
  const torch::Tensor pmin = model.graph().pmin.to(torch::kFloat32), range = model.graph().range.to(torch::kFloat32);
  const float ps = static_cast<float>(model.graph().p_scale), cs = static_cast<float>(model.graph().c_scale);
  const int64_t ntr = rep.train, bs = std::min(opts.batch_size, ntr);
  auto progress = [&](const std::string& s) {
    if (!opts.quiet) std::fprintf(stderr, "%s\n", s.c_str());
  };
  auto stop = [&]() { return opts.should_stop && opts.should_stop(); };

  // Validation RMSE over the dispatchable units (P_max > P_min): fixed ones (pglib case118 has
  // 35 synchronous condensers at P = 0) would only dilute it.
  const torch::Tensor free = (model.graph().range > 1e-9).nonzero().squeeze(1);
  if (free.numel() == 0) runtime_error("opf train", "the grid has no dispatchable unit (every P_max = P_min)");

  // ---- stage 1: the physics-informed GNN
  auto gnn = model.gnn();
  auto val_gnn = [&]() {
    torch::NoGradGuard g;
    gnn->eval();
    const GnnOutput o = gnn->forward(va_data.pd, va_data.mask);
    gnn->train();
    return std::sqrt((o.u.clamp(0.0, 1.0) - va_data.y).index_select(1, free).pow(2).mean().item<double>());
  };
  // what stage 1 depends on: a stage-1 checkpoint is reused only for the same
  const nlohmann::json stage1 = {{"model", opts.model.to_json()},
                                 {"epochs", opts.epochs},
                                 {"batch_size", opts.batch_size},
                                 {"lr", opts.lr},
                                 {"val_fraction", opts.val_fraction},
                                 {"w_pg", opts.w_pg},
                                 {"w_lmp", opts.w_lmp},
                                 {"w_balance", opts.w_balance},
                                 {"w_line", opts.w_line},
                                 {"w_kkt", opts.w_kkt},
                                 {"balance_scale", "range_norm"},  // since 2026-12-07; was p_scale
                                 {"seed", opts.seed},
                                 {"scenarios", data.size()},
                                 {"pd_sum", data.pd.sum().item<double>()}};
  bool resumed = false;
  if (!opts.gnn_checkpoint.empty() && file_exists(opts.gnn_checkpoint)) {
    nlohmann::json meta;
    try {
      const OpfModel saved = OpfModel::load(opts.gnn_checkpoint, net, &meta);
      if (meta.value("stage1", nlohmann::json()) == stage1) {
        torch::NoGradGuard g;
        auto dst = gnn->parameters();
        const auto src = saved.gnn()->parameters();
        for (size_t i = 0; i < dst.size(); ++i) dst[i].copy_(src[i]);
        rep.gnn_best_epoch = meta.at("gnn_best_epoch");
        rep.gnn_val_rmse = meta.at("gnn_val_rmse");
        rep.gnn_curve = meta.at("gnn_curve").get<std::vector<std::pair<int64_t, double>>>();
        resumed = true;
        progress("gnn: stage 1 taken from " + opts.gnn_checkpoint + " (validation RMSE " + fmt(rep.gnn_val_rmse) + ")");
      } else {
        progress("gnn: " + opts.gnn_checkpoint + " was made with other options; training stage 1 again");
      }
    } catch (const Error& e) {
      progress(std::string("gnn: ignoring ") + opts.gnn_checkpoint + ": " + e.what());
    }
  }
  if (!resumed) {
    Stage st{"gnn", opts.epochs, opts.lr, 1000000, {}, val_gnn, {}};
    st.loss = [&](const torch::Tensor& b) {
      const torch::Tensor pd = tr_data.pd.index_select(0, b), y = tr_data.y.index_select(0, b);
      const GnnOutput o = gnn->forward(pd, tr_data.mask.index_select(0, b));
      const torch::Tensor u = o.u, uc = u.clamp(0.0, 1.0);
      const torch::Tensor err =
          torch::where(y <= 1e-6, torch::relu(u), torch::where(y >= 1.0 - 1e-6, torch::relu(1.0 - u), u - y));
      torch::Tensor loss = opts.w_pg * err.pow(2).mean();
      const torch::Tensor pg = pmin + range * uc;
      // Huber: near infeasibility (130% of case30) LMPs reach ~1000 times their usual size
      if (opts.w_lmp > 0)
        loss = loss + opts.w_lmp * torch::smooth_l1_loss(o.lmp / cs, tr_data.lmp.index_select(0, b) / cs);
      const auto terms = phys.terms(pd, pg, uc, o.lmp, tr_data.slot.index_select(0, b), ps, cs);
      return loss + opts.w_balance * terms.balance + opts.w_line * terms.line + opts.w_kkt * terms.kkt;
    };
    const auto r = run_stage(*gnn, st, ntr, bs, opts.seed, progress, stop, t0);
    rep.gnn_best_epoch = r.best_epoch;
    rep.gnn_curve = r.curve;
    rep.interrupted = r.interrupted;
    rep.gnn_val_rmse = r.best;
    if (!rep.interrupted && !opts.gnn_checkpoint.empty())
      model.save(opts.gnn_checkpoint, {{"stage1", stage1},
                                       {"gnn_best_epoch", rep.gnn_best_epoch},
                                       {"gnn_val_rmse", rep.gnn_val_rmse},
                                       {"gnn_curve", rep.gnn_curve}});
  }

  // ---- stage 2: the flow-matching refinement
  if (opts.cfm_epochs > 0 && !rep.interrupted) {
    gnn->eval();
    auto vel = model.velocity();
    auto inputs = [&](const decltype(tr_data)& d) {
      torch::NoGradGuard g;
      const GnnOutput o = gnn->forward(d.pd, d.mask);
      return std::make_pair(o.u, vel->context(o, d.pd));
    };
    // Named tensors, not structured bindings: C++17 lambdas cannot capture bindings (clang).
    torch::Tensor x0_tr, c_tr, x0_va, c_va;
    std::tie(x0_tr, c_tr) = inputs(tr_data);
    std::tie(x0_va, c_va) = inputs(va_data);
    auto val_cfm = [&]() {
      torch::NoGradGuard g;
      const torch::Tensor u1 =
          odeint([&](double t, const torch::Tensor& y) { return vel->forward(torch::tensor(t, y.options()), y, c_va); },
                 x0_va, 0.0, 1.0, opts.ode);
      return std::sqrt((u1.clamp(0.0, 1.0) - va_data.y).index_select(1, free).pow(2).mean().item<double>());
    };
    const CfmOptions co = CfmOptions().method(CfmMethod::kICFM).sigma(opts.cfm_sigma);
    Stage st{"cfm", opts.cfm_epochs, opts.cfm_lr, 2000000, {}, val_cfm, {}};
    st.loss = [&](const torch::Tensor& b) {
      return cfm_loss(*vel, co, x0_tr.index_select(0, b), tr_data.y.index_select(0, b), c_tr.index_select(0, b));
    };
    st.note = [&] { return ", GNN alone " + fmt(rep.gnn_val_rmse); };
    const auto r = run_stage(*vel, st, ntr, bs, opts.seed, progress, stop, t0);
    rep.cfm_best_epoch = r.best_epoch;
    rep.cfm_curve = r.curve;
    rep.interrupted = r.interrupted;
    rep.cfm_val_rmse = r.best;
  }
  gnn->eval();
  model.velocity()->eval();
  rep.seconds = since(t0);
  return tr;
}

// ---------------------------------------------------------------- evaluation

nlohmann::json OpfLevelResult::to_json() const {
  return {{"level", level},
          {"scenarios", scenarios},
          {"optimal", optimal},
          {"refused", refused},
          {"returned", returned},
          {"feasible", feasible},
          {"gap_gnn_pct", gap_gnn},
          {"gap_gnn_projected_pct", gap_gnn_projected},
          {"gap_cfm_pct", gap_cfm},
          {"gap_final_pct", gap_final},
          {"gap_final_max_pct", gap_final_max},
          {"violation_gnn_mean_mw", viol_gnn_mean},
          {"violation_gnn_max_mw", viol_gnn_max},
          {"violation_cfm_mean_mw", viol_cfm_mean},
          {"violation_cfm_max_mw", viol_cfm_max},
          {"worst_after_projection_mw", worst_after}};
}

nlohmann::json OpfEvalReport::to_json() const {
  nlohmann::json lv = nlohmann::json::array();
  for (const auto& l : levels) lv.push_back(l.to_json());
  return {
      {"levels", lv},
      {"all", all.to_json()},
      {"fallbacks", fallbacks},
      {"returned_infeasible", returned_infeasible},
      {"pipeline_seconds", pipeline_seconds},
      {"projection_seconds", projection_seconds},
      {"pipeline_ms_per_instance", all.scenarios ? 1e3 * pipeline_seconds / static_cast<double>(all.scenarios) : 0.0},
      {"ipopt_ms_per_instance", 1e3 * ipopt_seconds_per_instance},
      {"ipopt_timed", ipopt_timed},
      {"repeats", repeats},
      {"ipopt_projection_ms_per_instance", 1e3 * ipopt_projection_seconds_per_instance},
      {"speedup", speedup},
      {"ode", ode}};
}

std::string OpfEvalReport::table() const {
  std::ostringstream s;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%6s %6s %6s | %9s %9s %9s %9s | %10s | %10s %10s | %8s %7s\n", "load", "n", "solved",
                "gap GNN%", "+CFM%", "+proj%", "max%", "GNN+proj%", "viol GNN", "viol CFM", "feasible", "refused");
  s << buf;
  auto line = [&](const OpfLevelResult& l, const std::string& name) {
    std::snprintf(buf, sizeof buf,
                  "%6s %6lld %6lld | %9.4f %9.4f %9.4f %9.4f | %10.4f | %10.3g %10.3g | "
                  "%7.1f%% %7lld\n",
                  name.c_str(), static_cast<long long>(l.scenarios), static_cast<long long>(l.optimal), l.gap_gnn,
                  l.gap_cfm, l.gap_final, l.gap_final_max, l.gap_gnn_projected, l.viol_gnn_max, l.viol_cfm_max,
                  l.optimal ? 100.0 * static_cast<double>(l.feasible) / static_cast<double>(l.optimal) : 100.0,
                  static_cast<long long>(l.refused));
    s << buf;
  };
  for (const auto& l : levels) line(l, fmt(100.0 * l.level, 4) + "%");
  line(all, "all");
  char foot[640];  // the footer is longer than a table line: 256 bytes cut its speed line off
  std::snprintf(foot, sizeof foot,
                "gaps: mean |cost - Ipopt's| / Ipopt's over solved scenarios (+proj: GNN+CFM projected; "
                "GNN+proj: the GNN projected without refinement); viol: worst MW violation before projection (max)\n"
                "pipeline %.3f ms per instance (batched, projection %.3f ms of "
                "it; Ipopt's projection %.3f ms), "
                "Ipopt %.3f ms one by one (%lld timed): %.1fx (best of %lld passes each)\n",
                all.scenarios ? 1e3 * pipeline_seconds / static_cast<double>(all.scenarios) : 0.0,
                all.scenarios ? 1e3 * projection_seconds / static_cast<double>(all.scenarios) : 0.0,
                1e3 * ipopt_projection_seconds_per_instance, 1e3 * ipopt_seconds_per_instance,
                static_cast<long long>(ipopt_timed), speedup, static_cast<long long>(repeats));
  s << foot;
  return s.str();
}

OpfEvalReport evaluate_opf_model(const OpfModel& model, const OpfDataset& data, const PowerCase& pc, DcConvention conv,
                                 const OpfEvalOptions& opts) {
  opts.ode.validate();
  if (opts.ipopt_sample < 0) usage_error("opf eval", "--ipopt-sample must be >= 0");
  if (opts.repeats < 1) usage_error("opf eval", "--repeats must be >= 1");
  const DcNetwork base(pc, conv);
  check_dataset(data, base, "the evaluation dataset");
  const int64_t n = data.size();
  const torch::Tensor outage = outage_indices(data, base);
  // networks and projectors per topology (setup, not timed)
  std::map<int64_t, std::unique_ptr<DcNetwork>> nets;
  std::map<int64_t, std::unique_ptr<DcProjector>> projs;
  std::map<int64_t, std::vector<int64_t>> groups;
  for (int64_t i = 0; i < n; ++i) groups[outage[i].item<int64_t>()].push_back(i);
  for (const auto& [k, idx] : groups) {
    nets[k] =
        std::make_unique<DcNetwork>(k < 0 ? base : DcNetwork(with_branch_outage(pc, base.branch_rows()[k]), conv));
    projs[k] = std::make_unique<DcProjector>(*nets[k], opts.projection);
  }
  OpfEvalReport rep;
  rep.ode = opts.ode.summary();
  // the batched pipeline, timed: best of `repeats` passes (each gives the same numbers; one
  // pass over 1000 case30 instances takes ~150 ms, so single passes scatter by ±15%)
  const torch::Tensor pd = data.pd.to(torch::kFloat64);
  OpfPrediction pred;
  std::vector<Projection> proj(static_cast<size_t>(n));
  rep.pipeline_seconds = INFINITY;
  for (int64_t pass = 0; pass < opts.repeats; ++pass) {
    const auto t0 = Clock::now();
    pred = model.predict(pd, outage, opts.ode);
    const auto t1 = Clock::now();
    for (const auto& [k, idx] : groups) {
      const int64_t m = static_cast<int64_t>(idx.size());
      Eigen::MatrixXd pds(m, base.num_buses()), p0s(m, base.num_generators());
      for (int64_t j = 0; j < m; ++j) {
        pds.row(j) = row(pd, idx[static_cast<size_t>(j)]).transpose();
        p0s.row(j) = row(pred.pg_cfm, idx[static_cast<size_t>(j)]).transpose();
      }
      const auto r = projs[k]->project_batch(pds, p0s);
      for (int64_t j = 0; j < m; ++j) proj[static_cast<size_t>(idx[static_cast<size_t>(j)])] = r[static_cast<size_t>(j)];
    }
    const auto t2 = Clock::now();
    const double total = std::chrono::duration<double>(t2 - t0).count();
    if (total < rep.pipeline_seconds) {
      rep.pipeline_seconds = total;
      rep.projection_seconds = std::chrono::duration<double>(t2 - t1).count();
    }
  }
  rep.repeats = opts.repeats;

  // metrics per load level
  std::map<double, OpfLevelResult> lv;
  auto add = [](OpfLevelResult& a, double g0, double g1, double g2, double g3, double v0, double v1) {
    a.gap_gnn += g0, a.gap_cfm += g1, a.gap_final += g2, a.gap_gnn_projected += g3;
    a.gap_final_max = std::max(a.gap_final_max, g2);
    a.viol_gnn_mean += v0, a.viol_cfm_mean += v1;
    a.viol_gnn_max = std::max(a.viol_gnn_max, v0), a.viol_cfm_max = std::max(a.viol_cfm_max, v1);
  };
  for (int64_t i = 0; i < n; ++i) {
    const double level = data.load_scale[i].item<double>();
    OpfLevelResult& l = lv[level];
    l.level = level;
    ++l.scenarios, ++rep.all.scenarios;
    const Projection& p = proj[static_cast<size_t>(i)];
    if (p.fallback) ++rep.fallbacks;
    const bool solved = data.status[i].item<int64_t>() == 0;
    if (!solved) {
      if (p.status != OpfStatus::kOptimal) ++l.refused, ++rep.all.refused;
      continue;
    }
    ++l.optimal, ++rep.all.optimal;
    if (p.status != OpfStatus::kOptimal) {
      ++rep.returned_infeasible;
      continue;
    }
    ++l.returned, ++rep.all.returned;
    const DcNetwork& net = *nets[outage[i].item<int64_t>()];
    const Eigen::VectorXd pdi = row(pd, i);
    const double c = data.cost[i].item<double>();
    auto gap = [&](const Eigen::VectorXd& pg) { return 100.0 * std::abs(net.cost(pg) - c) / std::abs(c); };
    const Eigen::VectorXd g0 = row(pred.pg_gnn, i), g1 = row(pred.pg_cfm, i);
    const double v0 = net.check(pdi, g0).worst_mw, v1 = net.check(pdi, g1).worst_mw;
    const FeasibilityReport fr = net.check(pdi, p.pg);
    if (fr.feasible(1e-6)) ++l.feasible, ++rep.all.feasible;
    l.worst_after = std::max(l.worst_after, fr.worst_mw);
    rep.all.worst_after = std::max(rep.all.worst_after, fr.worst_mw);
    // the GNN's dispatch projected directly (untimed): what the refinement adds after projection
    const Projection pg0 = projs[outage[i].item<int64_t>()]->project(pdi, g0);
    const double g3 = pg0.status == OpfStatus::kOptimal ? gap(pg0.pg) : NAN;
    for (OpfLevelResult* a : {&l, &rep.all}) add(*a, gap(g0), gap(g1), gap(p.pg), g3, v0, v1);
  }
  auto finish = [](OpfLevelResult& a) {
    const int64_t m = a.returned > 0 ? a.returned : 1;
    a.gap_gnn /= m, a.gap_cfm /= m, a.gap_final /= m, a.gap_gnn_projected /= m, a.viol_gnn_mean /= m,
        a.viol_cfm_mean /= m;
  };
  for (auto& [k, l] : lv) {
    finish(l);
    rep.levels.push_back(l);
  }
  finish(rep.all);

  // Ipopt one by one on the same scenarios, in this run
  // (best of the same number of passes as the pipeline)
  const int64_t m = opts.ipopt_sample == 0 ? n : std::min(n, opts.ipopt_sample);
  double ipopt_best = INFINITY;
  for (int64_t pass = 0; pass < opts.repeats && m > 0; ++pass) {
    const auto t2 = Clock::now();
    for (int64_t i = 0; i < m; ++i) (void)solve_dc_opf(*nets[outage[i].item<int64_t>()], row(pd, i));
    ipopt_best = std::min(ipopt_best, since(t2));
  }
  rep.ipopt_timed = m;
  rep.ipopt_seconds_per_instance = m > 0 ? ipopt_best / static_cast<double>(m) : 0.0;
  // the same projections by Ipopt, for comparison with the active-set method
  const auto t3 = Clock::now();
  for (int64_t i = 0; i < m; ++i)
    (void)project_dispatch(*nets[outage[i].item<int64_t>()], row(pd, i), row(pred.pg_cfm, i));
  rep.ipopt_projection_seconds_per_instance = m > 0 ? since(t3) / static_cast<double>(m) : 0.0;
  const double per = rep.pipeline_seconds / static_cast<double>(n);
  rep.speedup = per > 0 ? rep.ipopt_seconds_per_instance / per : 0.0;
  return rep;
}

}  // namespace nfkit
