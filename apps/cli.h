#pragma once
// The `nfkit` command line: one executable, `nfkit <area> <verb> [options]`.
//
// Each subcommand is a Command: its option table (declared once, next to its work) and a
// run function that tests call in-process through run_cli(), exactly as main() does.
// Global options (every subcommand): --seed --threads --device --json --quiet --config
// --figure-format.
// Exit codes: 0 success, 2 usage error (bad option or value), 1 runtime error (files,
// data, numerics), 130 interrupted (progress kept in checkpoints; rerun to resume).
#include <boost/program_options.hpp>
#include <c10/core/Device.h>

#include <functional>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nfkit/viz/figure.h"

namespace nfkit::cli {

namespace po = boost::program_options;
using json = nlohmann::json;

/// Global options, parsed for every subcommand.
struct Globals {
  uint64_t seed = 0;
  int threads = 0;
  c10::Device device{c10::kCPU};
  bool json = false;
  bool quiet = false;
  viz::Format figure_format = viz::Format::kPng;  ///< of every figure a command writes
};

/// What a subcommand sees: globals, output streams, and where to report results.
struct Context {
  Globals globals;
  std::ostream& out;  ///< human-readable results (suppressed by --json)
  std::ostream& err;  ///< progress and warnings
  json results = json::object();  ///< printed as the last stdout line with --json
};

struct Command {
  std::string area, verb, summary;
  std::function<po::options_description()> options;
  std::function<void(const po::variables_map&, Context&)> run;
};

/// All subcommands, in help order.
const std::vector<Command>& commands();

/// The whole command line, in-process. args excludes the program name. Returns the exit
/// code; never throws.
int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
/// run_cli up to the point where the command would start its work: parses the command line
/// and any --config file and checks the global options; returns the exit code (0 when the
/// command would run). The config-file fuzzer drives this (fuzz/fuzz_config.cpp).
int check_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

/// Set (e.g. by a SIGINT handler) to ask long work to stop at the next safe point.
void request_stop();
bool stop_requested();
void clear_stop();

/// Thrown when work stops on request after saving its progress (exit code 130).
struct Interrupted : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Subcommand factories (one source file each).
Command flow_train_command();
Command flow_eval_command();
Command flow_sample_command();
Command flow_demo_command();
Command md_command();
Command bg_train_command();
Command bg_sample_command();
Command bg_eval_command();
Command bg_run_command();
Command fab_train_command();
Command fab_eval_command();
Command evidence_command();
Command pta_compare_command();
Command image_train_command();
Command image_bpd_command();
Command image_sample_command();
Command cfm_train_command();
Command cfm_sample_command();
Command cfm_eval_command();
Command opf_solve_command();
Command opf_dataset_command();
Command opf_train_command();
Command opf_eval_command();

}  // namespace nfkit::cli
