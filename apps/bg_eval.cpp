// nfkit bg eval: ESS, basin free energies, E-W2, T-W2, Ramachandran KL and held-out NLL of
// Boltzmann-generator samples against a reference MD trajectory, with figures.
#include "bg_common.h"

namespace nfkit::cli {

Command bg_eval_command() {
  return {"bg", "eval", "metrics of samples against a reference trajectory, with figures",
          [] {
            po::options_description o;
            o.add(molecule_options()).add(bg_eval_options());
            o.add_options()
                ("samples", po::value<std::string>()->required(), "samples from nfkit bg sample")
                ("reference", po::value<std::string>()->required(), "reference MD trajectory")
                ("model", po::value<std::string>()->default_value(""), "model (for the held-out NLL; optional)")
                ("figures", po::value<std::string>()->default_value(""), "figure file prefix, e.g. out/ala2- (empty = none)");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            const auto m = molecule_from(vm);
            ctx.results = bg_eval(vm, m, vm["samples"].as<std::string>(),
                                  vm["reference"].as<std::string>(), vm["model"].as<std::string>(),
                                  vm["figures"].as<std::string>(), ctx);
            print_report(ctx.results, ctx.out);
          }};
}

}  // namespace nfkit::cli
