// nfkit pta compare: evidences and Bayes factors of SGWB models on free-spectrum PTA data
// (inference/pta_models.h, inference/model_comparison.h).
#include <torch/torch.h>

#include <fstream>
#include <iomanip>
#include <sstream>

#include "evidence_common.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/runtime.h"
#include "nfkit/inference/chains.h"
#include "nfkit/inference/model_comparison.h"
#include "nfkit/inference/pta_models.h"
#include "figures.h"

namespace nfkit::cli {
namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

/// A finished model's results, reused when the run's configuration is unchanged.
json read_cached(const std::string& path, const json& config) {
  if (!file_exists(path)) return {};
  try {
    std::ifstream in(path);
    auto j = json::parse(in);
    if (j.value("config", json()) == config) return j;
  } catch (const std::exception&) {
  }
  return {};
}

}  // namespace

Command pta_compare_command() {
  return {"pta", "compare", "evidences and Bayes factors of SGWB models on free-spectrum PTA data",
          [] {
            po::options_description o;
            o.add_options()
                ("data", po::value<std::string>()->default_value("data/pta/ng15_30f_fs_hd_ceffyl"),
                 "free-spectrum directory (density.npy, log10rhogrid.npy, freqs.npy)")
                ("models", po::value<std::string>()->default_value(pta_model_list()), "comma-separated models")
                ("reference", po::value<std::string>()->default_value(""),
                 "model the Bayes factors are taken against (default: smbhb if compared, else the first)")
                ("nbins", po::value<int64_t>()->default_value(14),
                 "frequency bins used (0 = all; the default 14 shrinks to the data's bins)")
                ("walkers", po::value<int64_t>()->default_value(64), "ensemble walkers (= chains)")
                ("steps", po::value<int64_t>()->default_value(3000), "kept steps per walker")
                ("burn-in", po::value<int64_t>()->default_value(1000), "discarded steps per walker")
                ("is-samples", po::value<int64_t>()->default_value(20000), "importance samples per model")
                ("out", po::value<std::string>()->default_value("runs/pta"),
                 "directory for results.json, table.csv, bayes_factors.<ext>, corner_<model>.<ext>, "
                 "chains_<model>.h5 (finished models are reused on a rerun with the same options)")
                ("restart", po::bool_switch(), "ignore finished models in --out");
            o.add(harmonic_options());
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            const std::string dir = find_data_file(vm["data"].as<std::string>()), out = vm["out"].as<std::string>();
            auto models = split_list(vm["models"].as<std::string>());
            if (models.empty()) usage_error("--models", "is empty");
            auto h = harmonic_from(vm, ctx);
            EvidenceRunOptions eo;
            eo.walkers = vm["walkers"].as<int64_t>();
            eo.sampler.steps = vm["steps"].as<int64_t>();
            eo.sampler.burn_in = vm["burn-in"].as<int64_t>();
            eo.importance_samples = vm["is-samples"].as<int64_t>();
            check_positive_int("--steps", "steps", eo.sampler.steps);
            check_nonnegative("--burn-in", "burn-in", static_cast<double>(eo.sampler.burn_in));
            check_positive_int("--is-samples", "samples", eo.importance_samples);
            eo.harmonic = h;
            eo.seed = ctx.globals.seed;
            eo.quiet = ctx.globals.quiet;
            std::string ref = vm["reference"].as<std::string>();
            if (ref.empty())
              ref = std::find(models.begin(), models.end(), "smbhb") != models.end() ? "smbhb" : models[0];
            if (std::find(models.begin(), models.end(), ref) == models.end())
              usage_error("--reference", "'" + ref + "' is not among --models");

            for (const auto& name : models) check_pta_model(name);  // before the data is read
            const int64_t nb = vm["nbins"].as<int64_t>();
            if (nb < 0) usage_error("--nbins", "must be >= 0");
            auto data = FreeSpectrum::load(dir);
            // The default (14, NANOGrav's choice) shrinks to the data's bins; an explicit value must fit.
            const int64_t use = nb == 0 ? data.bins() : vm["nbins"].defaulted() ? std::min(nb, data.bins()) : nb;
            data = data.first_bins(use);  // UsageError beyond the data's bins
            std::vector<PTAModel> built;
            for (const auto& name : models) built.push_back(make_pta_model(name, data));  // validates names
            make_directories(out, "--out");

            json config = {{"data", dir},
                           {"nbins", data.bins()},
                           {"walkers", eo.walkers},
                           {"steps", eo.sampler.steps},
                           {"burn_in", eo.sampler.burn_in},
                           {"is_samples", eo.importance_samples},
                           {"base_temperature", h.temperature},
                           {"train_fraction", h.train_fraction},
                           {"flow", {{"kind", h.flow.kind}, {"layers", h.flow.layers}, {"hidden", h.flow.hidden},
                                     {"bins", h.flow.bins}}},
                           {"training", h.training.to_json()},
                           {"seed", ctx.globals.seed}};
            config["training"].erase("quiet");
            std::vector<json> results;
            const bool restart = vm["restart"].as<bool>();
            for (size_t i = 0; i < built.size(); ++i) {
              if (stop_requested())
                throw Interrupted("interrupted; finished models are kept in " + out + "; rerun to continue");
              const auto& m = built[i];
              const std::string cache = out + "/" + m.name + ".json", chains_file = out + "/chains_" + m.name + ".h5";
              json j = restart ? json() : read_cached(cache, config);
              auto draw_corner = [&](const torch::Tensor& chain_samples) {
                pta_corner_figure(figure_path(out + "/corner_" + m.name, ctx.globals.figure_format),
                                  ctx.globals.figure_format, m.name + ": " + m.description,
                                  chain_samples.reshape({-1, m.model.dim()}), m.model.names(), m.model.support());
              };
              if (!j.is_null()) {
                if (!ctx.globals.quiet) ctx.err << "pta compare: " << m.name << ": reusing " << cache << "\n";
                // the corner plot again from its chains, so a rerun (another --figure-format,
                // a newer build) redraws every figure it lists
                if (file_exists(chains_file)) draw_corner(read_chains(chains_file).samples);
                results.push_back(j);
                continue;
              }
              if (!ctx.globals.quiet)
                ctx.err << "pta compare: model " << i + 1 << "/" << built.size() << " (" << m.name << ": "
                        << m.description << ")\n";
              EvidenceRunOptions mo = eo;
              mo.seed = derive_seed(ctx.globals.seed, 43, i);
              auto r = estimate_evidence(m.model, mo, m.name);
              print_warnings(ctx, m.name, r.warnings);
              write_chains(chains_file, r.sampling.chains);
              draw_corner(r.sampling.chains.samples);
              j = r.to_json();
              j["description"] = m.description;
              j["parameters"] = m.model.config();
              j["config"] = config;
              write_file_atomic(cache, j.dump(2));
              results.push_back(j);
            }
            // Bayes factors against the reference.
            const auto& rj = results[std::find(models.begin(), models.end(), ref) - models.begin()];
            const double ref_z = rj["ln_z"], ref_e = rj["ln_z_error"];
            std::vector<double> bf, bfe;
            std::ostringstream table, csv;
            csv << "model,ln_z,ln_z_error,ln_bf,ln_bf_error,is_ln_z,is_ln_z_error,is_ess_fraction,agree,max_rhat,seconds\n";
            table << std::fixed;
            table << "data " << dir << ", " << data.bins() << " bins; ln BF against " << ref << "\n\n"
                  << std::left << std::setw(10) << "model" << std::right << std::setw(20) << "ln z (harmonic)"
                  << std::setw(18) << "ln BF" << std::setw(22) << "ln z (importance)" << std::setw(8) << "ESS"
                  << std::setw(7) << "agree" << std::setw(8) << "R-hat" << std::setw(9) << "time\n";
            double total = 0;
            for (size_t i = 0; i < results.size(); ++i) {
              const auto& j = results[i];
              const double z = j["ln_z"], e = j["ln_z_error"];
              const double b = z - ref_z, be = models[i] == ref ? 0.0 : std::hypot(e, ref_e);
              bf.push_back(b);
              bfe.push_back(be);
              const double iz = j["importance"]["ln_z"], ie = j["importance"]["ln_z_error"];
              const double ess = j["importance"]["ess_fraction"];
              const double rhat = j["chains"]["diagnostics"]["max_rhat"], sec = j["seconds"];
              total += sec;
              auto pm = [](double v, double err) {
                std::ostringstream s;
                s << std::fixed << std::setprecision(3) << v << " +- " << err;
                return s.str();
              };
              table << std::left << std::setw(10) << models[i] << std::right << std::setw(20) << pm(z, e)
                    << std::setw(18) << pm(b, be) << std::setw(22) << pm(iz, ie) << std::setw(7)
                    << std::setprecision(0) << 100 * ess << "%" << std::setw(7)
                    << (j["agree"].get<bool>() ? "yes" : "NO") << std::setw(8) << std::setprecision(3) << rhat
                    << std::setw(8) << std::setprecision(1) << sec << "s\n";
              csv << std::setprecision(17) << models[i] << ',' << z << ',' << e << ',' << b << ',' << be << ',' << iz
                  << ',' << ie << ',' << ess << ',' << (j["agree"].get<bool>() ? 1 : 0) << ',' << rhat << ','
                  << sec << '\n';
            }
            table << "\ntotal " << std::setprecision(1) << total << " s of model time\n";
            write_file_atomic(out + "/table.csv", csv.str());
            const std::string bf_fig = figure_path(out + "/bayes_factors", ctx.globals.figure_format);
            bayes_factor_figure(bf_fig, ctx.globals.figure_format,
                                "ln Bayes factors against " + ref + " (" + std::to_string(data.bins()) +
                                    " frequency bins)",
                                models, bf, bfe);
            ctx.results = {{"data", dir}, {"nbins", data.bins()}, {"reference", ref}, {"models", json::array()}};
            for (size_t i = 0; i < results.size(); ++i) {
              json j = results[i];
              j.erase("config");
              j["ln_bf"] = bf[i];
              j["ln_bf_error"] = bfe[i];
              ctx.results["models"].push_back(j);
            }
            write_file_atomic(out + "/results.json", ctx.results.dump(2));
            const std::string ext = viz::extension(ctx.globals.figure_format);
            ctx.out << table.str() << "wrote " << out << "/{results.json,table.csv,bayes_factors." << ext
                    << ",corner_*." << ext << "} (ln BF bar chart with error bars; posterior corner plots)\n";
          }};
}

}  // namespace nfkit::cli
