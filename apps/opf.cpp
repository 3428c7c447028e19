// nfkit opf solve: the DC optimal power flow of a MATPOWER case by Ipopt (physics/dc_opf.h):
// cost, dispatch, LMPs and the feasibility report, at one or more load levels.
// nfkit opf dataset / train / eval: scenario datasets, the learned pipeline (GNN, then the
// flow-matching refinement) and its evaluation against Ipopt (opf/pipeline.h).
#include <cstdio>
#include <iomanip>
#include <sstream>

#include "cli.h"
#include "figures.h"
#include "nfkit/core/error.h"
#include "nfkit/core/files.h"
#include "nfkit/core/runtime.h"
#include "nfkit/opf/dataset.h"
#include "nfkit/opf/pipeline.h"
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

// The case a dataset was made from, unless --case names one.
std::string case_of(const po::variables_map& vm, const OpfDataset& data, const std::string& data_path) {
  if (vm.count("case")) return find_data_file(vm["case"].as<std::string>());
  if (data.case_file.empty()) usage_error("--case", data_path + " does not name its case file; give --case FILE");
  return data.case_file;
}

OdeOptions refinement_ode(const po::variables_map& vm) {
  OdeOptions o;
  o.method(parse_ode_method(vm["solver"].as<std::string>())).steps(vm["steps"].as<int64_t>());
  if (o.method() == OdeMethod::kDopri5) usage_error("--solver", "the refinement uses a fixed grid: euler, midpoint, heun or rk4");
  o.validate();
  return o;
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
            const std::string path = find_data_file(vm["case"].as<std::string>());
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
                ("sigma", po::value<double>()->default_value(0.05, "0.05"), "relative per-bus load perturbation (Gaussian)")
                ("outages", po::bool_switch(), "one random N-1 branch outage (keeping the grid connected) per scenario")
                ("workers", po::value<int>()->default_value(0), "Ipopt worker processes (0 = --threads)")
                ("chunk", po::value<int64_t>()->default_value(512), "scenarios between saves of OUT.partial")
                ("out", po::value<std::string>(), "HDF5 dataset to write (finished chunks are kept in OUT.partial; "
                                                   "a rerun with the same options resumes)")
                ("restart", po::bool_switch(), "discard OUT.partial");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            if (!vm.count("case")) usage_error("opf dataset", "--case FILE is required");
            if (!vm.count("out")) usage_error("opf dataset", "--out FILE is required");
            OpfDatasetOptions o;
            o.case_file = find_data_file(vm["case"].as<std::string>());
            o.convention = parse_dc_convention(vm["dc-model"].as<std::string>());
            o.load_levels = parse_levels(vm["load-levels"].as<std::string>(), "--load-levels");
            o.per_level = vm["per-level"].as<int64_t>();
            o.sigma = vm["sigma"].as<double>();
            o.outages = vm["outages"].as<bool>();
            const int w = vm["workers"].as<int>();
            if (w < 0) usage_error("--workers", "must be >= 0");
            o.workers = w > 0 ? w : (ctx.globals.threads > 0 ? ctx.globals.threads : hardware_threads());
            o.chunk = vm["chunk"].as<int64_t>();
            if (o.chunk < 1) usage_error("--chunk", "must be >= 1");
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

Command opf_train_command() {
  return {"opf", "train", "train the physics-informed GNN, then its flow-matching refinement, on an opf dataset",
          [] {
            po::options_description o;
            o.add_options()
                ("data", po::value<std::string>(), "opf_dataset HDF5 file (nfkit opf dataset)")
                ("case", po::value<std::string>(), "MATPOWER case file (default: the one the dataset names)")
                ("out", po::value<std::string>(), "model file to write (HDF5, kind opf_model)")
                ("epochs", po::value<int64_t>()->default_value(300), "GNN epochs")
                ("cfm-epochs", po::value<int64_t>()->default_value(300), "refinement epochs (0: GNN only)")
                ("batch", po::value<int64_t>()->default_value(128), "minibatch size")
                ("lr", po::value<double>()->default_value(2e-3), "GNN learning rate (Adam, cosine decay)")
                ("cfm-lr", po::value<double>()->default_value(1e-3), "refinement learning rate")
                ("hidden", po::value<int64_t>()->default_value(64), "GNN width")
                ("layers", po::value<int64_t>()->default_value(6), "message-passing layers")
                ("embed", po::value<int64_t>()->default_value(16), "per-unit embedding passed to the velocity field")
                ("velocity-hidden", po::value<int64_t>()->default_value(128), "velocity MLP width")
                ("velocity-layers", po::value<int64_t>()->default_value(3), "velocity MLP hidden layers")
                ("w-pg", po::value<double>()->default_value(1.0), "weight of the supervised dispatch loss")
                ("w-lmp", po::value<double>()->default_value(0.1, "0.1"), "weight of the LMP (multiplier) loss")
                ("w-balance", po::value<double>()->default_value(1.0), "weight of the power-balance loss")
                ("w-line", po::value<double>()->default_value(1.0), "weight of the line-limit (Kirchhoff/PTDF) loss")
                ("w-kkt", po::value<double>()->default_value(0.1, "0.1"), "weight of the KKT stationarity/complementarity loss")
                ("cfm-sigma", po::value<double>()->default_value(0.01, "0.01"), "path noise of the refinement")
                ("val-fraction", po::value<double>()->default_value(0.1, "0.1"), "optimal scenarios held out for model selection")
                ("solver", po::value<std::string>()->default_value("euler"), "refinement ODE solver for validation")
                ("steps", po::value<int64_t>()->default_value(4), "refinement ODE steps");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            if (!vm.count("data")) usage_error("opf train", "--data FILE is required");
            if (!vm.count("out")) usage_error("opf train", "--out FILE is required");
            const std::string data_path = vm["data"].as<std::string>(), out = vm["out"].as<std::string>();
            OpfTrainOptions o;
            o.model.hidden(vm["hidden"].as<int64_t>()).layers(vm["layers"].as<int64_t>()).embed(vm["embed"].as<int64_t>());
            o.model.velocity_hidden(vm["velocity-hidden"].as<int64_t>()).velocity_layers(vm["velocity-layers"].as<int64_t>());
            o.epochs = vm["epochs"].as<int64_t>();
            o.cfm_epochs = vm["cfm-epochs"].as<int64_t>();
            o.batch_size = vm["batch"].as<int64_t>();
            o.lr = vm["lr"].as<double>();
            o.cfm_lr = vm["cfm-lr"].as<double>();
            o.w_pg = vm["w-pg"].as<double>();
            o.w_lmp = vm["w-lmp"].as<double>();
            o.w_balance = vm["w-balance"].as<double>();
            o.w_line = vm["w-line"].as<double>();
            o.w_kkt = vm["w-kkt"].as<double>();
            o.cfm_sigma = vm["cfm-sigma"].as<double>();
            o.val_fraction = vm["val-fraction"].as<double>();
            o.ode = refinement_ode(vm);
            o.seed = ctx.globals.seed;
            o.quiet = ctx.globals.quiet;
            o.should_stop = [] { return stop_requested(); };
            o.validate();
            check_writable(out);
            const OpfDataset data = OpfDataset::read(data_path);
            const std::string case_file = case_of(vm, data, data_path);
            const PowerCase pc = read_matpower_case(case_file);
            const DcConvention conv = parse_dc_convention(data.dc_model, data_path + ": attribute dc_model");
            o.gnn_checkpoint = out + ".gnn.partial";
            const OpfTrained tr = train_opf_model(data, pc, conv, o);
            ctx.results = tr.report.to_json();
            if (tr.report.interrupted)
              throw Interrupted(file_exists(o.gnn_checkpoint)
                                    ? "interrupted; the trained GNN is kept in " + o.gnn_checkpoint +
                                          "; rerun the same command to go on with the refinement"
                                    : "interrupted during the GNN stage; no model written");
            tr.model.save(out, {{"data", data_path}, {"case_file", case_file}, {"dc_model", data.dc_model},
                                {"train", o.to_json()}, {"report", tr.report.to_json()}});
            std::remove(o.gnn_checkpoint.c_str());
            ctx.results["out"] = out;
            const std::string curve = training_figure_path(out, ctx.globals.figure_format);
            opf_training_figure(curve, ctx.globals.figure_format, tr.report, "opf train: " + pc.name);
            ctx.results["figure"] = curve;
            ctx.out << "trained on " << tr.report.train << " scenarios (" << tr.report.val << " for validation) in " << std::fixed
                    << std::setprecision(1) << tr.report.seconds << " s: validation RMSE (unit coordinates) GNN "
                    << std::setprecision(5) << tr.report.gnn_val_rmse << " (epoch " << tr.report.gnn_best_epoch << ")";
            if (o.cfm_epochs > 0)
              ctx.out << ", GNN+CFM " << tr.report.cfm_val_rmse << " (epoch " << tr.report.cfm_best_epoch << ")";
            ctx.out << "\nwrote " << out << " and " << curve << " (validation RMSE per epoch)\n";
          }};
}

Command opf_eval_command() {
  return {"opf", "eval", "cost gap, violations, feasibility and speed of a trained pipeline against Ipopt, per load level",
          [] {
            po::options_description o;
            o.add_options()
                ("model", po::value<std::string>(), "model file (nfkit opf train)")
                ("data", po::value<std::string>(), "opf_dataset HDF5 file of held-out scenarios")
                ("case", po::value<std::string>(), "MATPOWER case file (default: the one the dataset names)")
                ("solver", po::value<std::string>()->default_value("euler"), "refinement ODE solver (euler, midpoint, heun, rk4)")
                ("steps", po::value<int64_t>()->default_value(4), "refinement ODE steps")
                ("ipopt-sample", po::value<int64_t>()->default_value(200),
                 "scenarios Ipopt re-solves one by one in this run for the speed ratio (0 = all)")
                ("repeats", po::value<int64_t>()->default_value(3),
                 "timed passes of the batched pipeline and of Ipopt; the best pass of each counts")
                ("out", po::value<std::string>()->default_value(""), "write the report to this JSON file")
                ("figure", po::value<std::string>()->default_value(""),
                 "write the gap per load level figure to STEM.<ext> (--figure-format)");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            if (!vm.count("model")) usage_error("opf eval", "--model FILE is required");
            if (!vm.count("data")) usage_error("opf eval", "--data FILE is required");
            const std::string model_path = vm["model"].as<std::string>(), data_path = vm["data"].as<std::string>();
            const std::string out = vm["out"].as<std::string>();
            OpfEvalOptions eo;
            eo.ode = refinement_ode(vm);
            eo.ipopt_sample = vm["ipopt-sample"].as<int64_t>();
            if (eo.ipopt_sample < 0) usage_error("--ipopt-sample", "must be >= 0");
            eo.repeats = vm["repeats"].as<int64_t>();
            if (eo.repeats < 1) usage_error("--repeats", "must be >= 1");
            if (!out.empty()) check_writable(out);
            const std::string fig_stem = vm["figure"].as<std::string>();
            const std::string fig = fig_stem.empty() ? "" : figure_path(fig_stem, ctx.globals.figure_format);
            if (!fig.empty()) check_writable(fig);
            const OpfDataset data = OpfDataset::read(data_path);
            const std::string case_file = case_of(vm, data, data_path);
            const PowerCase pc = read_matpower_case(case_file);
            const DcConvention conv = parse_dc_convention(data.dc_model, data_path + ": attribute dc_model");
            const DcNetwork net(pc, conv);
            const OpfModel model = OpfModel::load(model_path, net);
            const OpfEvalReport rep = evaluate_opf_model(model, data, pc, conv, eo);
            ctx.results = rep.to_json();
            ctx.results["model"] = model_path;
            ctx.results["data"] = data_path;
            ctx.out << pc.name << ", " << data.size() << " scenarios of " << data_path << "; refinement " << rep.ode << "\n"
                    << rep.table();
            if (rep.returned_infeasible > 0)
              ctx.out << rep.returned_infeasible << " scenarios Ipopt solved got no dispatch from the pipeline\n";
            if (!fig.empty()) {
              opf_gap_figure(fig, ctx.globals.figure_format, rep,
                             "Learned DC-OPF on " + pc.name + ": cost gap per load level");
              ctx.results["figure"] = fig;
              ctx.out << "figure " << fig << " (mean |gap| per load level: GNN, GNN + CFM, after projection)\n";
            }
            if (!out.empty()) {
              json j = ctx.results;
              j["nfkit_format"] = "opf_eval";
              j["format_version"] = 1;
              write_file_atomic(out, j.dump(1) + "\n");
              ctx.out << "wrote " << out << "\n";
            }
          }};
}

}  // namespace nfkit::cli
