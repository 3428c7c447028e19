#include "cli.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>

#include "nfkit/core/error.h"
#include "nfkit/core/runtime.h"

namespace nfkit::cli {
namespace {

std::atomic<bool> g_stop{false};

// Boost.Program_options (1.74) words its errors by replacing placeholders such as %value% with
// the user's text until none is left, so text that itself holds the placeholder never ends
// (found by fuzz/fuzz_config: `--steps %value%` hung). Such text is refused before Boost sees it.
void refuse_placeholders(const std::string& text, const std::string& where) {
  static const std::regex placeholder("%[A-Za-z_]+%");
  std::smatch m;
  if (std::regex_search(text, m, placeholder))
    usage_error(where, "contains '" + m.str() + "'; text of the form %name% is reserved by the option parser");
}

po::options_description global_options() {
  po::options_description g("Global options");
  g.add_options()
      ("seed", po::value<uint64_t>()->default_value(0), "random seed (same seed, same results on CPU)")
      ("threads", po::value<int>()->default_value(0), "CPU threads for tensor math (0 = all cores)")
      ("device", po::value<std::string>()->default_value("cpu"), "cpu, cuda or cuda:N")
      ("json", po::bool_switch(), "print the results as one JSON object on the last stdout line")
      ("quiet", po::bool_switch(), "no progress output")
      ("figure-format", po::value<std::string>()->default_value("png"), "format of the figures commands write: png, pdf or svg")
      ("config", po::value<std::string>(), "read options from FILE (lines 'option = value')")
      ("help,h", "show this help");
  return g;
}

std::string usage_text() {
  std::ostringstream os;
  os << "nfkit " << version_string()
     << " -- exact-likelihood normalizing flows for scientific inference\n\n"
        "Usage: nfkit <area> <verb> [options]\n       nfkit <area> <verb> --help\n\nCommands:\n";
  for (const auto& c : commands()) {
    std::string name = c.area + " " + c.verb;
    os << "  " << name << std::string(name.size() < 16 ? 16 - name.size() : 1, ' ') << c.summary << "\n";
  }
  os << "\nGlobal options (every command): --seed --threads --device --json --quiet --config\n"
        "                                --figure-format png|pdf|svg\n"
        "Exit codes: 0 ok, 1 runtime error, 2 usage error, 130 interrupted (rerun to resume)\n";
  return os.str();
}

const Command* find_command(const std::string& area, const std::string& verb) {
  for (const auto& c : commands())
    if (c.area == area && c.verb == verb) return &c;
  return nullptr;
}

bool area_exists(const std::string& area) {
  for (const auto& c : commands())
    if (c.area == area) return true;
  return false;
}

int run_command(const Command& cmd, const std::vector<std::string>& args, std::ostream& out,
                std::ostream& err, bool run) {
  po::options_description own(cmd.area + " " + cmd.verb + " options");
  own.add(cmd.options());
  po::options_description all;
  all.add(own).add(global_options());
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(all).run(), vm);
  if (vm.count("help")) {
    out << "nfkit " << cmd.area << " " << cmd.verb << " -- " << cmd.summary << "\n\n" << all;
    return 0;
  }
  if (vm.count("config")) {
    const std::string path = vm["config"].as<std::string>();
    std::ifstream file(path);
    if (!file) runtime_error(path, "cannot be read (--config)");
    std::stringstream text;
    text << file.rdbuf();
    std::string line;
    for (int64_t n = 1; std::getline(text, line); ++n) refuse_placeholders(line, path + ":" + std::to_string(n));
    text.clear();
    text.seekg(0);
    po::store(po::parse_config_file(text, all), vm);
  }
  po::notify(vm);

  Context ctx{Globals{}, out, err};
  ctx.globals.seed = vm["seed"].as<uint64_t>();
  ctx.globals.threads = vm["threads"].as<int>();
  if (ctx.globals.threads < 0) usage_error("--threads", "must be >= 0 (0 = all cores)");
  ctx.globals.device = parse_device(vm["device"].as<std::string>());
  ctx.globals.json = vm["json"].as<bool>();
  ctx.globals.quiet = vm["quiet"].as<bool>();
  ctx.globals.figure_format = viz::parse_format(vm["figure-format"].as<std::string>());
  if (!run) return 0;
  set_threads(ctx.globals.threads);
  seed_all(ctx.globals.seed);

  std::ostringstream sink;
  Context run_ctx{ctx.globals, ctx.globals.json ? static_cast<std::ostream&>(sink) : out, err};
  cmd.run(vm, run_ctx);
  if (ctx.globals.json) out << run_ctx.results.dump() << std::endl;
  return 0;
}

}  // namespace

void request_stop() { g_stop = true; }
bool stop_requested() { return g_stop.load(); }
void clear_stop() { g_stop = false; }

const std::vector<Command>& commands() {
  static const std::vector<Command> all{
      flow_train_command(), flow_eval_command(),  flow_sample_command(), flow_demo_command(),
      md_command(),         bg_train_command(),   bg_sample_command(),   bg_eval_command(),
      bg_run_command(),     fab_train_command(),  fab_eval_command(),
      evidence_command(),   pta_compare_command(),
      image_train_command(), image_bpd_command(),  image_sample_command(),
      cfm_train_command(),  cfm_sample_command(),  cfm_eval_command(),
      opf_solve_command(),  opf_dataset_command(), opf_train_command(), opf_eval_command()};
  return all;
}

namespace {

int dispatch(const std::vector<std::string>& args, std::ostream& out, std::ostream& err, bool run) {
  try {
    for (const auto& a : args) refuse_placeholders(a, "argument '" + a + "'");
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
      (args.empty() ? err : out) << usage_text();
      return args.empty() ? 2 : 0;
    }
    if (args[0] == "--version") {
      out << "nfkit " << version_string() << "\n";
      return 0;
    }
    const std::string& area = args[0];
    if (!area_exists(area)) usage_error("nfkit", "unknown command '" + area + "'; see nfkit --help");
    if (const Command* single = find_command(area, ""))  // one-word commands: nfkit md
      return run_command(*single, std::vector<std::string>(args.begin() + 1, args.end()), out, err, run);
    if (args.size() < 2 || args[1] == "--help" || args[1] == "-h") {
      std::ostream& o = args.size() < 2 ? err : out;
      o << "Usage: nfkit " << area << " <verb> [options]\n\nVerbs:\n";
      for (const auto& c : commands())
        if (c.area == area) o << "  " << c.verb << std::string(12 - std::min<size_t>(11, c.verb.size()), ' ') << c.summary << "\n";
      return args.size() < 2 ? 2 : 0;
    }
    const Command* cmd = find_command(area, args[1]);
    if (!cmd) usage_error("nfkit " + area, "unknown verb '" + args[1] + "'; see nfkit " + area + " --help");
    return run_command(*cmd, std::vector<std::string>(args.begin() + 2, args.end()), out, err, run);
  } catch (const po::error& e) {
    err << "nfkit: " << e.what() << " (see --help)" << std::endl;
    return 2;
  } catch (const Interrupted& e) {
    err << "nfkit: " << e.what() << std::endl;
    return 130;
  } catch (const Error& e) {
    err << "nfkit: " << e.what() << std::endl;
    return e.exit_code();
  } catch (const c10::Error& e) {
    err << "nfkit: torch error: " << e.what_without_backtrace() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    err << "nfkit: " << e.what() << std::endl;
    return 1;
  }
}

}  // namespace

int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  return dispatch(args, out, err, true);
}

int check_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  return dispatch(args, out, err, false);
}

}  // namespace nfkit::cli
