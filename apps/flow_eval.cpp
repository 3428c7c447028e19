// nfkit flow eval: mean negative log-likelihood of data under a trained flow.
#include <torch/torch.h>

#include <iomanip>

#include "flow_common.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/checkpoint.h"

namespace nfkit::cli {

Command flow_eval_command() {
  return {"flow", "eval", "mean negative log-likelihood (nats/sample) of data under a model",
          [] {
            po::options_description o;
            o.add_options()
                ("model", po::value<std::string>()->required(), "model file written by flow train")
                ("data", po::value<std::string>()->required(), "built-in name, file.csv or file.h5:/dataset")
                ("n-samples", po::value<int64_t>()->default_value(10000), "samples drawn from a built-in dataset");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            auto loaded = load_flow(vm["model"].as<std::string>());
            auto& flow = *loaded.flow;
            flow.to(ctx.globals.device);
            seed_all(derive_seed(ctx.globals.seed, 4, 0));
            auto data = load_data(vm["data"].as<std::string>(), vm["n-samples"].as<int64_t>());
            if (data.x.size(1) != flow.dim())
              runtime_error(data.description, "has " + std::to_string(data.x.size(1)) +
                                                  " columns, but the model expects " + std::to_string(flow.dim()));
            const auto s = nll_stats(flow, data.x);
            ctx.results = {{"model", vm["model"].as<std::string>()}, {"data", data.description},
                           {"nll", s.mean}, {"nll_se", s.se}, {"n", s.n}};
            ctx.out << std::fixed << std::setprecision(4) << "NLL " << s.mean << " +- " << s.se
                    << " nats/sample (n = " << s.n << ")\n";
            if (data.truth) {
              const double h = data.truth->entropy();
              ctx.results["entropy"] = h;
              ctx.results["gap"] = s.mean - h;
              ctx.out << "true entropy " << h << " nats, gap " << s.mean - h << " nats\n";
            }
          }};
}

}  // namespace nfkit::cli
