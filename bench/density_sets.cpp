// Writes a benchmark set drawn from a built-in density with an exact log-density, for the fit
// comparison against zuko and plain PyTorch (bench/fit_bench.py):
//   /train [N, D], /test [M, D]  float64 samples (independent draws)
//   /test_log_p [M]              the exact log-density of every test row
//   root attributes density (name), entropy (nats)
// The gap of a model q to the truth is then mean(log p - log q) over the test rows: exact up
// to the Monte-Carlo error of M rows, whatever the density's entropy is known to.
//
//   build/bench/density_sets SPEC N_TRAIN N_TEST SEED OUT.h5
#include <torch/torch.h>

#include <iostream>

#include "nfkit/core/error.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/runtime.h"
#include "nfkit/flows/toy_densities.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::cerr << "usage: density_sets SPEC N_TRAIN N_TEST SEED OUT.h5\n";
    return 2;
  }
  try {
    const auto p = nfkit::make_toy_density(argv[1]);
    const int64_t n_train = std::stoll(argv[2]), n_test = std::stoll(argv[3]);
    const uint64_t seed = std::stoull(argv[4]);
    nfkit::seed_all(nfkit::derive_seed(seed, 11, 0));
    const auto train = p->sample(n_train);
    nfkit::seed_all(nfkit::derive_seed(seed, 11, 1));
    const auto test = p->sample(n_test);
    nfkit::H5Writer w(argv[5], "density_set", 1);
    w.write("/train", train);
    w.write("/test", test);
    w.write("/test_log_p", p->log_prob(test));
    w.set_attr("/", "density", p->name());
    w.set_attr("/", "entropy", p->entropy());
    w.commit();
  } catch (const nfkit::Error& e) {
    std::cerr << "density_sets: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
