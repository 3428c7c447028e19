// Throughput of nfkit's flow matching, for the torchcfm 2-D velocity MLP (3 x 64 SELU, t
// concatenated), batch 512, float32:
//   train   I-CFM training steps through the Trainer (minibatch, N(0, I) source draw, path,
//           velocity, MSE, backward, AdamW) in samples/s;
//   sample  Euler with 100 steps from N(0, I), 10000 samples, in samples/s;
//   ot      the exact minibatch OT pairing of OT-CFM (Hungarian assignment of a 512 x 512
//           squared-distance cost), pairings/s.
// Prints one JSON object per configuration; bench/run_cfm_bench.py compares them with the same
// model and loop in plain PyTorch (bench/cfm_bench_ref.py; scipy's linear_sum_assignment for
// the pairing).
//
//   build/bench/cfm_bench --threads 2 [--steps 300] [--dims 2,16]
#include <torch/torch.h>

#include <chrono>
#include <iostream>

#include "bench_util.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/continuous_flow.h"
#include "nfkit/flows/flow_matching.h"
#include "nfkit/flows/optimal_transport.h"
#include "nfkit/flows/trainer.h"

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int main(int argc, char** argv) {
  int threads = 0;
  int64_t steps = 300, batch = 512, n_sample = 10000, ot_reps = 20;
  std::string dims = "2,16";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--threads") threads = std::stoi(v);
    else if (a == "--steps") steps = std::stoll(v);
    else if (a == "--dims") dims = v;
    else if (a == "--ot-reps") ot_reps = std::stoll(v);
    else {
      std::cerr << "cfm_bench: unknown option " << a << "\n";
      return 2;
    }
  }
  const int used = nfkit::set_threads(threads);
  for (const auto D : nfkit::bench::int_list(dims)) {
    nfkit::seed_all(0);
    const auto data = torch::randn({10000, D}) * 2 + 1;
    auto v = std::make_shared<nfkit::VelocityMLP>(nfkit::VelocityMLPOptions(D));
    auto cnf = std::make_shared<nfkit::ContinuousFlow>(std::make_shared<nfkit::StandardNormal>(D), v);
    const auto cfm = nfkit::CfmOptions();
    nfkit::Objective obj;
    obj.train = data;
    obj.loss = [v, cfm](const torch::Tensor& x1, const torch::Tensor& c) {
      return nfkit::cfm_loss(*v, cfm, torch::randn_like(x1), x1, c);
    };
    obj.validate = [] { return 0.0; };
    auto opts = nfkit::TrainerOptions().batch_size(batch).lr(1e-3).eval_every(1000000)
                    .clip_grad_norm(0.0).quiet(true).seed(1);
    {
      nfkit::Trainer warm(cnf, nfkit::TrainerOptions(opts).steps(20), obj);
      warm.train();
    }
    nfkit::Trainer trainer(cnf, nfkit::TrainerOptions(opts).steps(steps), obj);
    auto t0 = std::chrono::steady_clock::now();
    trainer.train();
    const double train_sps = static_cast<double>(steps * batch) / seconds_since(t0);

    torch::NoGradGuard ng;
    const auto euler = nfkit::OdeOptions().method(nfkit::OdeMethod::kEuler).steps(100);
    const auto z = torch::randn({n_sample, D});
    cnf->transport(z.narrow(0, 0, 512), 0, 1, euler);  // warm-up
    t0 = std::chrono::steady_clock::now();
    cnf->transport(z, 0, 1, euler);
    const double sample_sps = static_cast<double>(n_sample) / seconds_since(t0);

    const auto x0 = torch::randn({batch, D}), x1 = torch::randn({batch, D}) * 2 + 1;
    nfkit::linear_assignment(nfkit::squared_distances(x0, x1));
    t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < ot_reps; ++r) nfkit::linear_assignment(nfkit::squared_distances(x0, x1));
    const double ot_ps = static_cast<double>(ot_reps) / seconds_since(t0);
    std::cout << "{\"impl\": \"nfkit\", \"dim\": " << D << ", \"batch\": " << batch
              << ", \"threads\": " << used << ", \"train_samples_per_s\": " << train_sps
              << ", \"sample_samples_per_s\": " << sample_sps << ", \"ot_pairings_per_s\": " << ot_ps
              << "}" << std::endl;
  }
  return 0;
}
