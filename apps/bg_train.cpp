// nfkit bg train: fit a Boltzmann generator in internal coordinates to MD frames (forward KL),
// to the energy (reverse KL), or a mix.
#include "bg_common.h"

namespace nfkit::cli {

Command bg_train_command() {
  return {"bg", "train", "train a Boltzmann generator on MD frames and/or the energy",
          [] {
            po::options_description o;
            o.add(molecule_options()).add(bg_train_options());
            o.add_options()
                ("md", po::value<std::string>(), "MD trajectory (from nfkit md); not needed with --objective fab")
                ("out", po::value<std::string>()->required(), "model file to write (.h5)");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            const auto m = molecule_from(vm);
            ctx.results = bg_train(vm, m, vm.count("md") ? vm["md"].as<std::string>() : std::string(),
                                   vm["out"].as<std::string>(), ctx);
            const bool fab = ctx.results.contains("fab");
            ctx.out << "wrote " << ctx.results["model"].get<std::string>() << " (best validation "
                    << (fab ? "log(1/ESS) " : "NLL ") << ctx.results["best_val"].get<double>() << " at step "
                    << ctx.results["best_step"].get<int64_t>() << ")\n";
          }};
}

}  // namespace nfkit::cli
