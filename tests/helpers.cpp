#include "helpers.h"

#include <fstream>

#include "nfkit/physics/molecule.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/flows/builder.h"
#include "nfkit/core/h5.h"
#include <catch2/catch.hpp>

#include "cli.h"

#include <ftw.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace nfkit::test {

namespace {
std::string& temp_dir() {
  static std::string dir;
  return dir;
}
}  // namespace

CliRun run_nfkit(std::vector<std::string> args) {
  std::ostringstream out, err;
  const int code = nfkit::cli::run_cli(args, out, err);
  return {code, out.str(), err.str()};
}

std::string temp_path(const std::string& name) {
  static std::atomic<int> counter{0};
  if (temp_dir().empty()) {
    char tmpl[] = "/tmp/nfkit-test-XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    if (!d) throw std::runtime_error("cannot create a temporary directory under /tmp");
    temp_dir() = d;
  }
  return temp_dir() + "/" + std::to_string(counter++) + "-" + name;
}

void remove_temp_dir() {
  // POSIX nftw rather than std::filesystem::remove_all: the pip wheels' libtorch.so (2.x)
  // exports its own std::filesystem symbols, and remove_all resolved to them crashes (seen on
  // the CUDA check machine, torch 2.11).
  if (temp_dir().empty()) return;
  ::nftw(
      temp_dir().c_str(),
      [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

void perturb_parameters(torch::nn::Module& m, double scale, uint64_t seed) {
  torch::NoGradGuard ng;
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(seed);
  for (auto& p : m.parameters()) {
    auto noise = at::normal(0.0, scale, p.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat64));
    p.add_(noise.to(p.options()));
  }
}

torch::Tensor brute_force_logabsdet(Transform& t, const torch::Tensor& x0, const torch::Tensor& c) {
  auto x = x0.detach().clone().requires_grad_(true);
  auto z = std::get<0>(t.forward(x, c));
  const int64_t D = x.size(1);
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < D; ++i) {
    auto g = torch::autograd::grad({z.select(1, i).sum()}, {x}, {}, /*retain_graph=*/true,
                                   /*create_graph=*/false, /*allow_unused=*/true)[0];
    rows.push_back(g.defined() ? g : torch::zeros_like(x));
  }
  const auto J = torch::stack(rows, 1);  // [B, D(out), D(in)]
  return std::get<1>(torch::linalg_slogdet(J));
}

std::string python_interpreter() {
  const char* env = std::getenv("NFKIT_TEST_PYTHON");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string("/usr/bin/python3");
}

namespace {
bool same_group(const H5Reader& a, const H5Reader& b, const std::string& group, std::string* what) {
  const auto names = a.list(group);
  if (names != b.list(group)) {
    if (what) *what = "the members of " + group + " differ";
    return false;
  }
  for (const auto& n : names) {
    const std::string child = (group == "/" ? "/" : group + "/") + n;
    bool is_group = true;
    try {
      (void)a.list(child);
    } catch (const Error&) {
      is_group = false;
    }
    if (is_group) {
      if (!same_group(a, b, child, what)) return false;
      continue;
    }
    const auto x = a.read(child), y = b.read(child);
    if (x.scalar_type() != y.scalar_type() || x.sizes() != y.sizes() || !torch::equal(x, y)) {
      if (what) *what = "dataset " + child + " differs";
      return false;
    }
  }
  return true;
}
}  // namespace

bool same_datasets(const std::string& a, const std::string& b, std::string* what) {
  H5Reader ra(a), rb(b);
  return same_group(ra, rb, "/", what);
}

bool run_and_sigkill(const std::vector<std::string>& args, const std::string& watched, int writes) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  std::filesystem::file_time_type last{};
  int seen = 0;
  bool killed = false;
  for (int t = 0; t < 2000 && !killed; ++t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return false;  // it ended on its own
    std::error_code ec;
    const auto when = std::filesystem::last_write_time(watched, ec);
    if (ec || (seen > 0 && when == last)) continue;
    last = when;
    if (++seen >= writes) {
      kill(pid, SIGKILL);
      killed = true;
    }
  }
  if (!killed) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  return killed && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

std::string shell_command(const std::vector<std::string>& args) {
  std::string cmd;
  for (const auto& a : args) cmd += "'" + a + "' ";
  return cmd;
}

int run_python(const std::string& code) {
  const std::string python = python_interpreter();
  if (::access(python.c_str(), X_OK) != 0) return -1;
  const std::string script = temp_path("check.py");
  std::ofstream(script) << code;
  const int rc = std::system((python + " " + script + " > /dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 1;
}

std::string write_text(const std::string& name, const std::string& text) {
  const auto p = temp_path(name);
  std::ofstream(p) << text;
  return p;
}

std::string ala2_pdb() { return std::string(NFKIT_SOURCE_DIR) + "/data/alanine_dipeptide/ala2.pdb"; }
std::string ala2_system() { return std::string(NFKIT_SOURCE_DIR) + "/data/alanine_dipeptide/system.xml"; }

torch::Tensor ala2_batch(int64_t B, double scale, uint64_t seed) {
  const auto x0 = read_pdb(ala2_pdb()).positions().reshape({1, -1});
  auto gen = torch::make_generator<torch::CPUGeneratorImpl>(seed);
  auto noise = at::normal(0.0, scale, {B, x0.size(1)}, gen, torch::TensorOptions().dtype(torch::kFloat64));
  noise[0].zero_();
  return x0 + noise;
}

void check_transform_properties(const TransformPtr& t, const torch::Tensor& x, const torch::Tensor& ctx,
                                double round_trip_tol, double logdet_tol) {
  const int64_t B = x.size(0);
  auto [z, ladj] = t->forward(x, ctx);
  REQUIRE(z.sizes() == x.sizes());
  REQUIRE(ladj.sizes() == torch::IntArrayRef{B});
  REQUIRE(z.dtype() == torch::kFloat64);
  // Not the identity (else the checks below prove little).
  CHECK((z - x).abs().max().item<double>() > 1e-3);
  // Round trip; the inverse log|det| is minus the forward one at the mapped point.
  auto [x2, ladj_inv] = t->inverse(z, ctx);
  CHECK((x2 - x).abs().max().item<double>() <= round_trip_tol);
  CHECK((ladj_inv + ladj).abs().max().item<double>() <= logdet_tol);
  // Brute-force Jacobian.
  const auto bf = brute_force_logabsdet(*t, x, ctx);
  CHECK((bf - ladj).abs().max().item<double>() <= logdet_tol);
  // Gradients reach every parameter.
  t->zero_grad();
  auto [zz, ll] = t->forward(x, ctx);
  if (!t->parameters().empty()) (zz.pow(2).sum() - ll.sum()).backward();
  for (const auto& p : t->named_parameters()) {
    INFO("parameter " << p.key());
    REQUIRE(p.value().grad().defined());
    CHECK(p.value().grad().abs().sum().item<double>() > 0);
  }
  // Checkpoint round trip: config JSON + HDF5 state -> identical outputs.
  const auto path = temp_path("transform.h5");
  {
    H5Writer w(path, "test", 1);
    w.set_attr("/", "config", t->config().dump());
    write_state(w, "/state", *t);
    w.commit();
  }
  H5Reader r(path);
  auto t2 = make_transform(json::parse(r.attr_string("/", "config")));
  t2->to(torch::kFloat64);
  read_state(r, "/state", *t2);
  t2->eval();
  auto [z2, ladj2] = t2->forward(x, ctx);
  CHECK(torch::equal(z2, z.detach()));
  CHECK(torch::equal(ladj2, ladj.detach()));
}

int line_count(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

void check_cli_fails(const std::vector<std::string>& args, int code, const std::string& needle,
                     const std::string& no_file) {
  const auto r = run_nfkit(args);
  INFO(r.err);
  CHECK(r.code == code);
  CHECK(line_count(r.err) == 1);
  CHECK(r.err.find(needle) != std::string::npos);
  CHECK(r.err.find("nfkit: ") == 0);
  if (!no_file.empty()) CHECK_FALSE(std::filesystem::exists(no_file));
}

nlohmann::json last_json(const std::string& out) {
  const auto end = out.find_last_not_of('\n');
  if (end == std::string::npos) return nlohmann::json::parse(out);  // empty: parse reports it
  const auto nl = out.rfind('\n', end);
  const size_t start = nl == std::string::npos ? 0 : nl + 1;
  return nlohmann::json::parse(out.substr(start, end - start + 1));
}

}  // namespace nfkit::test
