// nfkit: the command-line entry point. Everything happens in nfkit::cli::run_cli.
#include <csignal>
#include <iostream>

#include "cli.h"

namespace {
extern "C" void on_interrupt(int) {
  if (nfkit::cli::stop_requested()) std::_Exit(130);  // second Ctrl-C: leave now
  nfkit::cli::request_stop();
}
}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  return nfkit::cli::run_cli(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr);
}
