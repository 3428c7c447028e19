// Fuzz target: --config files ('option = value' lines) of every command, through the same
// parse and checks as `nfkit <area> <verb> --config FILE` (apps/cli.h: check_cli). The first
// byte picks the command.
#include <sstream>

#include "cli.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& cmds = nfkit::cli::commands();
  const auto& cmd = cmds[data[0] % cmds.size()];
  const std::string path = nfkit::fuzz::write_input("options.cfg", data + 1, size - 1);
  std::vector<std::string> args{cmd.area};
  if (!cmd.verb.empty()) args.push_back(cmd.verb);
  args.insert(args.end(), {"--config", path});
  std::ostringstream out, err;
  const int rc = nfkit::cli::check_cli(args, out, err);  // never throws
  const std::string e = err.str();
  if (rc != 0 && (e.empty() || e.find('\n') != e.size() - 1))
    nfkit::fuzz::finding("exit code without a one-line message", e);
  if (rc != 0 && rc != 1 && rc != 2) nfkit::fuzz::finding("unexpected exit code", std::to_string(rc));
  return 0;
}
