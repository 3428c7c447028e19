// nfkit md: reference molecular dynamics with OpenMM (boltzmann/md.h).
#include <torch/torch.h>

#include <iomanip>

#include "bg_common.h"
#include "nfkit/core/progress.h"

namespace nfkit::cli {

Command md_command() {
  return {"md", "", "molecular dynamics reference data with OpenMM (HDF5 trajectory)",
          [] {
            po::options_description o;
            o.add(molecule_options()).add(md_options(2000, 2, 1000));
            o.add_options()("out", po::value<std::string>()->required(), "trajectory file (.h5)");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            const auto m = molecule_from(vm);
            const auto o = md_from(vm, ctx);
            const std::string out = vm["out"].as<std::string>();
            const auto rep = run_md(m.system, m.mol.positions(), o, out,
                                    [] { return stop_requested(); });
            if (rep.interrupted)
              throw Interrupted("interrupted; MD state saved to " + out +
                                ".part; rerun the same command to resume");
            const double ns_day = rep.ns_simulated / std::max(rep.seconds, 1e-9) * 86400.0;
            ctx.results = {{"out", out}, {"frames", rep.frames}, {"seconds", rep.seconds},
                           {"ns_simulated", rep.ns_simulated}, {"ns_per_day", ns_day},
                           {"resumed", rep.resumed}};
            ctx.out << "wrote " << rep.frames << " frames (" << o.walkers << " walkers x "
                    << o.frames << ", " << std::setprecision(3)
                    << static_cast<double>(o.frames * o.steps_per_frame) * o.timestep / 1000.0
                    << " ns each) to " << out << " in " << format_duration(rep.seconds) << " ("
                    << std::setprecision(4) << ns_day << " ns/day in all)\n";
          }};
}

}  // namespace nfkit::cli
