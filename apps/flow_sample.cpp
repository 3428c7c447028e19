// nfkit flow sample: draw samples and their log-densities from a trained flow.
#include <torch/torch.h>

#include <iomanip>
#include <sstream>

#include "flow_common.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/flows/checkpoint.h"

namespace nfkit::cli {

Command flow_sample_command() {
  return {"flow", "sample", "draw samples x and log q(x) from a model (HDF5 or CSV)",
          [] {
            po::options_description o;
            o.add_options()
                ("model", po::value<std::string>()->required(), "model file written by flow train")
                ("n,n", po::value<int64_t>()->required(), "number of samples")
                ("out", po::value<std::string>()->required(), "output: FILE.h5 (/x, /log_q) or FILE.csv")
                ("base-temperature", po::value<double>()->default_value(1.0), "base temperature T in (0, 1] (a concentration of the base; not kelvin)")
                ("batch", po::value<int64_t>()->default_value(65536), "samples per pass");
            return o;
          },
          [](const po::variables_map& vm, Context& ctx) {
            const std::string out = vm["out"].as<std::string>();
            const int64_t n = vm["n"].as<int64_t>();
            check_positive_int("-n", "value", n);
            const int64_t batch = vm["batch"].as<int64_t>();
            check_positive_int("--batch", "value", batch);
            const std::string ext = file_extension(out);
            if (ext != "h5" && ext != "hdf5" && ext != "csv")
              usage_error("--out", "'" + out + "' must end in .h5, .hdf5 or .csv");
            auto loaded = load_flow(vm["model"].as<std::string>());
            auto& flow = *loaded.flow;
            flow.set_temperature(vm["base-temperature"].as<double>());
            flow.to(ctx.globals.device);
            check_writable(out);
            torch::NoGradGuard ng;
            std::vector<torch::Tensor> xs, lqs;
            for (int64_t i = 0; i < n; i += batch) {
              auto [x, lq] = flow.sample_and_log_prob(std::min(batch, n - i));
              xs.push_back(x.cpu());
              lqs.push_back(lq.cpu());
            }
            const auto x = torch::cat(xs), log_q = torch::cat(lqs);
            if (ext == "csv") {
              std::ostringstream os;
              os << std::setprecision(17);
              for (int64_t j = 0; j < x.size(1); ++j) os << "x" << j << ",";
              os << "log_q\n";
              const auto xd = x.to(torch::kFloat64).contiguous();
              const auto ld = log_q.to(torch::kFloat64).contiguous();
              const double* px = xd.data_ptr<double>();
              const double* pl = ld.data_ptr<double>();
              for (int64_t r = 0; r < x.size(0); ++r) {
                for (int64_t j = 0; j < x.size(1); ++j) os << px[r * x.size(1) + j] << ",";
                os << pl[r] << "\n";
              }
              write_file_atomic(out, os.str());
            } else {
              H5Writer w(out, "samples", 1);
              w.write("/x", x);
              w.write("/log_q", log_q);
              w.set_attr("/", "model", vm["model"].as<std::string>());
              w.set_attr("/", "base_temperature", flow.temperature());
              w.commit();
            }
            ctx.results = {{"out", out}, {"n", n}, {"dim", flow.dim()},
                           {"base_temperature", flow.temperature()},
                           {"mean_log_q", log_q.mean().item<double>()}};
            ctx.out << "wrote " << n << " samples of dimension " << flow.dim() << " to " << out << "\n";
          }};
}

}  // namespace nfkit::cli
