// Fuzz target: NumPy .npy files (core/npy.h).
#include "fuzz_common.h"
#include "nfkit/core/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = nfkit::fuzz::write_input("array.npy", data, size);
  nfkit::fuzz::expect_clean([&] { (void)nfkit::read_npy(path); });
  return 0;
}
