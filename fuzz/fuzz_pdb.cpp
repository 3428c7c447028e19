// Fuzz target: PDB files (physics/molecule.h).
#include "fuzz_common.h"
#include "nfkit/physics/molecule.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = nfkit::fuzz::write_input("molecule.pdb", data, size);
  nfkit::fuzz::expect_clean([&] { (void)nfkit::read_pdb(path); });
  return 0;
}
