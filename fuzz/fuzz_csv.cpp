// Fuzz target: sample CSV files (--data file.csv; apps/data_source.h).
#include "data_source.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  nfkit::fuzz::expect_clean([&] {
    const auto x = nfkit::cli::parse_csv(text, "fuzz.csv");
    if (x.dim() != 2 || x.scalar_type() != torch::kFloat64)
      nfkit::fuzz::finding("parse_csv returned no [N, D] float64 tensor", "");
  });
  return 0;
}
