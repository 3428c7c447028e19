// nfkit bg sample: samples of a Boltzmann generator with log q, reduced energies u and
// importance log-weights log w = -u - log q.
#include "bg_common.h"

namespace nfkit::cli {

Command bg_sample_command() {
  return {"bg", "sample", "draw samples with log q, reduced energy u and log-weights (HDF5)",
          [] {
            po::options_description o;
            o.add(molecule_options()).add(bg_sample_options());
            o.add_options()
                ("model", po::value<std::string>()->required(), "model from nfkit bg train")
                ("out", po::value<std::string>()->required(), "samples file (.h5: /x /log_q /u /log_w)");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            const auto m = molecule_from(vm);
            ctx.results = bg_sample(vm, m, vm["model"].as<std::string>(), vm["out"].as<std::string>(), ctx);
            ctx.out << "wrote " << ctx.results["n"].get<int64_t>() << " samples to "
                    << ctx.results["out"].get<std::string>() << "; Kish ESS "
                    << 100.0 * ctx.results["ess_fraction"].get<double>() << "% of samples\n";
            if (ctx.results.contains("smc")) {
              const auto& smc = ctx.results["smc"];
              ctx.out << "SMC: " << smc["steps"].get<int64_t>() << " intermediate densities ("
                      << smc["options"]["kernel"].get<std::string>() << "), "
                      << smc["energy_evaluations"].get<int64_t>() << " energy evaluations, "
                      << smc["resamplings"].get<int64_t>() << " resamplings, "
                      << smc["dropped_infinite"].get<int64_t>() + smc["dropped_energy_cut"].get<int64_t>()
                      << " samples dropped (infinite energy or above the cut)\n";
            }
          }};
}

}  // namespace nfkit::cli
