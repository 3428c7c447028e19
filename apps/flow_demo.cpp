// nfkit flow demo: train a neural spline flow on a 2-D built-in density, compare the
// held-out NLL with the exact entropy, and draw the learned density beside the true one.
#include <torch/torch.h>


#include "flow_common.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "figures.h"

namespace nfkit::cli {

Command flow_demo_command() {
  return {"flow", "demo", "train an NSF on a 2-D density, report NLL vs entropy, plot it",
          [] {
            auto o = train_options("gmm", false);
            o.add_options()("out-dir", po::value<std::string>()->default_value("demo-out"),
                            "directory for model.h5 and density.<ext> (--figure-format)");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            const std::string dir = vm["out-dir"].as<std::string>();
            make_directories(dir, "--out-dir");
            const std::string out = vm.count("out") ? vm["out"].as<std::string>() : dir + "/model.h5";
            auto res = train_flow(vm, ctx, out);
            if (!res.data.truth || res.data.truth->dim() != 2)
              usage_error("--data", "the demo needs a 2-D built-in density (gmm, rings, spirals, checkerboard)");
            const double L = res.data.truth->box();
            const int64_t n = 256;
            auto truth = density_grid([&](const torch::Tensor& x) { return res.data.truth->log_prob(x); }, L, n);
            auto& flow = *res.flow;
            auto learned = density_grid(
                [&](const torch::Tensor& x) {
                  return flow.log_prob(x.to(flow.tensor_options())).cpu();
                },
                L, n);
            const std::string fig = figure_path(dir + "/density", ctx.globals.figure_format);
            density_figure(fig, ctx.globals.figure_format, {truth, learned},
                           {"true density", "learned flow (" + ctx.results.value("flow", std::string("flow")) + ")"}, L);
            ctx.results["figure"] = fig;
            ctx.out << std::defaultfloat << "density plot    " << fig << " (left: true density, right: learned flow, [-"
                    << L << ", " << L << "]^2)\n";
          }};
}

}  // namespace nfkit::cli
