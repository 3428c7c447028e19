// Power grids: the MATPOWER reader against the file's known contents and its malformed
// variants, the DC model against conservation and the PTDF, the DC-OPF against an independent
// scipy solve (case30, five load levels), PGLib's published DC baselines, closed-form optima,
// finite-difference LMPs and the projection's variational inequality; `nfkit opf solve`.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "helpers.h"
#include "nfkit/core/files.h"
#include "nfkit/opf/dataset.h"
#include "nfkit/opf/pipeline.h"
#include "nfkit/physics/dc_opf.h"
#include "nfkit/physics/dc_projection.h"
#include <random>

using namespace nfkit;
using namespace nfkit::test;

namespace {

std::string case_path(const std::string& name) { return std::string(NFKIT_SOURCE_DIR) + "/data/matpower/" + name; }

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A small case in MATPOWER format: buses "id type pd", generators "bus pmax pmin", branches
// "from to x rate", gencost rows verbatim.
std::string small_case(const std::vector<std::string>& buses, const std::vector<std::string>& gens,
                       const std::vector<std::string>& branches, const std::vector<std::string>& costs) {
  std::ostringstream s;
  s << "function mpc = small\nmpc.version = '2';\nmpc.baseMVA = 100;\nmpc.bus = [\n";
  for (const auto& b : buses) {
    std::istringstream in(b);
    int id, type;
    double pd;
    in >> id >> type >> pd;
    s << id << " " << type << " " << pd << " 0 0 0 1 1 0 135 1 1.05 0.95;\n";
  }
  s << "];\nmpc.gen = [\n";
  for (const auto& g : gens) {
    std::istringstream in(g);
    int bus;
    double pmax, pmin;
    in >> bus >> pmax >> pmin;
    s << bus << " 0 0 100 -100 1 100 1 " << pmax << " " << pmin << " 0 0 0 0 0 0 0 0 0 0 0;\n";
  }
  s << "];\nmpc.branch = [\n";
  for (const auto& l : branches) {
    std::istringstream in(l);
    int f, t;
    double x, rate;
    in >> f >> t >> x >> rate;
    s << f << " " << t << " 0 " << x << " 0 " << rate << " " << rate << " " << rate << " 0 0 1 -360 360;\n";
  }
  s << "];\nmpc.gencost = [\n";
  for (const auto& c : costs) s << c << ";\n";
  s << "];\n";
  return s.str();
}

std::string read_fails(const std::string& text) {
  try {
    parse_matpower_case(text, "bad.m");
  } catch (const RuntimeError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("MATPOWER reader: case30 as the file says", "[opf]") {
  const PowerCase pc = read_matpower_case(case_path("case30.m"));
  CHECK(pc.name == "case30");
  CHECK(pc.base_mva == 100.0);
  REQUIRE(pc.buses.size() == 30);
  REQUIRE(pc.generators.size() == 6);
  REQUIRE(pc.branches.size() == 41);
  REQUIRE(pc.gencosts.size() == 6);
  CHECK(pc.total_demand() == Approx(189.2).epsilon(1e-12));
  CHECK(pc.buses[0].type == BusType::kReference);
  CHECK(pc.buses[1].pd == 21.7);
  CHECK(pc.buses[4].bs == 0.19);
  CHECK(pc.generators[0].pmax == 80.0);
  CHECK(pc.branches[0].from == 1);
  CHECK(pc.branches[0].to == 2);
  CHECK(pc.branches[0].x == 0.06);
  CHECK(pc.branches[0].rate_a == 130.0);
  // gen 1: 0.02 P^2 + 2 P (MATPOWER's case30)
  const GenCost& c = pc.gencosts[0];
  CHECK(c.model == GenCost::Model::kPolynomial);
  CHECK(c.order() == 2);
  CHECK(c.cost(10.0) == Approx(0.02 * 100 + 2 * 10));
  CHECK(c.marginal(10.0) == Approx(0.04 * 10 + 2));
}

TEST_CASE("MATPOWER reader: piecewise-linear and higher-order costs", "[opf]") {
  GenCost pwl;
  pwl.model = GenCost::Model::kPiecewiseLinear;
  pwl.coeffs = {0, 0, 50, 500, 100, 1500};
  CHECK(pwl.cost(25) == Approx(250));
  CHECK(pwl.cost(75) == Approx(1000));
  CHECK(pwl.marginal(75) == Approx(20));
  CHECK(pwl.cost(110) == Approx(1700));  // the last segment extrapolates
  GenCost cubic;
  cubic.coeffs = {2, -1, 3, 4};  // 2P^3 - P^2 + 3P + 4
  CHECK(cubic.cost(2) == Approx(16 - 4 + 6 + 4));
  CHECK(cubic.marginal(2) == Approx(24 - 4 + 3));
}

TEST_CASE("MATPOWER reader: malformed files name the line and field", "[opf]") {
  const std::string good = read_text(case_path("case30.m"));
  // truncated in the branch matrix
  const std::string truncated = good.substr(0, good.find("mpc.branch") + 200);
  CHECK_THAT(read_fails(truncated), Catch::Contains("mpc.branch: '[' without a closing ']'"));
  // a non-number: bus 4's Pd is on line 33
  std::string bad = good;
  bad.replace(bad.find("7.6\t1.6"), 3, "x.y");
  CHECK_THAT(read_fails(bad), Catch::Contains("bad.m:33: mpc.bus row 4, column PD: 'x.y' is not a number"));
  // a missing column
  bad = good;
  const std::string row4 = "7.6\t1.6\t0\t0\t1\t1\t0\t135\t1\t1.05\t0.95";
  bad.replace(bad.find(row4), row4.size(), "7.6\t1.6\t0\t0\t1\t1\t0\t135\t1\t1.05");
  CHECK_THAT(read_fails(bad), Catch::Contains("mpc.bus row 4: column VMIN is missing"));
  // an unknown cost model
  bad = good;
  const size_t gc = bad.find("mpc.gencost");
  bad.replace(bad.find("\t2\t0\t0\t3", gc), 2, "\t7");
  CHECK_THAT(read_fails(bad), Catch::Contains("mpc.gencost row 1, column MODEL: 7 is not a cost model"));
  // a generator at a bus that does not exist
  bad = good;
  bad.replace(bad.find("\t1\t23.54"), 2, "\t99");
  CHECK_THAT(read_fails(bad), Catch::Contains("mpc.gen row 1, column GEN_BUS: bus 99 is not in mpc.bus"));
  // missing matrices and the base
  CHECK_THAT(read_fails("mpc.baseMVA = 100;\n"), Catch::Contains("mpc.bus is missing"));
  CHECK_THAT(read_fails("mpc.version = '1';\n"), Catch::Contains("only version 2"));
  CHECK_THAT(read_fails(small_case({"1 1 0"}, {"1 10 0"}, {}, {"2 0 0 2 1 0"})), Catch::Contains("no reference bus"));
  CHECK_THAT(read_fails(small_case({"1 3 0", "2 1 5"}, {"1 10 0"}, {"1 2 0.1 0"}, {"2 0 0 3 1 0"})),
             Catch::Contains("NCOST 3 needs 3 cost values, found 2"));
  CHECK_THROWS_WITH(read_matpower_case("/nonexistent/case.m"), Catch::Contains("/nonexistent/case.m: cannot open"));
}

TEST_CASE("DC network: flows conserve power, PTDF agrees with the angles, islands are refused", "[opf]") {
  const PowerCase pc = read_matpower_case(case_path("case30.m"));
  for (auto conv : {DcConvention::kMatpower, DcConvention::kPowerModels}) {
    const DcNetwork net(pc, conv);
    const Eigen::VectorXd pd = 1.1 * net.base_load();
    Eigen::VectorXd pg = Eigen::VectorXd::Constant(6, (pd.sum() + net.shunt_load().sum()) / 6.0);
    const Eigen::VectorXd f = net.flows(pd, pg);
    // Kirchhoff's current law at every bus: injection = Σ outgoing flows
    Eigen::VectorXd out = Eigen::VectorXd::Zero(net.num_buses());
    for (int64_t k = 0; k < net.num_branches(); ++k) {
      out[net.branch_from()[k]] += f[k];
      out[net.branch_to()[k]] -= f[k];
    }
    CHECK((out - net.injections(pd, pg)).cwiseAbs().maxCoeff() < 1e-9);
    // PTDF times injections gives the same flows (no phase shifters in case30)
    CHECK((net.ptdf() * net.injections(pd, pg) - f).cwiseAbs().maxCoeff() < 1e-9);
    const auto rep = net.check(pd, pg);
    CHECK(rep.balance_mw < 1e-9);
  }
  // a radial bus (26 hangs on branch 25-26) makes its branch no N-1 candidate, and its outage islands the grid
  const auto outages = connected_branch_outages(pc);
  int radial = -1;
  for (size_t k = 0; k < pc.branches.size(); ++k)
    if (pc.branches[k].from == 25 && pc.branches[k].to == 26) radial = static_cast<int>(k);
  REQUIRE(radial >= 0);
  CHECK(std::find(outages.begin(), outages.end(), radial) == outages.end());
  CHECK(outages.size() == 38);  // 41 branches minus the three radial ones (9-11, 12-13, 25-26)
  CHECK_THROWS_WITH(DcNetwork(with_branch_outage(pc, radial), DcConvention::kMatpower),
                    Catch::Contains("the grid is islanded: bus 26"));
  CHECK_THROWS_AS(parse_dc_convention("ac"), UsageError);
}

TEST_CASE("DC-OPF: case30 at 70..130% load matches an independent scipy solve", "[opf]") {
  const std::string script = std::string(NFKIT_SOURCE_DIR) + "/tests/python/dcopf_scipy.py";
  const std::string out = temp_path("scipy_dcopf.json");
  const std::string cmd =
      python_interpreter() + " " + script + " " + case_path("case30.m") + " 0.7,0.85,1,1.15,1.3 > " + out + " 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  const auto ref = nlohmann::json::parse(read_text(out));
  const DcNetwork net(read_matpower_case(case_path("case30.m")), DcConvention::kMatpower);
  const std::vector<double> levels = {0.7, 0.85, 1.0, 1.15, 1.3};
  for (size_t i = 0; i < levels.size(); ++i) {
    const auto sol = solve_dc_opf(net, levels[i] * net.base_load());
    REQUIRE(sol.status == OpfStatus::kOptimal);
    INFO("load " << levels[i] << ": nfkit " << sol.cost << ", scipy " << ref[i].get<double>());
    CHECK(std::abs(sol.cost / ref[i].get<double>() - 1.0) < 1e-6);
    CHECK(sol.feasibility.feasible(1e-6));
  }
  // MATPOWER's rundcopf('case30'): 565.21 $/h
  CHECK(solve_dc_opf(net, net.base_load()).cost == Approx(565.206).epsilon(1e-5));
}

TEST_CASE("DC-OPF: PGLib v23.07 DC baselines (PowerModels DCP convention)", "[opf]") {
  // BASELINE.md of pglib-opf v23.07, "DC ($/h)", 5 significant digits
  const std::vector<std::pair<std::string, double>> cases = {
      {"pglib_opf_case14_ieee.m", 2.0515e+03},  {"pglib_opf_case30_ieee.m", 7.4728e+03},
      {"pglib_opf_case57_ieee.m", 3.4773e+04},  {"pglib_opf_case118_ieee.m", 9.3101e+04},
      {"pglib_opf_case300_ieee.m", 5.1785e+05}, {"pglib_opf_case1354_pegase.m", 1.2182e+06},
      {"pglib_opf_case2000_goc.m", 9.4304e+05}};
  for (const auto& [file, baseline] : cases) {
    const DcNetwork net(read_matpower_case(case_path("pglib/" + file)), DcConvention::kPowerModels);
    const auto sol = solve_dc_opf(net, net.base_load());
    INFO(file << ": " << sol.message << ", cost " << sol.cost << " vs " << baseline);
    REQUIRE(sol.status == OpfStatus::kOptimal);
    CHECK(std::abs(sol.cost / baseline - 1.0) <= 5e-5);  // half a unit of the 5th digit
    CHECK(sol.feasibility.feasible(1e-6));
  }
}

TEST_CASE("DC-OPF: closed-form optima, LMPs as derivatives of the optimal cost, infeasibility", "[opf]") {
  // cubic costs on one bus pair without limits: equal marginals 3 a_1 P_1^2 = 3 a_2 P_2^2
  {
    const auto pc = parse_matpower_case(small_case({"1 3 0", "2 1 90"}, {"1 200 0", "2 200 0"}, {"1 2 0.1 0"},
                                                   {"2 0 0 4 0.001 0 0 0", "2 0 0 4 0.004 0 0 0"}),
                                        "cubic.m");
    const DcNetwork net(pc, DcConvention::kMatpower);
    const auto sol = solve_dc_opf(net, net.base_load());
    REQUIRE(sol.status == OpfStatus::kOptimal);
    CHECK(sol.pg[0] == Approx(60).epsilon(1e-7));
    CHECK(sol.pg[1] == Approx(30).epsilon(1e-7));
    CHECK(sol.lmp[1] == Approx(3 * 0.001 * 3600).epsilon(1e-6));
  }
  // piecewise linear (marginal 10 up to 50 MW, then 20) against a linear 15 $/MWh unit
  {
    const auto pc = parse_matpower_case(small_case({"1 3 0", "2 1 80"}, {"1 100 0", "2 100 0"}, {"1 2 0.1 0"},
                                                   {"1 0 0 3 0 0 50 500 100 1500", "2 0 0 2 15 0"}),
                                        "pwl.m");
    const DcNetwork net(pc, DcConvention::kMatpower);
    const auto sol = solve_dc_opf(net, net.base_load());
    REQUIRE(sol.status == OpfStatus::kOptimal);
    CHECK(sol.pg[0] == Approx(50).epsilon(1e-6));
    CHECK(sol.pg[1] == Approx(30).epsilon(1e-6));
    CHECK(sol.cost == Approx(500 + 450).epsilon(1e-8));
    CHECK(sol.lmp[1] == Approx(15).epsilon(1e-6));
  }
  // a line limit that cannot be met: capacity suffices, the network does not
  {
    const auto pc = parse_matpower_case(small_case({"1 3 0", "2 1 50"}, {"1 100 0"}, {"1 2 0.1 30"}, {"2 0 0 2 10 0"}),
                                        "tight.m");
    const DcNetwork net(pc, DcConvention::kMatpower);
    const auto sol = solve_dc_opf(net, net.base_load());
    CHECK(sol.status == OpfStatus::kInfeasible);
    CHECK_THAT(sol.message, Catch::Contains("infeasibility"));
    const auto over = solve_dc_opf(net, 3.0 * net.base_load());
    CHECK(over.status == OpfStatus::kInfeasible);
    CHECK_THAT(over.message, Catch::Contains("exceeds the in-service generation capacity 100 MW"));
  }
  // LMPs of case30 at 130% (a binding line separates them) against central differences of the optimal cost
  const DcNetwork net(read_matpower_case(case_path("case30.m")), DcConvention::kMatpower);
  const Eigen::VectorXd pd = 1.3 * net.base_load();
  const auto sol = solve_dc_opf(net, pd);
  REQUIRE(sol.status == OpfStatus::kOptimal);
  REQUIRE(sol.lmp.maxCoeff() - sol.lmp.minCoeff() > 0.1);
  const double h = 1e-3;  // MW; the cost is piecewise quadratic in pd, so the error is O(h^2) away from kinks
  for (int64_t i : {0, 7, 14, 22, 29}) {
    Eigen::VectorXd up = pd, dn = pd;
    up[i] += h;
    dn[i] -= h;
    const double fd = (solve_dc_opf(net, up).cost - solve_dc_opf(net, dn).cost) / (2 * h);
    INFO("bus " << net.bus_ids()[i] << ": LMP " << sol.lmp[i] << ", finite difference " << fd);
    CHECK(sol.lmp[i] == Approx(fd).epsilon(1e-5));
  }
  CHECK_THROWS_AS(solve_dc_opf(net, Eigen::VectorXd::Zero(3)), UsageError);
  Eigen::VectorXd nan_pd = pd;
  nan_pd[4] = std::nan("");
  CHECK_THROWS_WITH(solve_dc_opf(net, nan_pd), Catch::Contains("pd[4] is nan"));
}

TEST_CASE("Feasibility projection: feasible, closest, and the identity on feasible points", "[opf]") {
  const DcNetwork net(read_matpower_case(case_path("case30.m")), DcConvention::kMatpower);
  const Eigen::VectorXd pd = 1.3 * net.base_load();
  const auto opt = solve_dc_opf(net, pd);
  REQUIRE(opt.status == OpfStatus::kOptimal);
  // the optimum is feasible: projecting it changes nothing
  const auto same = project_dispatch(net, pd, opt.pg);
  REQUIRE(same.status == OpfStatus::kOptimal);
  CHECK((same.pg - opt.pg).cwiseAbs().maxCoeff() < 1e-6);
  // an infeasible dispatch (every unit at 90% of Pmax: too much power, lines overloaded)
  const Eigen::VectorXd p0 = 0.9 * net.pmax();
  REQUIRE(!net.check(pd, p0).feasible());
  const auto proj = project_dispatch(net, pd, p0);
  REQUIRE(proj.status == OpfStatus::kOptimal);
  CHECK(proj.feasibility.feasible(1e-6));
  // variational inequality of a projection onto a convex set: (p0 - P)·(y - P) <= 0 for any
  // feasible y; the OPF optimum and convex combinations of it with P are feasible points
  for (double a : {0.0, 0.5, 1.0}) {
    const Eigen::VectorXd y = a * opt.pg + (1 - a) * same.pg;
    CHECK((p0 - proj.pg).dot(y - proj.pg) <= 1e-6);
  }
  CHECK((p0 - proj.pg).norm() <= (p0 - opt.pg).norm() + 1e-9);
}

TEST_CASE("Active-set projection: the same point as Ipopt's projection, in batches, and infeasibility", "[opf]") {
  struct Setup {
    std::string file;
    DcConvention conv;
    double scale;
  };
  // case30 (line limits bind at 130%), PGLib case118 (angle limits in the PowerModels convention)
  // and case300 (phase shifters and taps in MATPOWER's convention)
  for (const Setup& su : {Setup{"case30.m", DcConvention::kMatpower, 1.3}, Setup{"pglib/pglib_opf_case118_ieee.m", DcConvention::kPowerModels, 1.0},
                          Setup{"pglib/pglib_opf_case300_ieee.m", DcConvention::kMatpower, 1.0}}) {
    const DcNetwork net(read_matpower_case(case_path(su.file)), su.conv);
    const DcProjector proj(net, ProjectionOptions{.ipopt_fallback = false});
    const Eigen::VectorXd pd = su.scale * net.base_load();
    const auto opt = solve_dc_opf(net, pd);
    REQUIRE(opt.status == OpfStatus::kOptimal);
    // the sensitivities are the model's: flows(pd, pg) = f0(pd) + H pg
    const Eigen::VectorXd f = net.flows(pd, opt.pg);
    CHECK((proj.base_flows(pd) + proj.flow_sensitivity() * opt.pg - f).cwiseAbs().maxCoeff() < 1e-8);
    std::mt19937_64 rng(7);
    std::normal_distribution<double> gauss;
    const int64_t n = 6;
    Eigen::MatrixXd pds(n, net.num_buses()), p0s(n, net.num_generators());
    for (int64_t i = 0; i < n; ++i) {
      pds.row(i) = pd.transpose();
      // the optimum perturbed by 0.1%, 3% and 30% of each unit's range
      const double rel = i < 2 ? 1e-3 : (i < 4 ? 0.03 : 0.3);
      for (int64_t g = 0; g < net.num_generators(); ++g)
        p0s(i, g) = opt.pg[g] + rel * (net.pmax()[g] - net.pmin()[g] + 1.0) * gauss(rng);
    }
    const auto batch = proj.project_batch(pds, p0s);
    for (int64_t i = 0; i < n; ++i) {
      const auto& r = batch[static_cast<size_t>(i)];
      INFO(su.file << " instance " << i << ": " << r.message);
      REQUIRE(r.status == OpfStatus::kOptimal);
      CHECK(!r.fallback);
      CHECK(r.feasibility.feasible(1e-6));
      const auto ref = project_dispatch(net, pd, p0s.row(i).transpose());
      REQUIRE(ref.status == OpfStatus::kOptimal);
      INFO("distance " << r.distance << " vs Ipopt " << (ref.pg - p0s.row(i).transpose()).norm());
      CHECK((r.pg - ref.pg).cwiseAbs().maxCoeff() < 1e-5);
      // the variational inequality against the OPF optimum, a feasible point
      CHECK((p0s.row(i).transpose() - r.pg).dot(opt.pg - r.pg) <= 1e-6 * (1.0 + r.distance));
      // one by one gives the same bits
      const auto one = proj.project(pd, p0s.row(i).transpose());
      CHECK((one.pg - r.pg).cwiseAbs().maxCoeff() == 0.0);
    }
  }
  // case30 at 140% of its loads cannot be served (Ipopt says so too): no dispatch is returned as optimal
  const DcNetwork net(read_matpower_case(case_path("case30.m")), DcConvention::kMatpower);
  const DcProjector proj(net, ProjectionOptions{.ipopt_fallback = false});  // the method's own verdict
  const Eigen::VectorXd pd = 1.4 * net.base_load();
  REQUIRE(solve_dc_opf(net, pd).status == OpfStatus::kInfeasible);
  const auto r = proj.project(pd, net.pmax() * 0.5);
  INFO(r.message << " after " << r.iterations << " steps");
  CHECK(r.status == OpfStatus::kInfeasible);
  CHECK(r.iterations < 100);
  CHECK_THROWS_AS(proj.project(pd, Eigen::VectorXd::Zero(2)), UsageError);
}

TEST_CASE("nfkit opf solve: table, JSON and bad input", "[opf][cli]") {
  const std::string out = temp_path("opf30.json");
  auto r = run_nfkit({"opf", "solve", "--case", case_path("case30.m"), "--load-scale", "0.7,1.3", "--out", out, "--json"});
  REQUIRE(r.code == 0);
  const auto last = nlohmann::json::parse(r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1));
  CHECK(last["levels"].size() == 2);
  CHECK(last["levels"][0]["cost"].get<double>() == Approx(360.104).epsilon(1e-5));
  const auto file = nlohmann::json::parse(read_text(out));
  CHECK(file["nfkit_format"] == "opf_solution");
  CHECK(file["solutions"][1]["generators"].size() == 6);
  CHECK(file["solutions"][1]["buses"].size() == 30);

  r = run_nfkit({"opf", "solve", "--case", case_path("pglib/pglib_opf_case14_ieee.m"), "--dc-model", "powermodels"});
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("2051.5"));

  auto fails = [](const std::vector<std::string>& args, int code, const std::string& needle) {
    const auto res = run_nfkit(args);
    INFO(res.err);
    CHECK(res.code == code);
    CHECK_THAT(res.err, Catch::Contains(needle));
    CHECK(std::count(res.err.begin(), res.err.end(), '\n') == 1);
  };
  fails({"opf", "solve"}, 2, "--case FILE is required");
  fails({"opf", "solve", "--case", case_path("case30.m"), "--dc-model", "ac"}, 2, "--dc-model is 'ac'");
  fails({"opf", "solve", "--case", case_path("case30.m"), "--load-scale", "1,abc"}, 2, "--load-scale");
  fails({"opf", "solve", "--case", case_path("case30.m"), "--outage", "99"}, 2, "--outage");
  fails({"opf", "solve", "--case", "/nonexistent.m"}, 1, "cannot open");
  const std::string bad = temp_path("bad_case.m");
  {
    std::string text = read_text(case_path("case30.m"));
    std::ofstream(bad) << text.substr(0, text.find("mpc.gen =") + 100);
  }
  fails({"opf", "solve", "--case", bad}, 1, "mpc.gen: '[' without a closing ']'");
  const std::string none = temp_path("infeasible.json");
  fails({"opf", "solve", "--case", case_path("case30.m"), "--load-scale", "1,2", "--out", none}, 1,
        "no optimal dispatch at load scale 2");
  CHECK(!file_exists(none));
  fails({"opf", "solve", "--case", case_path("case30.m"), "--outage", "34"}, 1, "islanded");  // row 34: 25-26
}

TEST_CASE("opf dataset: worker processes, resumption and outages give the same scenarios", "[opf]") {
  OpfDatasetOptions o;
  o.case_file = case_path("case30.m");
  o.load_levels = {0.7, 1.3};
  o.per_level = 4;
  o.seed = 5;
  o.quiet = true;
  const std::string one = temp_path("ds1.h5"), two = temp_path("ds2.h5"), res = temp_path("ds3.h5");
  auto rep = generate_opf_dataset(o, one);
  CHECK(rep.complete);
  CHECK(rep.optimal == 8);
  o.workers = 2;
  generate_opf_dataset(o, two);
  const auto a = OpfDataset::read(one), b = OpfDataset::read(two);
  REQUIRE(a.size() == 8);
  CHECK(torch::equal(a.pd, b.pd));
  CHECK(torch::equal(a.pg, b.pg));
  CHECK(torch::equal(a.lmp, b.lmp));
  CHECK(torch::equal(a.cost, b.cost));
  // stored solutions are the solver's for the stored loads; levels as asked
  const DcNetwork net(read_matpower_case(o.case_file), DcConvention::kMatpower);
  for (int64_t i : {0, 7}) {
    Eigen::VectorXd pd(30);
    for (int j = 0; j < 30; ++j) pd[j] = a.pd[i][j].item<double>();
    CHECK(solve_dc_opf(net, pd).cost == Approx(a.cost[i].item<double>()).epsilon(1e-12));
    CHECK(a.load_scale[i].item<double>() == (i < 4 ? 0.7 : 1.3));
    // loads scatter around the level (sigma 0.05): the total within 10% of the scaled profile
    CHECK(pd.sum() / (a.load_scale[i].item<double>() * net.base_load().sum()) == Approx(1.0).margin(0.1));
  }
  // stop after the first chunk, then resume: the same file as in one go
  o.workers = 1;
  o.chunk = 3;
  int asked = 0;
  o.should_stop = [&asked] { return asked++ > 0; };
  rep = generate_opf_dataset(o, res);
  CHECK(!rep.complete);
  CHECK(!file_exists(res));
  CHECK(file_exists(res + ".partial"));
  CHECK(OpfDataset::read(res + ".partial").size() == 3);
  o.should_stop = nullptr;
  rep = generate_opf_dataset(o, res);
  CHECK(rep.complete);
  CHECK(rep.resumed_from == 3);
  CHECK(!file_exists(res + ".partial"));
  const auto c = OpfDataset::read(res);
  CHECK(torch::equal(a.pd, c.pd));
  CHECK(torch::equal(a.cost, c.cost));
  // a partial file from other options is refused
  asked = 0;
  o.should_stop = [&asked] { return asked++ > 0; };
  generate_opf_dataset(o, res);  // leaves res.partial with 3 scenarios
  o.should_stop = nullptr;
  o.sigma = 0.1;
  CHECK_THROWS_WITH(generate_opf_dataset(o, res), Catch::Contains("made with other options"));
  o.restart = true;
  CHECK(generate_opf_dataset(o, res).complete);

  // N-1 outages: connected ones only, the outaged branch carries nothing
  OpfDatasetOptions q;
  q.case_file = case_path("case30.m");
  q.load_levels = {1.0};
  q.per_level = 6;
  q.outages = true;
  q.quiet = true;
  q.workers = 2;
  const std::string n1 = temp_path("n1.h5");
  generate_opf_dataset(q, n1);
  const auto d = OpfDataset::read(n1);
  const auto allowed = connected_branch_outages(read_matpower_case(q.case_file));
  for (int64_t i = 0; i < d.size(); ++i) {
    const int row = static_cast<int>(d.outage[i].item<int64_t>()) - 1;
    REQUIRE(row >= 0);
    CHECK(std::find(allowed.begin(), allowed.end(), row) != allowed.end());
    if (d.status[i].item<int64_t>() == 0) CHECK(d.flows[i][row].item<double>() == 0.0);
  }
}

TEST_CASE("nfkit opf dataset: command line", "[opf][cli]") {
  const std::string out = temp_path("cli_ds.h5");
  auto r = run_nfkit({"opf", "dataset", "--case", case_path("case30.m"), "--load-levels", "1", "--per-level", "3",
                      "--out", out, "--json", "--quiet"});
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1));
  CHECK(j["optimal"] == 3);
  CHECK(OpfDataset::read(out).size() == 3);
  r = run_nfkit({"opf", "dataset", "--case", case_path("case30.m")});
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::Contains("--out FILE is required"));
  r = run_nfkit({"opf", "dataset", "--case", case_path("case30.m"), "--per-level", "0", "--out", out});
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::Contains("--per-level"));
}

