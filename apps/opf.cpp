// nfkit opf solve: the DC optimal power flow of a MATPOWER case by Ipopt (physics/dc_opf.h):
// cost, dispatch, LMPs and the feasibility report, at one or more load levels.
#include <iomanip>
#include <sstream>

#include "cli.h"
#include "nfkit/core/error.h"
#include "nfkit/core/files.h"
#include "nfkit/core/runtime.h"
#include "nfkit/opf/dataset.h"
#include "nfkit/physics/dc_opf.h"

namespace nfkit::cli {
namespace {

std::vector<double> parse_levels(const std::string& s, const std::string& option = "--load-scale") {
  std::vector<double> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (end == item.c_str() || *end != '\0' || !(v >= 0.0) || !std::isfinite(v))
      usage_error(option, "'" + item + "' is not a load scale (a number >= 0, e.g. 1.15 for 115%)");
    out.push_back(v);
  }
  if (out.empty()) usage_error(option, "is empty");
  return out;
}

}  // namespace

Command opf_solve_command() {
  return {"opf", "solve", "DC optimal power flow of a MATPOWER case by Ipopt (cost, dispatch, LMPs)",
          [] {
            po::options_description o;
            o.add_options()
                ("case", po::value<std::string>(), "MATPOWER case file (version 2), e.g. data/matpower/case30.m")
                ("load-scale", po::value<std::string>()->default_value("1"),
                 "load level(s), comma-separated multiples of the file's Pd (e.g. 0.7,0.85,1,1.15,1.3)")
                ("dc-model", po::value<std::string>()->default_value("matpower"),
                 "DC convention: matpower (P = (dθ - shift)/(x tap)) or powermodels (PowerModels' DCP: "
                 "P = -imag(1/(r+jx)) dθ, taps and shifts ignored; PGLib's baselines)")
                ("outage", po::value<int>()->default_value(0),
                 "take branch ROW (1-based row of mpc.branch) out of service (0 = none)")
                ("tol", po::value<double>()->default_value(1e-10), "Ipopt tol")
                ("out", po::value<std::string>()->default_value(""),
                 "write the full solutions (dispatch, LMPs, flows, feasibility) to this JSON file");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            if (!vm.count("case")) usage_error("opf solve", "--case FILE is required");
            const std::string path = vm["case"].as<std::string>();
            const auto levels = parse_levels(vm["load-scale"].as<std::string>());
            const DcConvention conv = parse_dc_convention(vm["dc-model"].as<std::string>());
            const int outage = vm["outage"].as<int>();
            const std::string out = vm["out"].as<std::string>();
            DcOpfOptions so;
            so.tol = vm["tol"].as<double>();
            if (!(so.tol > 0.0)) usage_error("--tol", "must be > 0");
            if (!out.empty()) check_writable(out);

            PowerCase pc = read_matpower_case(path);
            if (outage < 0) usage_error("--outage", "must be a 1-based branch row or 0");
            if (outage > 0) {
              if (outage > static_cast<int>(pc.branches.size()))
                usage_error("--outage", std::to_string(outage) + " is not a branch row of " + path + " (" +
                                            std::to_string(pc.branches.size()) + " branches)");
              pc = with_branch_outage(pc, outage - 1);
            }
            const DcNetwork net(pc, conv);

            json rows = json::array(), full = json::array();
            bool all_optimal = true;
            std::string first_failure;
            ctx.out << pc.name << ": " << net.num_buses() << " buses, " << net.num_generators() << " generators, "
                    << net.num_branches() << " branches; DC model " << to_string(conv)
                    << (outage > 0 ? "; branch " + std::to_string(outage) + " out" : "") << "\n";
            ctx.out << "  load   status       cost ($/h)   LMP min..max ($/MWh)   worst violation (MW)   Ipopt s\n";
            for (double s : levels) {
              const Eigen::VectorXd pd = s * net.base_load();
              const DcOpfSolution sol = solve_dc_opf(net, pd, so);
              json r = {{"load_scale", s}, {"status", to_string(sol.status)}};
              std::ostringstream line;
              line << std::fixed << std::setprecision(2) << std::setw(6) << 100 * s << "%  " << std::left
                   << std::setw(11) << to_string(sol.status) << std::right;
              if (sol.status == OpfStatus::kOptimal) {
                r["cost"] = sol.cost;
                r["lmp_min"] = sol.lmp.minCoeff();
                r["lmp_max"] = sol.lmp.maxCoeff();
                r["worst_violation_mw"] = sol.feasibility.worst_mw;
                r["seconds"] = sol.seconds;
                line << std::setw(14) << std::setprecision(4) << sol.cost << "   " << std::setw(9) << std::setprecision(3)
                     << sol.lmp.minCoeff() << " .. " << std::setw(9) << sol.lmp.maxCoeff() << "   " << std::setw(20)
                     << std::scientific << std::setprecision(2) << sol.feasibility.worst_mw << std::fixed << "   "
                     << std::setprecision(3) << sol.seconds;
              } else {
                r["message"] = sol.message;
                line << "  " << sol.message;
                if (all_optimal) {
                  std::ostringstream ls;
                  ls << s;
                  first_failure = "load scale " + ls.str() + ": " + sol.message;
                  all_optimal = false;
                }
              }
              ctx.out << line.str() << "\n";
              rows.push_back(r);
              json f = sol.to_json(net);
              f["load_scale"] = s;
              full.push_back(f);
            }
            ctx.results = {{"case", pc.name}, {"file", path}, {"dc_model", to_string(conv)}, {"levels", rows}};
            if (outage > 0) ctx.results["outage_branch_row"] = outage;
            if (!all_optimal)
              runtime_error("opf solve", path + ": no optimal dispatch at " + first_failure);
            if (!out.empty()) {
              write_file_atomic(out, json{{"nfkit_format", "opf_solution"}, {"format_version", 1},
                                          {"case", pc.name}, {"file", path}, {"dc_model", to_string(conv)},
                                          {"solutions", full}}
                                         .dump(1) + "\n");
              ctx.out << "wrote " << out << "\n";
            }
          }};
}

