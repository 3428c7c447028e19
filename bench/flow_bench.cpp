// Throughput of nfkit flows: training steps (the Trainer: minibatch, NLL, backward, clipping,
// AdamW) and log_prob, in samples/s, for RealNVP, MAF and NSF at D = 2, 16, 64, batch 512,
// float32. Prints one JSON object per configuration; bench/run_flow_bench.py compares them
// with the same architectures in plain PyTorch (bench/flow_bench_ref.py).
//
//   build/bench/flow_bench --threads 2 [--steps 200] [--kinds realnvp,maf,nsf] [--dims 2,16,64]
//                          [--profile PREFIX]
// --profile writes PREFIX-KIND-D.trace.json: a Chrome trace (chrome://tracing, Perfetto) of
// one log_prob call, every ATen operator with its time, to compare with the Python peer's
// (bench/flow_bench_ref.py --profile) operator by operator.
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <chrono>
#include <iostream>

#include "bench_util.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/trainer.h"

namespace {

using nfkit::bench::split;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0;
  int64_t steps = 200, batch = 512, evals = 200;
  std::string kinds = "realnvp,maf,nsf", dims = "2,16,64", profile;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--threads") threads = std::stoi(v);
    else if (a == "--steps") steps = std::stoll(v);
    else if (a == "--evals") evals = std::stoll(v);
    else if (a == "--kinds") kinds = v;
    else if (a == "--dims") dims = v;
    else if (a == "--profile") profile = v;
    else {
      std::cerr << "flow_bench: unknown option " << a << "\n";
      return 2;
    }
  }
  const int used = nfkit::set_threads(threads);
  for (const auto& kind : split(kinds)) {
    for (const auto& dstr : split(dims)) {
      const int64_t D = std::stoll(dstr);
      nfkit::seed_all(0);
      const auto data = torch::randn({4096, D});
      nfkit::FlowRecipe r;
      r.kind = kind;
      r.dim = D;
      r.layers = 4;
      r.hidden = 64;
      auto flow = nfkit::build_flow(r, data);

      // log_prob: warm-up, then timed passes without gradients.
      const auto x = torch::randn({batch, D});
      double lp_sps;
      {
        torch::NoGradGuard ng;
        flow->eval();
        for (int i = 0; i < 10; ++i) flow->log_prob(x);
        // The best of 5 rounds of evals/5 calls (timeit's rule: slower rounds measure other
        // processes, not the code); the Python peer times the same way.
        const int64_t per_round = std::max<int64_t>(1, evals / 5);
        double best = 0;
        for (int round = 0; round < 5; ++round) {
          const auto t0 = std::chrono::steady_clock::now();
          for (int64_t i = 0; i < per_round; ++i) flow->log_prob(x);
          best = std::max(best, static_cast<double>(per_round * batch) / seconds_since(t0));
        }
        lp_sps = best;
        if (!profile.empty()) {
          torch::autograd::profiler::RecordProfile guard(profile + "-" + kind + "-" + dstr +
                                                         ".trace.json");
          flow->log_prob(x);
        }
      }

      // Training: the Trainer, timed over `steps` steps after a 10-step warm-up run.
      nfkit::Objective obj;
      obj.train = data;
      auto opts = nfkit::TrainerOptions().batch_size(batch).lr(1e-3).eval_every(1000000)
                      .clip_grad_norm(10.0).quiet(true).seed(1);
      {
        nfkit::Trainer warm(flow, nfkit::TrainerOptions(opts).steps(10), obj);
        warm.train();
      }
      nfkit::Trainer trainer(flow, nfkit::TrainerOptions(opts).steps(steps), obj);
      const auto t0 = std::chrono::steady_clock::now();
      trainer.train();
      const double train_sps = static_cast<double>(steps * batch) / seconds_since(t0);
      std::cout << "{\"impl\": \"nfkit\", \"kind\": \"" << kind << "\", \"dim\": " << D
                << ", \"batch\": " << batch << ", \"threads\": " << used
                << ", \"train_samples_per_s\": " << train_sps
                << ", \"log_prob_samples_per_s\": " << lp_sps << "}" << std::endl;
    }
  }
  return 0;
}
