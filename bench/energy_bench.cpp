// Energy throughput for Boltzmann generators: reduced energies + forces per second of
// alanine dipeptide configurations over OpenMMEnergy's Context pool against a single-Context
// loop (same process, same configurations). Prints one JSON line per measurement.
//
//   build/bench/energy_bench --positions pos.h5 --workers 2 --repeats 3
// (bench/run_energy_bench.py writes pos.h5 and runs the Python OpenMM peer in the same run.)
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "nfkit/core/h5.h"
#include "nfkit/physics/openmm_energy.h"

int main(int argc, char** argv) {
  std::string system = "data/alanine_dipeptide/system.xml", positions, platform = "Reference";
  int workers = 2, repeats = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--system") system = v;
    else if (a == "--positions") positions = v;
    else if (a == "--workers") workers = std::stoi(v);
    else if (a == "--repeats") repeats = std::stoi(v);
    else if (a == "--platform") platform = v;
    else {
      std::cerr << "energy_bench: unknown option " << a << "\n";
      return 2;
    }
  }
  if (positions.empty()) {
    std::cerr << "energy_bench: --positions FILE.h5 (dataset /x [B, 3N] nm) is required\n";
    return 2;
  }
  try {
    nfkit::H5Reader r(positions);
    const auto x = r.read("/x").to(torch::kFloat64).contiguous();
    nfkit::OpenMMEnergy e(system, 300.0, nfkit::OpenMMOptions{platform, workers});
    torch::Tensor f;
    e.evaluate(x.narrow(0, 0, std::min<int64_t>(64, x.size(0))), &f);  // warm up
    auto time = [&](auto&& fn) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    for (int rep = 0; rep < repeats; ++rep) {
      const double ts = time([&] { e.evaluate_serial(x, &f); });
      const double tp = time([&] { e.evaluate(x, &f); });
      std::printf("{\"repeat\": %d, \"configurations\": %lld, \"workers\": %d, \"platform\": \"%s\", "
                  "\"serial_per_s\": %.1f, \"pool_per_s\": %.1f}\n",
                  rep, static_cast<long long>(x.size(0)), workers, platform.c_str(),
                  x.size(0) / ts, x.size(0) / tp);
      std::fflush(stdout);
    }
  } catch (const std::exception& ex) {
    std::cerr << "energy_bench: " << ex.what() << "\n";
    return 1;
  }
  return 0;
}
