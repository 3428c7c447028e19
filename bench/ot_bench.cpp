// Exact optimal transport timing for bench/run_ot_bench.py: reads two clouds (.npy, [n, D]),
// solves exact_transport on the squared (optionally periodic) distance and prints one JSON
// line: cost, seconds, solves, candidate pairs.
//
//   build/bench/ot_bench x.npy y.npy [period] [threads] [neighbours] [additions]
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "nfkit/core/npy.h"
#include "nfkit/flows/optimal_transport.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: ot_bench x.npy y.npy [period] [threads]\n");
    return 2;
  }
  const double period = argc > 3 ? std::stod(argv[3]) : 0.0;
  at::set_num_threads(argc > 4 ? std::stoi(argv[4]) : 1);
  const auto x = nfkit::read_npy(argv[1]), y = nfkit::read_npy(argv[2]);
  const auto t0 = std::chrono::steady_clock::now();
  nfkit::ExactTransportOptions opt;
  if (argc > 5) opt.neighbours(std::stoll(argv[5]));
  if (argc > 6) opt.additions(std::stoll(argv[6]));
  const auto plan = nfkit::exact_transport(x.size(0), y.size(0), nfkit::squared_distance_cost(x, y, period), opt);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"cost\": %.17g, \"seconds\": %.4f, \"rounds\": %lld, \"arcs\": %lld}\n", plan.cost, s,
              static_cast<long long>(plan.rounds), static_cast<long long>(plan.arcs));
  return 0;
}