TEST_CASE("resume: opf dataset killed with SIGKILL resumes from OUT.partial to the same file", "[opf][cli]") {
  // Killed without warning (workers included: they die at their next write to the closed
  // pipe) after its second partial save, then the same command: it resumes after the saved
  // scenarios and writes the same scenarios as an uninterrupted run.
  auto args = [](const std::string& out) {
    return std::vector<std::string>{"opf", "dataset", "--case", case_path("case30.m"), "--per-level", "40", "--chunk",
                                    "10", "--workers", "2", "--seed", "4", "--out", out, "--quiet"};
  };
  auto with_binary = [](std::vector<std::string> a) {
    a.insert(a.begin(), NFKIT_BINARY);
    return a;
  };
  const std::string killed = temp_path("ds-killed.h5"), whole = temp_path("ds-whole.h5");
  REQUIRE(run_and_sigkill(with_binary(args(killed)), killed + ".partial", 2));
  CHECK_FALSE(file_exists(killed));
  REQUIRE(file_exists(killed + ".partial"));
  const int64_t saved = OpfDataset::read(killed + ".partial").size();
  CHECK(saved >= 20);
  CHECK(saved < 200);
  const auto res = run_nfkit(args(killed));
  REQUIRE(res.code == 0);
  CHECK_THAT(res.out, Catch::Contains("resumed after " + std::to_string(saved)));
  CHECK_FALSE(file_exists(killed + ".partial"));
  REQUIRE(run_nfkit(args(whole)).code == 0);
  const auto a = OpfDataset::read(killed), b = OpfDataset::read(whole);
  REQUIRE(a.size() == 200);
  // bit for bit; infeasible scenarios (at 130%) hold NaN solutions in both
  auto same = [](const torch::Tensor& x, const torch::Tensor& y) {
    return torch::allclose(x, y, /*rtol=*/0.0, /*atol=*/0.0, /*equal_nan=*/true);
  };
  CHECK(torch::equal(a.pd, b.pd));
  CHECK(torch::equal(a.status, b.status));
  CHECK((a.status != 0).any().item<bool>());
  CHECK(same(a.pg, b.pg));
  CHECK(same(a.lmp, b.lmp));
  CHECK(same(a.cost, b.cost));
  // --chunk must be positive
  const auto bad = run_nfkit({"opf", "dataset", "--case", case_path("case30.m"), "--chunk", "0", "--out", whole});
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("--chunk"));
}

