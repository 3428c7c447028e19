// nfkit bg run: the alanine-dipeptide pipeline end to end (the README's main job): MD
// reference -> training -> sampling + reweighting -> report and figures. Each stage writes a
// file in --out with its configuration recorded; a rerun skips a finished stage whose recorded
// configuration matches (and redoes it otherwise) and resumes an interrupted one.
#include <chrono>
#include <functional>

#include "bg_common.h"
#include "nfkit/core/error.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/progress.h"
#include "nfkit/core/runtime.h"
#include "nfkit/core/checks.h"

namespace nfkit::cli {


Command bg_run_command() {
  return {"bg", "run", "the whole pipeline: MD, training, sampling, reweighting, report (cached stages)",
          [] {
            po::options_description o;
            o.add(molecule_options()).add(md_options(80000, 2, 100)).add(bg_train_options())
                .add(bg_sample_options()).add(bg_eval_options());
            o.add_options()
                ("out", po::value<std::string>()->default_value("runs/ala2"), "output directory")
                ("reference", po::value<std::string>()->default_value(""), "reference trajectory for the metrics and the NLL (default: this run's test MD)")
                ("test-frames", po::value<int64_t>()->default_value(20000), "frames per walker of the test MD: independent walkers (their own seeds) that training never sees, the reference of the metrics and the NLL (0 = none: the training MD and its held-out tail)")
                ("test-walkers", po::value<int64_t>()->default_value(2), "walkers of the test MD");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            const std::string dir = vm["out"].as<std::string>();
            make_directories(dir, "--out");
            const auto m = molecule_from(vm);
            const std::string md = dir + "/md.h5", test_md = dir + "/test_md.h5", model = dir + "/model.h5",
                              samples = dir + "/samples.h5", report = dir + "/report.json";
            const bool restart = vm["restart"].as<bool>();
            // Each stage's configuration (its options and those of the stages it reads), recorded
            // in its file: a rerun reuses a file only when the recorded one matches.
            const json md_cfg = {{"md", md_from(vm, ctx).to_json()}, {"system", m.system}};
            auto test_options = md_from(vm, ctx);
            test_options.frames = vm["test-frames"].as<int64_t>();
            test_options.walkers = vm["test-walkers"].as<int64_t>();
            test_options.seed = derive_seed(ctx.globals.seed, 50, 1);
            check_nonnegative("--test-frames", "value", static_cast<double>(test_options.frames));
            check_positive_int("--test-walkers", "value", test_options.walkers);
            const json test_cfg = {{"md", test_options.to_json()}, {"system", m.system}};
            const json train_cfg = {{"md", md_cfg}, {"pdb", m.pdb}, {"temperature", m.temperature},
                                    {"train", bg_train_config(vm, model, ctx)}};
            const auto so = bg_sample_from(vm, ctx);
            json sample_cfg = {{"model", train_cfg}, {"n", so.n}, {"batch", so.batch}, {"seed", so.seed}};
            if (so.smc_steps > 0) sample_cfg["smc"] = so.smc.to_json();
            json stages;
            auto stage = [&](const std::string& name, const std::string& file, const json& config,
                             const std::function<json()>& recorded, auto&& work) {
              const auto t0 = std::chrono::steady_clock::now();
              if (file_exists(file) && !restart) {
                json rec;
                try {
                  rec = recorded();
                } catch (const std::exception&) {
                  rec = nullptr;  // unreadable: made again
                }
                if (rec == config) {
                  if (!ctx.globals.quiet) ctx.err << "[" << name << "] " << file << " exists with the same settings, skipping\n";
                  stages[name] = {{"file", file}, {"cached", true}};
                  return;
                }
                if (!ctx.globals.quiet)
                  ctx.err << "[" << name << "] " << file << " was made with other settings (or by another command); making it again\n";
              }
              if (!ctx.globals.quiet) ctx.err << "[" << name << "] -> " << file << std::endl;
              json r = work();
              const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
              r["seconds"] = s;
              r["cached"] = false;
              stages[name] = r;
              if (!ctx.globals.quiet) ctx.err << "[" << name << "] done in " << format_duration(s) << "\n";
            };
            // An MD stage: its recorded configuration, and the run.
            auto md_recorded = [](const std::string& file) {
              return [file] {
                H5Reader r(file);
                return json{{"md", json::parse(r.attr_string("/", "options"))},
                            {"system", r.attr_string("/", "system")}};
              };
            };
            auto md_run = [&](const MDOptions& o, const std::string& file, const std::string& what) {
              return [&, o, file, what] {
                const auto rep = run_md(m.system, m.mol.positions(), o, file, [] { return stop_requested(); });
                if (rep.interrupted)
                  throw Interrupted("interrupted during the " + what + "; state saved; rerun the same command to resume");
                return json{{"frames", rep.frames}, {"ns_simulated", rep.ns_simulated}};
              };
            };
            stage("md", md, md_cfg, md_recorded(md), md_run(md_from(vm, ctx), md, "MD"));
            if (test_options.frames > 0 && vm["reference"].as<std::string>().empty())
              stage("test-md", test_md, test_cfg, md_recorded(test_md), md_run(test_options, test_md, "test MD"));
            stage("train", model, train_cfg,
                  [&] {
                    json meta;
                    load_generator(model, &meta);
                    return meta.value("provenance", json());
                  },
                  [&] { return bg_train(vm, m, md, model, ctx, train_cfg); });
            stage("sample", samples, sample_cfg, [&] { return read_samples(samples).provenance; },
                  [&] { return bg_sample(vm, m, model, samples, ctx, sample_cfg); });
            const std::string ref = !vm["reference"].as<std::string>().empty()
                                        ? find_data_file(vm["reference"].as<std::string>())
                                        : test_options.frames > 0 ? test_md : md;
            auto res = bg_eval(vm, m, samples, ref, model, dir + "/", ctx);
            res["stages"] = stages;
            write_file_atomic(report, res.dump(2) + "\n");
            ctx.results = res;
            print_report(res, ctx.out);
            ctx.out << "report: " << report << "\n";
          }};
}

}  // namespace nfkit::cli
