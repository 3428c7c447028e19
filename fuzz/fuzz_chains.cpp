// Fuzz target: chains CSV files (nfkit evidence --chains file.csv; inference/chains.h).
#include "fuzz_common.h"
#include "nfkit/inference/chains.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = nfkit::fuzz::write_input("chains.csv", data, size);
  nfkit::fuzz::expect_clean([&] { (void)nfkit::read_chains(path); });
  return 0;
}
