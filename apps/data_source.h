#pragma once
// Data sources of the command line (--data SRC):
//   * a built-in density name (flows/toy_densities.h: gmm, rings, ..., moons): n samples
//     drawn with the run's seed, and the exact density kept for comparison;
//   * file.csv: one sample per row, numbers only, an optional header line;
//   * file.h5:/dataset: a 2-D numeric dataset [N, D] (a 1-D one is [N, 1]).
// Bad sources give one-line errors naming the file, line and column.
#include <torch/types.h>

#include <memory>
#include <string>

#include "nfkit/flows/toy_densities.h"

namespace nfkit::cli {

struct DataSource {
  torch::Tensor x;                     ///< float64 [N, D]
  std::string description;             ///< for messages and metadata
  std::unique_ptr<ToyDensity> truth;   ///< set for built-in densities
};

/// Loads SRC; n is the sample count for built-ins. `option` names the option in messages.
DataSource load_data(const std::string& src, int64_t n, const std::string& option = "--data");

/// Parses CSV text (exposed for tests); `name` is used in messages.
torch::Tensor parse_csv(const std::string& text, const std::string& name);

}  // namespace nfkit::cli
