// Catch2 runner: tensor math on all cores (torch starts with one here), or on
// $NFKIT_TEST_THREADS when ctest runs several test processes at once on a many-core machine.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdlib>

#include "helpers.h"
#include "nfkit/core/runtime.h"

int main(int argc, char** argv) {
  const char* threads = std::getenv("NFKIT_TEST_THREADS");
  nfkit::set_threads(threads != nullptr ? std::atoi(threads) : 0);
  const int result = Catch::Session().run(argc, argv);
  nfkit::test::remove_temp_dir();
  return result;
}