TEST_CASE("OPF pipeline: loss physics, model round trip, a short training and the feasibility guarantee", "[opf]") {
  torch::set_num_threads(2);
  const PowerCase pc = read_matpower_case(case_path("case30.m"));
  const DcNetwork net(pc, DcConvention::kMatpower);
  // the losses' physics: flows and marginal costs as the network computes them, outages included
  {
    const int row = connected_branch_outages(pc)[5];
    int64_t k = -1;
    for (int64_t b = 0; b < net.num_branches(); ++b)
      if (net.branch_rows()[b] == row) k = b;
    REQUIRE(k >= 0);
    const OpfLossPhysics phys(pc, DcConvention::kMatpower, net, torch::tensor({int64_t(-1), k}));
    const DcNetwork out(with_branch_outage(pc, row), DcConvention::kMatpower);
    const Eigen::VectorXd pd = 1.1 * net.base_load();
    const Eigen::VectorXd pg = 0.5 * (net.pmin() + net.pmax());
    auto t = [](const Eigen::VectorXd& v) { return torch::from_blob(const_cast<double*>(v.data()), {1, v.size()}, torch::kFloat64).to(torch::kFloat32); };
    const torch::Tensor f = phys.flows(torch::cat({t(pd), t(pd)}), torch::cat({t(pg), t(pg)}), phys.slots(torch::tensor({int64_t(-1), k})));
    const Eigen::VectorXd f0 = net.flows(pd, pg), f1 = out.flows(pd, pg);
    for (int64_t b = 0, j = 0; b < net.num_branches(); ++b) {
      CHECK(f[0][b].item<double>() == Approx(f0[b]).margin(1e-3));
      if (b == k) {
        CHECK(f[1][b].item<double>() == 0.0);
      } else {
        CHECK(f[1][b].item<double>() == Approx(f1[j++]).margin(1e-3));
      }
    }
    const torch::Tensor mc = phys.marginal(t(pg));
    for (int64_t g = 0; g < net.num_generators(); ++g)
      CHECK(mc[0][g].item<double>() == Approx(net.costs()[g].marginal(pg[g])).epsilon(1e-6));
  }

  // small datasets: three load levels for training, held-out scenarios (another seed) plus an
  // infeasible level for evaluation
  OpfDatasetOptions o;
  o.case_file = case_path("case30.m");
  o.load_levels = {0.85, 1.0, 1.15};
  o.per_level = 60;
  o.seed = 11;
  o.quiet = true;
  o.workers = 2;
  const std::string train_file = temp_path("pipe_train.h5"), test_file = temp_path("pipe_test.h5");
  generate_opf_dataset(o, train_file);
  o.per_level = 10;
  o.load_levels = {0.85, 1.0, 1.15, 1.6};
  o.seed = 12;
  generate_opf_dataset(o, test_file);
  const auto train = OpfDataset::read(train_file), test = OpfDataset::read(test_file);
  // the physics terms vanish at Ipopt's optima with their LMPs
  {
    const torch::Tensor ok = (train.status == 0).nonzero().squeeze(1);
    const OpfLossPhysics phys(pc, DcConvention::kMatpower, net, torch::tensor({int64_t(-1)}));
    const OpfModel m(net, OpfModelOptions());
    const torch::Tensor pd = train.pd.index_select(0, ok).to(torch::kFloat32), pg = train.pg.index_select(0, ok).to(torch::kFloat32);
    const torch::Tensor u = m.to_unit(train.pg.index_select(0, ok)).clamp(0.0, 1.0).to(torch::kFloat32);
    const auto terms = phys.terms(pd, pg, u, train.lmp.index_select(0, ok).to(torch::kFloat32),
                                  torch::zeros({ok.numel()}, torch::kInt64), m.graph().p_scale, m.graph().c_scale);
    CHECK(terms.balance.item<double>() < 1e-10);
    CHECK(terms.line.item<double>() < 1e-10);
    CHECK(terms.kkt.item<double>() < 1e-6);
    // the balance term is the mismatch over s_b = |P_max - P_min| (MW), squared
    const double sb = (net.pmax() - net.pmin()).norm();
    CHECK(phys.balance_scale == Approx(sb));
    {
      torch::Tensor pg2 = pg.clone();
      pg2.select(1, 0).add_(10.0);
      CHECK(phys.terms(pd, pg2, u, train.lmp.index_select(0, ok).to(torch::kFloat32),
                       torch::zeros({ok.numel()}, torch::kInt64), m.graph().p_scale, m.graph().c_scale)
                .balance.item<double>() == Approx(std::pow(10.0 / sb, 2)).epsilon(1e-3));
    }
    // and do not at a wrong dispatch or wrong prices
    CHECK(phys.terms(pd, 1.1 * pg, u, train.lmp.index_select(0, ok).to(torch::kFloat32), torch::zeros({ok.numel()}, torch::kInt64),
                     m.graph().p_scale, m.graph().c_scale)
              .balance.item<double>() > 1e-4);
    CHECK(phys.terms(pd, pg, u, 0.5 * train.lmp.index_select(0, ok).to(torch::kFloat32), torch::zeros({ok.numel()}, torch::kInt64),
                     m.graph().p_scale, m.graph().c_scale)
              .kkt.item<double>() > 1e-3);
  }

  OpfTrainOptions to;
  to.model.hidden(16).layers(3).embed(4).velocity_hidden(32).velocity_layers(2);
  to.epochs = 150;
  to.cfm_epochs = 20;
  to.batch_size = 32;
  to.quiet = true;
  to.seed = 3;
  const OpfTrained tr = train_opf_model(train, pc, DcConvention::kMatpower, to);
  // the GNN has learned something: better than predicting the training mean of u
  {
    OpfModel m(net, to.model);
    const torch::Tensor ok = (train.status == 0).nonzero().squeeze(1);
    const torch::Tensor u = m.to_unit(train.pg.index_select(0, ok));
    const double mean_rmse = std::sqrt((u - u.mean(0, true)).pow(2).mean().item<double>());
    INFO("GNN validation RMSE " << tr.report.gnn_val_rmse << " vs the mean's " << mean_rmse);
    CHECK(tr.report.gnn_val_rmse < 0.5 * mean_rmse);
    CHECK(tr.report.cfm_val_rmse <= tr.report.gnn_val_rmse);  // the refinement starts from the GNN and keeps its best epoch
  }
  // the same seed gives the same model (two epochs each)
  {
    OpfTrainOptions t2 = to;
    t2.epochs = 2;
    t2.cfm_epochs = 1;
    const auto a = train_opf_model(train, pc, DcConvention::kMatpower, t2), b = train_opf_model(train, pc, DcConvention::kMatpower, t2);
    const auto pa = a.model.gnn()->parameters(), pb = b.model.gnn()->parameters();
    for (size_t i = 0; i < pa.size(); ++i) CHECK(torch::equal(pa[i], pb[i]));
    CHECK(torch::equal(a.model.velocity()->parameters()[0], b.model.velocity()->parameters()[0]));
    // stopped in stage 2, resumed from the stage-1 checkpoint: the same GNN, the same refinement
    t2.gnn_checkpoint = temp_path("pipe.gnn.partial");
    int calls = 0;
    t2.should_stop = [&calls, &t2] { return ++calls > t2.epochs; };  // after the first refinement epoch
    t2.cfm_epochs = 2;
    const auto stopped = train_opf_model(train, pc, DcConvention::kMatpower, t2);
    CHECK(stopped.report.interrupted);
    REQUIRE(file_exists(t2.gnn_checkpoint));
    t2.should_stop = nullptr;
    const auto resumed = train_opf_model(train, pc, DcConvention::kMatpower, t2);
    CHECK(!resumed.report.interrupted);
    CHECK(resumed.report.gnn_val_rmse == a.report.gnn_val_rmse);
    const auto pr = resumed.model.gnn()->parameters();
    for (size_t i = 0; i < pa.size(); ++i) CHECK(torch::equal(pa[i], pr[i]));
    t2.gnn_checkpoint.clear();
    const auto whole = train_opf_model(train, pc, DcConvention::kMatpower, t2);
    CHECK(torch::equal(whole.model.velocity()->parameters()[0], resumed.model.velocity()->parameters()[0]));
  }
  // save / load: the same predictions bit for bit; a model of another grid is refused
  const std::string model_file = temp_path("pipe_model.h5");
  tr.model.save(model_file);
  const OpfModel back = OpfModel::load(model_file, net);
  const OdeOptions ode = OdeOptions().method(OdeMethod::kEuler).steps(4);
  const torch::Tensor outage = torch::full({test.size()}, -1, torch::kInt64);
  const auto p1 = tr.model.predict(test.pd, outage, ode), p2 = back.predict(test.pd, outage, ode);
  CHECK(torch::equal(p1.pg_cfm, p2.pg_cfm));
  CHECK(torch::equal(p1.pg_gnn, p2.pg_gnn));
  const DcNetwork other(read_matpower_case(case_path("pglib/pglib_opf_case14_ieee.m")), DcConvention::kMatpower);
  CHECK_THROWS_WITH(OpfModel::load(model_file, other), Catch::Contains("was trained on case30 (30 buses, 6 generators"));
  // an outage changes what the GNN sees
  const torch::Tensor out1 = torch::full({test.size()}, int64_t(3), torch::kInt64);
  CHECK(!torch::equal(tr.model.predict(test.pd, out1, ode).pg_gnn, p1.pg_gnn));

  // evaluation: every returned dispatch is feasible, infeasible loads are refused, gaps are small
  OpfEvalOptions eo;
  eo.ipopt_sample = 5;
  const auto rep = evaluate_opf_model(tr.model, test, pc, DcConvention::kMatpower, eo);
  REQUIRE(rep.levels.size() == 4);
  int64_t infeasible = (test.status != 0).sum().item<int64_t>();
  CHECK(infeasible == 10);  // 160% of case30.s loads exceeds what its lines can carry
  CHECK(rep.all.refused == infeasible);
  CHECK(rep.returned_infeasible == 0);
  CHECK(rep.all.returned == rep.all.optimal);
  CHECK(rep.all.feasible == rep.all.returned);
  CHECK(rep.all.worst_after <= 1e-6);
  INFO(rep.table());
  CHECK(rep.all.gap_final < 1.0);                 // % of Ipopt's cost, after 150 epochs of a tiny model
  CHECK(rep.all.gap_final <= rep.all.gap_gnn + 1e-9);  // the projection never hurts here: it restores balance
  CHECK(rep.ipopt_timed == 5);
  CHECK(rep.speedup > 0.0);
  // a dataset of another grid is refused
  CHECK_THROWS_WITH(evaluate_opf_model(tr.model, test, read_matpower_case(case_path("pglib/pglib_opf_case14_ieee.m")),
                                       DcConvention::kMatpower, eo),
                    Catch::Contains("does not come from"));
}

