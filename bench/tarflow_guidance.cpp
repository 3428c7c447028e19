// Does guidance make class-conditional samples more recognisable? An independent judge: a
// one-hidden-layer classifier trained here on the Fashion-MNIST training images (its test
// accuracy is printed), applied to samples of a class-conditional transformer flow drawn with
// classifier-free guidance (TARFlow: linear in mu and log sigma, optionally annealed over the
// tokens) and STARFlow's Gaussian-product guidance at several weights w. Reports, per setting,
// the fraction of samples the classifier assigns to the requested class and the classifier's
// mean confidence in it. Prints a markdown table (docs/benchmarks.md).
//
//   build/bench/tarflow_guidance MODEL.h5 [per_class=20] [weights=0,0.5,1,2,4] [threads=0]
//                                [data=/usr/share/datasets/fashion-mnist] [temperature=1]
//                                [denoise=0]   (1: the Tweedie step after sampling, with the
//                                               model's training noise; both are reported)
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "bench_util.h"
#include "nfkit/core/idx.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/images.h"
#include "nfkit/flows/tarflow.h"

using namespace nfkit;

namespace {

// Pixels 0..255 (any shape [N, ...]) -> classifier input [N, 784] in [0, 1].
torch::Tensor features(const torch::Tensor& px) { return px.reshape({px.size(0), -1}).to(torch::kFloat32) / 255.0; }

torch::nn::Sequential train_classifier(const torch::Tensor& x, const torch::Tensor& y, int64_t epochs) {
  torch::manual_seed(7);
  torch::nn::Sequential net(torch::nn::Linear(x.size(1), 256), torch::nn::ReLU(), torch::nn::Linear(256, 10));
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-3));
  const int64_t N = x.size(0), batch = 128;
  for (int64_t e = 0; e < epochs; ++e) {
    const auto perm = torch::randperm(N, torch::kInt64);
    for (int64_t i = 0; i + batch <= N; i += batch) {
      const auto idx = perm.narrow(0, i, batch);
      opt.zero_grad();
      auto loss = torch::nn::functional::cross_entropy(net->forward(x.index_select(0, idx)), y.index_select(0, idx));
      loss.backward();
      opt.step();
    }
  }
  net->eval();
  return net;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: tarflow_guidance MODEL.h5 [per_class] [weights] [threads] [data] [temperature]\n");
    return 2;
  }
  try {
    const std::string path = argv[1];
    const int64_t per_class = argc > 2 ? std::stoll(argv[2]) : 20;
    const auto weights = bench::double_list(argc > 3 ? argv[3] : "0,0.5,1,2,4");
    set_threads(argc > 4 ? std::stoi(argv[4]) : 0);
    const std::string dir = argc > 5 ? argv[5] : "/usr/share/datasets/fashion-mnist";
    const double temperature = argc > 6 ? std::stod(argv[6]) : 1.0;
    const bool denoise = argc > 7 && std::string(argv[7]) == "1";

    auto lf = load_flow(path);
    lf.flow->eval();
    auto tar = std::dynamic_pointer_cast<TarFlow>(lf.flow->transform());
    if (!tar) throw std::runtime_error(path + " is not a transformer flow");
    const int64_t K = tar->options().num_classes();
    if (K != 10) throw std::runtime_error(path + " is not a 10-class conditional model (num_classes " + std::to_string(K) + ")");

    const auto t0 = std::chrono::steady_clock::now();
    const auto xtr = features(read_idx(dir + "/train-images-idx3-ubyte.gz"));
    const auto ytr = read_idx(dir + "/train-labels-idx1-ubyte.gz").to(torch::kInt64);
    const auto xte = features(read_idx(dir + "/t10k-images-idx3-ubyte.gz"));
    const auto yte = read_idx(dir + "/t10k-labels-idx1-ubyte.gz").to(torch::kInt64);
    auto clf = train_classifier(xtr, ytr, 5);
    torch::NoGradGuard ng;
    const double test_acc = clf->forward(xte).argmax(1).eq(yte).to(torch::kFloat64).mean().item<double>();
    std::printf("model %s; judge: MLP 784-256-10 trained %.0f s on the training images, test accuracy %.4f\n",
                path.c_str(), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), test_acc);
    std::printf("%lld samples per class, temperature %g, sequential sampler\n\n", (long long)per_class, temperature);
    const double noise_var = training_noise_variance(lf.metadata.value("noise_sigma", 0.0));
    if (denoise) std::printf("denoised columns: x + s^2 grad log q(x), s^2 = %g\n\n", noise_var);
    std::printf("| guidance | w | samples classified as their label | mean confidence in the label | sampling [s] |%s\n",
                denoise ? " denoised: classified as label | confidence | step mean / max |" : "");
    std::printf("|---|---|---|---|---|%s\n", denoise ? "---|---|---|" : "");

    const int64_t n = per_class * K;
    const auto labels = torch::arange(n, torch::kInt64) % K;
    const auto ctx = one_hot_labels(labels, K);
    torch::manual_seed(11);
    const auto z = torch::randn({n, tar->dim()}) * temperature;  // the same latents everywhere
    struct Setting {
      const char* name;
      GuidanceKind kind;
      bool anneal;
    };
    const Setting settings[] = {{"cfg", GuidanceKind::kCFG, false},
                                {"cfg, annealed", GuidanceKind::kCFG, true},
                                {"product", GuidanceKind::kProduct, false}};
    for (const auto& s : settings) {
      for (double w : weights) {
        if (w == 0 && (s.kind != GuidanceKind::kCFG || s.anneal)) continue;  // w = 0 is one setting
        SampleOptions so;
        so.guidance = w == 0 ? GuidanceKind::kNone : s.kind;
        so.guidance_weight = w;
        so.guidance_anneal = s.anneal;
        const auto ts = std::chrono::steady_clock::now();
        auto [x, ld] = tar->sample_inverse(z, ctx, so);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
        auto judge = [&](const torch::Tensor& xs) {
          const auto p = torch::softmax(clf->forward(features(model_to_pixels(xs))), 1);
          return std::make_pair(p.argmax(1).eq(labels).to(torch::kFloat64).mean().item<double>(),
                                p.gather(1, labels.unsqueeze(1)).mean().item<double>());
        };
        const auto [acc, conf] = judge(x);
        std::printf("| %s | %g | %.3f | %.3f | %.1f |", w == 0 ? "none" : s.name, w, acc, conf, secs);
        if (denoise) {
          const auto xd = denoise_step(*lf.flow, x, ctx, noise_var);
          const auto [dacc, dconf] = judge(xd);
          const auto step = (xd - x).abs();
          std::printf(" %.3f | %.3f | %.2g / %.2g |", dacc, dconf, step.mean().item<double>(), step.max().item<double>());
        }
        std::printf("\n");
        std::fflush(stdout);
      }
    }
    // The same judge on unguided samples of the null label (the unconditional branch).
    auto [xu, ldu] = tar->sample_inverse(z, torch::zeros({n, K}), SampleOptions{});
    const auto pu = torch::softmax(clf->forward(features(model_to_pixels(xu))), 1).mean(0);
    const double entropy = -(pu * pu.clamp_min(1e-12).log()).sum().item<double>();
    std::printf("\nnull label (unconditional branch): classifier's class frequencies have entropy %.3f nats "
                "(uniform over 10 classes: %.3f)\n", entropy, std::log(10.0));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tarflow_guidance: %s\n", e.what());
    return 1;
  }
  return 0;
}
