// Catch2 runner: tensor math on all cores (torch starts with one here), float64 by default.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "helpers.h"
#include "nfkit/core/runtime.h"

int main(int argc, char** argv) {
  nfkit::set_threads(0);
  const int result = Catch::Session().run(argc, argv);
  nfkit::test::remove_temp_dir();
  return result;
}
