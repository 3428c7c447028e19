#include "nfkit/opf/dataset.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "nfkit/core/error.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/progress.h"
#include "nfkit/core/runtime.h"
#include "nfkit/opf/solver_pool.h"

namespace nfkit {

namespace {

const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
constexpr int64_t kFormatVersion = 1;

torch::Tensor index_tensor(const std::vector<int>& v, int offset) {
  auto t = torch::empty({static_cast<int64_t>(v.size())}, i64);
  for (size_t i = 0; i < v.size(); ++i) t[static_cast<int64_t>(i)] = v[i] + offset;
  return t;
}

void set_row(torch::Tensor& t, int64_t i, const Eigen::VectorXd& v) {
  std::copy(v.data(), v.data() + v.size(), t.data_ptr<double>() + i * t.size(1));
}

// The per-scenario datasets, in file order: one table for writing, resuming and reading.
const std::pair<const char*, torch::Tensor OpfDataset::*> kScenarioFields[] = {
    {"pd", &OpfDataset::pd},         {"pg", &OpfDataset::pg},         {"theta", &OpfDataset::theta},
    {"lmp", &OpfDataset::lmp},       {"flows", &OpfDataset::flows},   {"cost", &OpfDataset::cost},
    {"status", &OpfDataset::status}, {"load_scale", &OpfDataset::load_scale},
    {"outage", &OpfDataset::outage}, {"seconds", &OpfDataset::seconds}};

void write_dataset(const std::string& path, const OpfDatasetOptions& o, const PowerCase& pc, const DcNetwork& net,
                   const OpfDataset& a, int64_t rows, bool complete) {
  H5Writer w(path, "opf_dataset", kFormatVersion);
  w.set_attr("/", "case", pc.name);
  w.set_attr("/", "case_file", o.case_file);
  w.set_attr("/", "dc_model", to_string(o.convention));
  w.set_attr("/", "config", o.config().dump());
  w.set_attr("/", "complete", int64_t{complete ? 1 : 0});
  for (const auto& [name, field] : kScenarioFields) w.write(std::string("/") + name, (a.*field).narrow(0, 0, rows));
  w.write("/bus_ids", index_tensor(net.bus_ids(), 0));
  w.write("/gen_rows", index_tensor(net.generator_rows(), 1));
  w.write("/branch_rows", index_tensor(net.branch_rows(), 1));
  w.commit();
}

}  // namespace

nlohmann::json OpfDatasetOptions::config() const {
  return {{"case_file", case_file}, {"dc_model", to_string(convention)}, {"load_levels", load_levels},
          {"per_level", per_level}, {"sigma", sigma},                   {"outages", outages},
          {"seed", seed}};
}

nlohmann::json OpfDatasetReport::to_json() const {
  return {{"scenarios", scenarios}, {"optimal", optimal}, {"infeasible", infeasible}, {"failed", failed},
          {"resumed_from", resumed_from}, {"complete", complete}, {"seconds", seconds},
          {"solve_seconds", solve_seconds}};
}

OpfDatasetReport generate_opf_dataset(const OpfDatasetOptions& o, const std::string& out) {
  const char* fn = "opf dataset";
  if (o.load_levels.empty()) usage_error(fn, "--load-levels is empty");
  for (double s : o.load_levels)
    if (!(s >= 0.0) || !std::isfinite(s)) usage_error(fn, "--load-levels: " + std::to_string(s) + " is not a load scale >= 0");
  if (o.per_level < 1) usage_error(fn, "--per-level must be >= 1");
  if (!(o.sigma >= 0.0) || !std::isfinite(o.sigma)) usage_error(fn, "--sigma must be >= 0");
  if (o.workers < 1) usage_error(fn, "--workers must be >= 1");
  if (o.chunk < 1) usage_error(fn, "chunk must be >= 1");
  check_writable(out);

  const auto t0 = std::chrono::steady_clock::now();
  const PowerCase pc = read_matpower_case(o.case_file);
  const DcNetwork net(pc, o.convention);
  std::vector<int> outage_rows;
  if (o.outages) {
    outage_rows = connected_branch_outages(pc);
    if (outage_rows.empty()) runtime_error(fn, o.case_file + ": no branch outage keeps the grid connected");
  }
  const int64_t L = static_cast<int64_t>(o.load_levels.size());
  const int64_t N = L * o.per_level, nb = net.num_buses(), ng = net.num_generators(), nl = net.num_branches();
  const double nan = std::nan("");
  OpfDataset a;
  a.pd = torch::full({N, nb}, nan, f64);
  a.pg = torch::full({N, ng}, nan, f64);
  a.theta = torch::full({N, nb}, nan, f64);
  a.lmp = torch::full({N, nb}, nan, f64);
  a.flows = torch::full({N, nl}, nan, f64);
  a.cost = torch::full({N}, nan, f64);
  a.status = torch::full({N}, 2, i64);
  a.load_scale = torch::zeros({N}, f64);
  a.outage = torch::zeros({N}, i64);
  a.seconds = torch::zeros({N}, f64);

  OpfDatasetReport rep;
  rep.scenarios = N;
  const std::string partial = out + ".partial";
  int64_t done = 0;
  if (!o.restart && file_exists(partial)) {
    const OpfDataset d = OpfDataset::read(partial);
    if (d.config != o.config())
      usage_error(fn, partial + " holds a partial dataset made with other options; rerun with the same options "
                               "or add --restart to discard it");
    done = std::min(d.size(), N);
    for (const auto& [name, field] : kScenarioFields) (a.*field).narrow(0, 0, done).copy_((d.*field).narrow(0, 0, done));
    rep.resumed_from = done;
  }

  Progress progress("opf dataset", N, {.quiet = o.quiet});
  progress.set_start(done);
  while (done < N) {
    if (o.should_stop && o.should_stop()) break;
    const int64_t end = std::min(N, done + o.chunk);
    std::vector<OpfInstance> inst;
    for (int64_t i = done; i < end; ++i) {
      std::mt19937_64 rng(derive_seed(o.seed, 13, static_cast<uint64_t>(i)));
      std::normal_distribution<double> n01(0.0, 1.0);
      const double s = o.load_levels[static_cast<size_t>(i / o.per_level)];
      OpfInstance x;
      x.pd.resize(nb);
      for (int64_t j = 0; j < nb; ++j) x.pd[j] = s * net.base_load()[j] * std::max(0.0, 1.0 + o.sigma * n01(rng));
      if (o.outages)
        x.outage_row = outage_rows[std::uniform_int_distribution<size_t>(0, outage_rows.size() - 1)(rng)];
      a.load_scale[i] = s;
      a.outage[i] = x.outage_row + 1;
      set_row(a.pd, i, x.pd);
      inst.push_back(std::move(x));
    }
    SolverPoolOptions po;
    po.workers = o.workers;
    const int64_t base_done = done;
    po.on_progress = [&](int64_t k) { progress.update(base_done + k); };
    const auto res = solve_instances(pc, o.convention, inst, po);
    for (int64_t k = 0; k < end - done; ++k) {
      const int64_t i = done + k;
      const auto& r = res[static_cast<size_t>(k)];
      a.status[i] = static_cast<int64_t>(r.status);
      a.seconds[i] = r.seconds;
      a.cost[i] = r.cost;
      set_row(a.pg, i, r.pg);
      set_row(a.theta, i, r.theta);
      set_row(a.lmp, i, r.lmp);
      set_row(a.flows, i, r.flows);
    }
    done = end;
    if (done < N) write_dataset(partial, o, pc, net, a, done, false);
  }
  rep.complete = done == N;
  if (rep.complete) {
    progress.finish();
    write_dataset(out, o, pc, net, a, N, true);
    std::remove(partial.c_str());
  } else {
    write_dataset(partial, o, pc, net, a, done, false);
    progress.finish("stopped; " + std::to_string(done) + " scenarios kept in " + partial);
  }
  const auto st = a.status.narrow(0, 0, done);
  rep.optimal = (st == 0).sum().item<int64_t>();
  rep.infeasible = (st == 1).sum().item<int64_t>();
  rep.failed = (st == 2).sum().item<int64_t>();
  rep.solve_seconds = a.seconds.narrow(0, 0, done).sum().item<double>();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

OpfDataset OpfDataset::read(const std::string& path) {
  H5Reader r(path);
  r.expect_format("opf_dataset", kFormatVersion);
  OpfDataset d;
  d.case_name = r.attr_string("/", "case");
  d.case_file = r.attr_string("/", "case_file");
  d.dc_model = r.attr_string("/", "dc_model");
  try {
    d.config = nlohmann::json::parse(r.attr_string("/", "config"));
  } catch (const nlohmann::json::exception&) {
    runtime_error("OpfDataset::read", path + ": attribute config is not JSON");
  }
  const bool complete = r.attr_int("/", "complete") == 1;
  const bool partial_path = path.size() >= 8 && path.compare(path.size() - 8, 8, ".partial") == 0;
  if (!complete && !partial_path)
    runtime_error("OpfDataset::read", path + " is a partial dataset (generation was stopped); rerun nfkit opf dataset to finish it");
  for (const auto& [name, field] : kScenarioFields) d.*field = r.read(std::string("/") + name);
  d.bus_ids = r.read("/bus_ids");
  d.gen_rows = r.read("/gen_rows");
  d.branch_rows = r.read("/branch_rows");
  const int64_t n = d.cost.dim() == 1 ? d.cost.size(0) : -1;
  for (const auto& [name, field] : kScenarioFields)
    if ((d.*field).dim() < 1 || (d.*field).size(0) != n)
      runtime_error("OpfDataset::read", path + ": /" + name + " does not have one row per scenario (/cost has " +
                                            std::to_string(n) + ")");
  for (const torch::Tensor* t : {&d.pd, &d.pg, &d.theta, &d.lmp, &d.flows})
    if (t->dim() != 2) runtime_error("OpfDataset::read", path + ": the per-bus, per-generator and per-branch datasets must be 2-D");
  if (d.pd.size(1) != d.bus_ids.size(0) || d.pg.size(1) != d.gen_rows.size(0) || d.flows.size(1) != d.branch_rows.size(0))
    runtime_error("OpfDataset::read", path + ": column counts do not match /bus_ids, /gen_rows, /branch_rows");
  return d;
}

}  // namespace nfkit
