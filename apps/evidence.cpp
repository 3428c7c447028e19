// nfkit evidence: ln z from posterior chains with the learned harmonic mean
// (inference/evidence.h).
#include <torch/torch.h>

#include <iomanip>
#include <sstream>

#include "evidence_common.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/runtime.h"
#include "nfkit/inference/chains.h"

namespace nfkit::cli {

po::options_description harmonic_options() {
  po::options_description o("learned harmonic mean");
  o.add_options()
      ("base-temperature", po::value<double>()->default_value(0.9), "base temperature T in (0, 1] of the flow at evaluation (a concentration of the base; not kelvin)")
      ("train-fraction", po::value<double>()->default_value(0.5), "share of chains that train the flow (the rest evaluate)")
      ("flow", po::value<std::string>()->default_value("nsf"), "flow kind: realnvp, maf, nsf, nsf-ar")
      ("layers", po::value<int64_t>()->default_value(4), "flow layers")
      ("hidden", po::value<int64_t>()->default_value(64), "hidden units per layer of the conditioners")
      ("bins", po::value<int64_t>()->default_value(8), "spline bins (nsf, nsf-ar)")
      ("train-steps", po::value<int64_t>()->default_value(1500), "training steps")
      ("batch-size", po::value<int64_t>()->default_value(512), "training batch size")
      ("lr", po::value<double>()->default_value(2e-3), "peak learning rate");
  return o;
}

HarmonicOptions harmonic_from(const po::variables_map& vm, const Context& ctx) {
  HarmonicOptions h;
  h.temperature = vm["base-temperature"].as<double>();
  check_in_range("--base-temperature", "T", h.temperature, 0.0, 1.0, true);
  h.train_fraction = vm["train-fraction"].as<double>();
  if (!(h.train_fraction > 0 && h.train_fraction < 1))
    usage_error("--train-fraction", "must lie strictly between 0 and 1");
  h.flow.kind = vm["flow"].as<std::string>();
  check_flow_kind(h.flow.kind);
  h.flow.layers = vm["layers"].as<int64_t>();
  h.flow.hidden = vm["hidden"].as<int64_t>();
  h.flow.bins = vm["bins"].as<int64_t>();
  check_positive_int("--layers", "layers", h.flow.layers);
  check_positive_int("--hidden", "hidden", h.flow.hidden);
  check_positive_int("--bins", "bins", h.flow.bins);
  const int64_t steps = vm["train-steps"].as<int64_t>(), batch = vm["batch-size"].as<int64_t>();
  check_positive_int("--train-steps", "steps", steps);
  check_positive_int("--batch-size", "batch size", batch);
  const double lr = vm["lr"].as<double>();
  check_positive("--lr", "lr", lr);
  h.training.steps(steps).batch_size(batch).lr(lr).warmup_steps(std::min<int64_t>(50, steps / 10))
      .seed(derive_seed(ctx.globals.seed, 41, 0)).quiet(ctx.globals.quiet);
  return h;
}

void print_warnings(Context& ctx, const std::string& prefix, const std::vector<std::string>& warnings) {
  for (const auto& w : warnings) ctx.err << "warning: " << prefix << ": " << w << "\n";
}

std::vector<std::pair<double, double>> parse_bounds(const std::string& text) {
  std::vector<std::pair<double, double>> out;
  if (text.empty()) return out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    auto colon = item.find(':');
    auto num = [&](const std::string& v) {
      char* end = nullptr;
      double d = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0') usage_error("--bounds", "'" + item + "' must be lo:hi with numbers or inf");
      return d;
    };
    if (colon == std::string::npos) usage_error("--bounds", "'" + item + "' must be lo:hi");
    double lo = num(item.substr(0, colon)), hi = num(item.substr(colon + 1));
    if (!(lo < hi)) usage_error("--bounds", "'" + item + "' needs lo < hi");
    out.emplace_back(lo, hi);
  }
  return out;
}

Command evidence_command() {
  return {"evidence", "", "ln z from posterior chains by the learned harmonic mean (flow-based)",
          [] {
            po::options_description o;
            o.add_options()("chains", po::value<std::string>()->required(),
                            "chains (.h5: /samples [chains, steps, dim], /ln_posterior [chains, steps]; "
                            "or .csv: chain,<names>,ln_posterior); ln_posterior = log L + log prior, "
                            "the prior normalised");
            o.add_options()("bounds", po::value<std::string>()->default_value(""),
                            "prior support per parameter, 'lo:hi,lo:hi,...' (inf allowed): the flow then "
                            "lives on exactly that support (needed when the posterior touches a prior edge)");
            o.add(harmonic_options());
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            const std::string path = vm["chains"].as<std::string>();
            auto h = harmonic_from(vm, ctx);
            h.bounds = parse_bounds(vm["bounds"].as<std::string>());
            auto ch = read_chains(path);
            if (!h.bounds.empty() && static_cast<int64_t>(h.bounds.size()) != ch.dim())
              usage_error("--bounds", std::to_string(h.bounds.size()) + " ranges for " + std::to_string(ch.dim()) +
                                          " parameters in " + path);
            if (ch.chains() < 4)
              runtime_error(path, "holds " + std::to_string(ch.chains()) +
                                      " chains, but the learned harmonic mean needs at least 4 (split a long "
                                      "chain into blocks if you have one)");
            auto diag = ch.steps() >= 4 ? diagnose(ch) : ChainDiagnostics{};
            seed_all(derive_seed(ctx.globals.seed, 41, 1));
            auto r = learned_harmonic_mean(ch, h);
            const auto& e = r.estimate;
            auto warnings = e.warnings;
            if (diag.max_rhat > 1.1)
              warnings.push_back("chains have not converged (split R-hat " + std::to_string(diag.max_rhat) + ")");
            print_warnings(ctx, "evidence", warnings);
            ctx.results = e.to_json();
            ctx.results["warnings"] = warnings;
            ctx.results["chains_file"] = path;
            ctx.results["training_chains"] = r.training_chains;
            ctx.results["base_temperature"] = h.temperature;
            ctx.results["best_val_nll"] = r.training.best_val;
            ctx.results["diagnostics"] = diag.to_json(ch.names);
            ctx.results["seconds"] = r.seconds;
            ctx.out << std::fixed << std::setprecision(4) << "ln z = " << e.ln_z << " +- " << e.ln_z_error << "\n"
                    << "chains " << ch.chains() << " x " << ch.steps() << " (" << r.training_chains
                    << " train the flow, " << e.chains << " evaluate), dim " << ch.dim() << ", T = "
                    << std::setprecision(2) << h.temperature << "\n"
                    << std::setprecision(3) << "kurtosis " << e.kurtosis << " (about 3 expected), "
                    << "sqrt(var var)/var " << e.var_var_ratio << " (Gaussian: "
                    << std::sqrt(2.0 / (e.n_eff - 1.0)) << "), largest sample share " << e.max_term_share
                    << "\nsplit R-hat max " << diag.max_rhat << ", ESS min " << std::setprecision(0)
                    << diag.min_ess << ", " << std::setprecision(1) << r.seconds << " s\n";
          }};
}

}  // namespace nfkit::cli
