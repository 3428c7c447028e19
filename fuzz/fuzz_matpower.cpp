// Fuzz target: MATPOWER case files (physics/power_case.h), then the DC network built from a
// case that parses (physics/dc_network.h), as `nfkit opf` does.
#include "fuzz_common.h"
#include "nfkit/physics/dc_network.h"
#include "nfkit/physics/power_case.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  nfkit::fuzz::expect_clean([&] {
    const auto pc = nfkit::parse_matpower_case(text, "fuzz.m");
    for (auto conv : {nfkit::DcConvention::kMatpower, nfkit::DcConvention::kPowerModels})
      (void)nfkit::DcNetwork(pc, conv);
  });
  return 0;
}
