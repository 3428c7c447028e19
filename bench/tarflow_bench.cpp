// Sampling speed of a transformer flow: sequential KV-cache decoding against Jacobi and
// GS-Jacobi (strategies chosen by CRM/IGM on training images), over batch sizes, with the
// largest difference to the sequential samples. Prints a markdown table (docs/benchmarks.md).
//
//   build/bench/tarflow_bench MODEL.h5 [batches=1,2,4,8,16,32,64] [tol=1e-5] [repeats=3] [threads=0]
//                             [data=/usr/share/datasets/fashion-mnist] [device=cpu]
// Sliding-window gs-jacobi columns for the windows in NFKIT_BENCH_WINDOWS (default 4,16).
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "bench_util.h"
#include "nfkit/core/idx.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/images.h"
#include "nfkit/flows/tarflow.h"

using namespace nfkit;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: tarflow_bench MODEL.h5 [batches] [tol] [repeats] [threads] [data] [device]\n");
    return 2;
  }
  try {
    const std::string path = argv[1];
    const auto batches = bench::int_list(argc > 2 ? argv[2] : "1,2,4,8,16,32,64");
    const double tol = argc > 3 ? std::stod(argv[3]) : 1e-5;
    const int repeats = argc > 4 ? std::stoi(argv[4]) : 3;
    set_threads(argc > 5 ? std::stoi(argv[5]) : 0);
    const std::string dir = argc > 6 ? argv[6] : "/usr/share/datasets/fashion-mnist";
    const torch::Device device(argc > 7 ? argv[7] : "cpu");
    auto lf = load_flow(path);
    lf.flow->to(device);
    lf.flow->eval();
    auto tar = std::dynamic_pointer_cast<TarFlow>(lf.flow->transform());
    if (!tar) throw std::runtime_error(path + " is not a transformer flow");
    const auto& o = tar->options();
    const int64_t K = o.num_classes(), T = o.tokens();
    const auto fo = lf.flow->tensor_options();
    auto sync = [&] {
      if (device.is_cuda()) torch::cuda::synchronize();
    };

    // Per-block strategy from the metrics on 32 training images.
    auto imgs = read_idx(dir + "/train-images-idx3-ubyte.gz").narrow(0, 0, 32).unsqueeze(1);
    auto labs = read_idx(dir + "/train-labels-idx1-ubyte.gz").narrow(0, 0, 32).to(torch::kInt64);
    torch::manual_seed(1);
    const auto x = dequantize_uniform(imgs).to(fo);
    const auto c = K > 0 ? one_hot_labels(labs, K).to(fo) : torch::Tensor();
    const int64_t modules = std::max<int64_t>(2, std::llround(std::sqrt(static_cast<double>(T))));
    const auto metrics = tar->block_metrics(x, c, modules, tol);
    std::printf("model %s: T = %lld tokens of %lld, %lld blocks x %lld layers, width %lld, %d threads, %s\n\n",
                path.c_str(), (long long)T, (long long)o.token_dim(), (long long)o.blocks(),
                (long long)o.layers(), (long long)o.hidden(), torch::get_num_threads(), device.str().c_str());
    std::printf("| block | CRM | IGM latent | IGM zeros | Jacobi iterations (tol %g) | chosen |\n|---|---|---|---|---|---|\n", tol);
    std::vector<BlockStrategy> chosen;
    for (size_t b = 0; b < metrics.size(); ++b) {
      const auto& m = metrics[b];
      std::printf("| %zu | %.4g | %.4g | %.4g | %.1f | %lld module%s, %s guess |\n", b, m.crm, m.igm_latent,
                  m.igm_zeros, m.jacobi_iters, (long long)m.chosen.modules, m.chosen.modules > 1 ? "s" : "",
                  m.chosen.init.c_str());
      chosen.push_back(m.chosen);
    }
    const char* wenv = std::getenv("NFKIT_BENCH_WINDOWS");
    const auto windows = bench::int_list(wenv ? wenv : "4,16");
    std::printf("\n| batch | sequential [ms] | jacobi [ms] | gs-jacobi [ms] | jacobi speed-up | gs-jacobi speed-up | max |x - x_seq| jacobi | gs-jacobi | passes seq / jac / gs |");
    for (auto W : windows) std::printf(" window %lld [ms] / speed-up / max diff / passes |", (long long)W);
    std::printf("\n|---|---|---|---|---|---|---|---|---|");
    for (size_t i = 0; i < windows.size(); ++i) std::printf("---|");
    std::printf("\n");
    for (int64_t B : batches) {
      torch::manual_seed(100 + B);
      const auto z = torch::randn({B, o.dim()}, fo);
      const auto cc = K > 0 ? one_hot_labels(torch::arange(B, torch::kInt64) % K, K).to(fo) : torch::Tensor();
      SampleOptions seq, jac, gs;
      jac.sampler = SamplerKind::kJacobi;
      jac.tol = tol;
      gs.sampler = SamplerKind::kGSJacobi;
      gs.tol = tol;
      gs.blocks = chosen;
      auto time = [&](const SampleOptions& so, torch::Tensor* out, int64_t* passes) {
        double best = 1e30;
        for (int r = 0; r < repeats; ++r) {
          SampleStats st;
          sync();
          const auto t0 = std::chrono::steady_clock::now();
          auto [xs, ld] = tar->sample_inverse(z, cc, so, &st);
          sync();
          best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
          *out = xs;
          *passes = 0;
          for (auto v : st.iterations) *passes += v;
        }
        return best * 1e3;
      };
      torch::Tensor xs, xj, xg;
      int64_t ps = 0, pj = 0, pg = 0;
      const double ts = time(seq, &xs, &ps), tj = time(jac, &xj, &pj), tg = time(gs, &xg, &pg);
      std::printf("| %lld | %.1f | %.1f | %.1f | %.2fx | %.2fx | %.1e | %.1e | %lld / %lld / %lld |", (long long)B, ts,
                  tj, tg, ts / tj, ts / tg, (xj - xs).abs().max().item<double>(),
                  (xg - xs).abs().max().item<double>(), (long long)ps, (long long)pj, (long long)pg);
      for (auto W : windows) {
        SampleOptions sw = gs;
        sw.blocks.clear();
        sw.window = W;
        torch::Tensor xw;
        int64_t pw = 0;
        const double tw = time(sw, &xw, &pw);
        std::printf(" %.1f / %.2fx / %.1e / %lld |", tw, ts / tw, (xw - xs).abs().max().item<double>(), (long long)pw);
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tarflow_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
