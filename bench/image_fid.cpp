// The one sample-quality number shared by every image generator of nfkit (TARFlow / STARFlow
// from `nfkit image train`, the U-Net continuous flows from `nfkit image train --model cfm`):
// the Frechet distance (Heusel et al., NeurIPS 2017) between Gaussians fitted to the
// penultimate-layer features of an independently trained Fashion-MNIST classifier for the
// generated images and for the test set. Inception features do not exist for 28x28 grey
// images; a small CNN trained here (seeded) stands in, as in the Fashion-MNIST generative
// literature's "FID with a domain classifier".
//
// The classifier (conv 3x3 32 - pool - conv 3x3 64 - pool - 128 ReLU features - 10 logits,
// Adam 1e-3, batch 128, `epochs` epochs on the 60000 training images in model space
// pixel / 128 - 1) is trained once and kept in CLASSIFIER (HDF5, kind fid_classifier); later
// runs load it, so scores from different days share one feature map. Its test accuracy is
// printed.
//
// The Frechet distance is biased upward at finite N, so every sample set is printed beside the
// "data floor": the distance of N training images (which the generators learned from) to the
// test set at the same N. Also printed: the entropy of the classifier's predicted-class
// frequencies over the samples (ln 10 = 2.303 when every class appears equally often; lower
// means missing modes).
//
//   nfkit image sample --model m.h5 -n 5000 --out grid.png --save m.samples.h5 ...
//   build/bench/image_fid [--classifier runs/fid_classifier.h5] [--data DIR] [--threads 2]
//                         [--epochs 3] SAMPLES.h5 [SAMPLES.h5 ...]
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/idx.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/images.h"

using namespace nfkit;

namespace {

struct ClassifierImpl : torch::nn::Module {
  ClassifierImpl() {
    using namespace torch::nn;
    features = register_module(
        "features", Sequential(Conv2d(Conv2dOptions(1, 32, 3).padding(1)), ReLU(), MaxPool2d(2),
                               Conv2d(Conv2dOptions(32, 64, 3).padding(1)), ReLU(), MaxPool2d(2), Flatten(),
                               Linear(64 * 7 * 7, 128), ReLU()));
    head = register_module("head", Linear(128, 10));
  }
  torch::Tensor feature(const torch::Tensor& x) { return features->forward(x); }
  torch::Tensor forward(const torch::Tensor& x) { return head->forward(feature(x)); }
  torch::nn::Sequential features{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Classifier);

// Pixels 0..255 [N, 1, 28, 28] (any integer or float type) -> model space [N, 1, 28, 28].
torch::Tensor to_input(const torch::Tensor& px) {
  return px.reshape({px.size(0), 1, 28, 28}).to(torch::kFloat32) / 128.0 - 1.0;
}

void train_classifier(Classifier& net, const torch::Tensor& x, const torch::Tensor& y, int64_t epochs) {
  torch::manual_seed(11);
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-3));
  const int64_t N = x.size(0), batch = 128;
  net->train();
  for (int64_t e = 0; e < epochs; ++e) {
    const auto perm = torch::randperm(N, torch::kInt64);
    double total = 0;
    int64_t steps = 0;
    for (int64_t i = 0; i + batch <= N; i += batch, ++steps) {
      const auto idx = perm.narrow(0, i, batch);
      opt.zero_grad();
      auto loss = torch::nn::functional::cross_entropy(net->forward(x.index_select(0, idx)), y.index_select(0, idx));
      loss.backward();
      opt.step();
      total += loss.item<double>();
    }
    std::fprintf(stderr, "classifier epoch %lld: training cross-entropy %.4f\n", static_cast<long long>(e + 1),
                 total / static_cast<double>(steps));
  }
  net->eval();
}

// Features and predicted classes of pixels [N, ...], in batches, without gradients.
std::pair<torch::Tensor, torch::Tensor> features_of(Classifier& net, const torch::Tensor& px) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> f, c;
  for (int64_t i = 0; i < px.size(0); i += 1000) {
    const auto x = to_input(px.narrow(0, i, std::min<int64_t>(1000, px.size(0) - i)));
    const auto h = net->feature(x);
    f.push_back(h);
    c.push_back(net->head->forward(h).argmax(1));
  }
  return {torch::cat(f), torch::cat(c)};
}

double class_entropy(const torch::Tensor& classes) {
  const auto p = torch::bincount(classes, {}, 10).to(torch::kFloat64) / static_cast<double>(classes.size(0));
  return -(p * torch::log(p.clamp_min(1e-300))).sum().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  std::string clf_path = "runs/fid_classifier.h5", dir = "/usr/share/datasets/fashion-mnist";
  int threads = 2;
  int64_t epochs = 3;
  std::vector<std::string> sets;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "image_fid: %s needs a value\n", name);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--classifier") clf_path = value("--classifier");
    else if (a == "--data") dir = value("--data");
    else if (a == "--threads") threads = std::stoi(value("--threads"));
    else if (a == "--epochs") epochs = std::stoll(value("--epochs"));
    else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr, "image_fid: unknown option %s (expected --classifier, --data, --threads, --epochs)\n", a.c_str());
      return 2;
    } else sets.push_back(a);
  }
  try {
    set_threads(threads);
    const auto xtr = read_idx(dir + "/train-images-idx3-ubyte.gz");
    const auto ytr = read_idx(dir + "/train-labels-idx1-ubyte.gz").to(torch::kInt64);
    const auto xte = read_idx(dir + "/t10k-images-idx3-ubyte.gz");
    const auto yte = read_idx(dir + "/t10k-labels-idx1-ubyte.gz").to(torch::kInt64);

    Classifier net;
    if (file_exists(clf_path)) {
      H5Reader r(clf_path);
      r.expect_format("fid_classifier", 1);
      read_state(r, "/model", *net);
      net->eval();
      std::fprintf(stderr, "classifier read from %s\n", clf_path.c_str());
    } else {
      const auto t0 = std::chrono::steady_clock::now();
      train_classifier(net, to_input(xtr), ytr, epochs);
      H5Writer w(clf_path, "fid_classifier", 1);
      write_state(w, "/model", *net);
      w.set_attr("/", "epochs", epochs);
      w.commit();
      std::fprintf(stderr, "classifier trained in %.0f s, written to %s\n",
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), clf_path.c_str());
    }
    const auto [fte, cte] = features_of(net, xte);
    const double acc = (cte == yte).to(torch::kFloat64).mean().item<double>();
    std::printf("classifier test accuracy %.4f; test-set class entropy %.3f (ln 10 = %.3f)\n\n", acc,
                class_entropy(cte), std::log(10.0));
    std::printf("| samples | N | Frechet distance to test | data floor (N training images) | class entropy |\n");
    std::printf("|---|---|---|---|---|\n");
    for (const auto& path : sets) {
      H5Reader r(path);
      r.expect_format("image_samples", 1);
      const auto px = r.read("/images");
      const int64_t N = px.size(0);
      if (px.numel() != N * 784) throw std::runtime_error(path + ": /images is not [N, 1, 28, 28]");
      const auto [f, c] = features_of(net, px);
      const auto [ftr, ctr] = features_of(net, xtr.narrow(0, 0, std::min<int64_t>(N, xtr.size(0))));
      std::printf("| %s | %lld | %.3f | %.3f | %.3f |\n", path.c_str(), static_cast<long long>(N),
                  frechet_distance(f, fte), frechet_distance(ftr, fte), class_entropy(c));
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "image_fid: %s\n", e.what());
    return 1;
  }
  return 0;
}