Command opf_dataset_command() {
  return {"opf", "dataset", "DC-OPF scenarios (loads, N-1 outages) solved by Ipopt into an HDF5 dataset",
          [] {
            po::options_description o;
            o.add_options()
                ("case", po::value<std::string>(), "MATPOWER case file (version 2)")
                ("dc-model", po::value<std::string>()->default_value("matpower"), "DC convention: matpower or powermodels")
                ("load-levels", po::value<std::string>()->default_value("0.7,0.85,1,1.15,1.3"),
                 "comma-separated load levels (multiples of the file's Pd)")
                ("per-level", po::value<int64_t>()->default_value(200), "scenarios per load level")
                ("sigma", po::value<double>()->default_value(0.05), "relative per-bus load perturbation (Gaussian)")
                ("outages", po::bool_switch(), "one random N-1 branch outage (keeping the grid connected) per scenario")
                ("workers", po::value<int>()->default_value(0), "Ipopt worker processes (0 = --threads)")
                ("out", po::value<std::string>(), "HDF5 dataset to write (finished chunks are kept in OUT.partial; "
                                                   "a rerun with the same options resumes)")
                ("restart", po::bool_switch(), "discard OUT.partial");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            if (!vm.count("case")) usage_error("opf dataset", "--case FILE is required");
            if (!vm.count("out")) usage_error("opf dataset", "--out FILE is required");
            OpfDatasetOptions o;
            o.case_file = vm["case"].as<std::string>();
            o.convention = parse_dc_convention(vm["dc-model"].as<std::string>());
            o.load_levels = parse_levels(vm["load-levels"].as<std::string>(), "--load-levels");
            o.per_level = vm["per-level"].as<int64_t>();
            o.sigma = vm["sigma"].as<double>();
            o.outages = vm["outages"].as<bool>();
            const int w = vm["workers"].as<int>();
            if (w < 0) usage_error("--workers", "must be >= 0");
            o.workers = w > 0 ? w : (ctx.globals.threads > 0 ? ctx.globals.threads : hardware_threads());
            o.seed = ctx.globals.seed;
            o.restart = vm["restart"].as<bool>();
            o.quiet = ctx.globals.quiet;
            o.should_stop = [] { return stop_requested(); };
            const std::string out = vm["out"].as<std::string>();
            const auto rep = generate_opf_dataset(o, out);
            ctx.results = rep.to_json();
            ctx.results["out"] = out;
            if (!rep.complete)
              throw Interrupted("interrupted; finished scenarios are kept in " + out + ".partial; rerun the same command to resume");
            ctx.out << "wrote " << out << ": " << rep.scenarios << " scenarios (" << rep.optimal << " optimal, "
                    << rep.infeasible << " infeasible, " << rep.failed << " failed)"
                    << (rep.resumed_from > 0 ? ", resumed after " + std::to_string(rep.resumed_from) : std::string()) << "; "
                    << std::fixed << std::setprecision(1) << rep.seconds << " s with " << o.workers << " workers ("
                    << rep.solve_seconds << " s of Ipopt)\n";
          }};
}

}  // namespace nfkit::cli
