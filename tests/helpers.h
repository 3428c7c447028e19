#pragma once
// Shared test utilities: temporary paths, parameter perturbation, brute-force Jacobians.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "nfkit/core/error.h"
#include "nfkit/flows/transform.h"

namespace nfkit::test {

/// A fresh path under this run's temporary directory (unique names).
std::string temp_path(const std::string& name);
/// Removes this run's temporary directory (called once, at the end of the run).
void remove_temp_dir();

/// Adds N(0, scale^2) noise to every parameter, so that zero-initialised (identity) layers
/// become generic bijections.
void perturb_parameters(torch::nn::Module& m, double scale, uint64_t seed);

/// log|det dz/dx| per sample by autograd: D backward passes over the batch (samples are
/// independent), then slogdet of each [D, D] Jacobian.
torch::Tensor brute_force_logabsdet(Transform& t, const torch::Tensor& x, const torch::Tensor& context);

/// Writes text to temp_path(name) and returns the path.
std::string write_text(const std::string& name, const std::string& text);

/// The bundled alanine dipeptide: PDB structure and OpenMM System (absolute paths).
std::string ala2_pdb();
std::string ala2_system();
/// ala2 positions [B, 66] nm: the PDB structure plus N(0, scale^2) noise per row after the first.
torch::Tensor ala2_batch(int64_t B, double scale, uint64_t seed);

/// The generic property test of DESIGN.md over one transform t (float64, eval mode, generic
/// parameters) at inputs x [B, D] (context ctx or undefined):
///   * the map is not the identity, shapes are [B, D] and [B]
///   * round trip inverse(forward(x)) == x within round_trip_tol
///   * inverse log|det| == -forward log|det| at the mapped point, and the forward log|det|
///     equals the brute-force autograd Jacobian's within logdet_tol
///   * gradients reach every parameter
///   * checkpoint round trip: make_transform(config()) + HDF5 state gives identical outputs
/// Any transform, wherever it is defined (flows/, boltzmann/, a user's), runs through it.
void check_transform_properties(const TransformPtr& t, const torch::Tensor& x, const torch::Tensor& ctx,
                                double round_trip_tol, double logdet_tol = 1e-6);

/// The command line in-process (exactly what main() does): exit code, stdout, stderr.
struct CliRun {
  int code;
  std::string out, err;
};
CliRun run_nfkit(std::vector<std::string> args);

/// Runs the program args[0] with args, waits until `watched` has been written `writes` times
/// (its modification time changed writes - 1 times after it appeared; polled every 10 ms, for
/// at most 20 s), then kills it with SIGKILL: true when it was killed that way (false when it
/// ended or the file never changed often enough).
bool run_and_sigkill(const std::vector<std::string>& args, const std::string& watched, int writes);
/// Whether two HDF5 files hold the same datasets (names, dtypes, shapes, values bit for bit),
/// walking every group; attributes (timings, paths) are not compared. On a difference, *what
/// says where.
bool same_datasets(const std::string& a, const std::string& b, std::string* what = nullptr);
/// args as one shell command line (each argument single-quoted).
std::string shell_command(const std::vector<std::string>& args);

/// The Python used for cross-checks: $NFKIT_TEST_PYTHON, else /usr/bin/python3 (Debian's, with
/// python3-torch, h5py, scipy and OpenMM).
std::string python_interpreter();
/// Runs code with python_interpreter() and returns its exit status (-1 if it is absent).
int run_python(const std::string& code);

/// Lines (newlines) in s: an error message is one.
int line_count(const std::string& s);
/// Runs the command line in-process and checks that it fails as users should see it: exit
/// `code`, one line on stderr starting "nfkit: " and containing `needle`, and no file at
/// `no_file` (when not empty).
void check_cli_fails(const std::vector<std::string>& args, int code, const std::string& needle,
                     const std::string& no_file = "");
/// The last non-empty stdout line parsed as JSON (--json puts the results object there).
nlohmann::json last_json(const std::string& out);

}  // namespace nfkit::test