TEST_CASE("nfkit opf train / eval: command line", "[opf][cli]") {
  const std::string data = temp_path("cli_pipe.h5"), model = temp_path("cli_model.h5"), rep = temp_path("cli_eval.json");
  REQUIRE(run_nfkit({"opf", "dataset", "--case", case_path("case30.m"), "--load-levels", "0.9,1.1", "--per-level", "12", "--out",
                     data, "--quiet"})
              .code == 0);
  auto r = run_nfkit({"opf", "train", "--data", data, "--out", model, "--epochs", "3", "--cfm-epochs", "2", "--hidden", "8",
                      "--layers", "2", "--embed", "2", "--velocity-hidden", "8", "--quiet"});
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("wrote " + model));
  const std::string fig = temp_path("opf-gap");
  r = run_nfkit({"opf", "eval", "--model", model, "--data", data, "--ipopt-sample", "2", "--out", rep, "--quiet",
                 "--figure", fig, "--figure-format", "pdf", "--repeats", "2"});
  REQUIRE(r.code == 0);
  CHECK(read_text(fig + ".pdf").compare(0, 5, "%PDF-") == 0);
  CHECK_THAT(r.out, Catch::Contains("gap GNN%"));
  CHECK_THAT(r.out, Catch::Contains("100.0%"));  // feasible after projection
  CHECK_THAT(r.out, Catch::Contains("(2 timed): "));  // the speed line whole (a 256-byte buffer cut it)
  CHECK(r.out.find("x (best of 2 passes each)\n", r.out.find("(2 timed): ")) != std::string::npos);
  const auto j = nlohmann::json::parse(read_text(rep));
  CHECK(j["nfkit_format"] == "opf_eval");
  CHECK(j["repeats"] == 2);
  CHECK(j["all"]["feasible"] == j["all"]["optimal"]);
  // bad input: one line, exit 2 (usage) or 1 (runtime), nothing written
  r = run_nfkit({"opf", "train", "--data", data});
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::Contains("--out FILE is required"));
  const std::string none = temp_path("never.h5");
  r = run_nfkit({"opf", "train", "--data", data, "--out", none, "--epochs", "0"});
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::Contains("--epochs"));
  CHECK(!file_exists(none));
  r = run_nfkit({"opf", "eval", "--model", model, "--data", data, "--repeats", "0"});
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::Contains("--repeats"));
  r = run_nfkit({"opf", "eval", "--model", model, "--data", data, "--solver", "dopri5"});
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::Contains("--solver"));
  r = run_nfkit({"opf", "eval", "--model", data, "--data", data});
  CHECK(r.code == 1);
  CHECK_THAT(r.err, Catch::Contains(data));
  r = run_nfkit({"opf", "eval", "--model", model, "--data", data, "--case", case_path("pglib/pglib_opf_case14_ieee.m")});
  CHECK(r.code == 1);
  CHECK_THAT(r.err, Catch::Contains("was trained on case30 (30 buses, 6 generators"));
}
