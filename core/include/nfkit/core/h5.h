#pragma once
// HDF5 file layer: tensors and attributes in, tensors and attributes out.
//
// Every file nfkit writes carries root attributes `nfkit_format` (a kind such as
// "checkpoint" or "samples") and `format_version` (integer). Readers call expect_format()
// and reject unknown kinds and newer versions with a one-line message naming the file.
//
// Writes are atomic: H5Writer writes to "<path>.tmp-<pid>" and renames onto <path> in
// commit(); a writer destroyed without commit (an exception, an interrupt) removes its
// temporary file, so a crash never leaves a half-written file under the final name.
//
//   nfkit::H5Writer w("samples.h5", "samples", 1);
//   w.write("/x", x);                       // float32, float64 or int64 tensors, any rank
//   w.set_attr("/", "n", int64_t{1000});
//   w.commit();
//
//   nfkit::H5Reader r("samples.h5");
//   r.expect_format("samples", 1);
//   torch::Tensor x = r.read("/x");
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace nfkit {

class H5Reader {
 public:
  /// Opens read-only. Throws RuntimeError naming the file if it is missing or not HDF5.
  explicit H5Reader(const std::string& path);
  ~H5Reader();
  H5Reader(const H5Reader&) = delete;
  H5Reader& operator=(const H5Reader&) = delete;

  const std::string& path() const { return path_; }

  /// Checks root attributes nfkit_format == kind and 1 <= format_version <= max_version;
  /// returns the version. Throws RuntimeError otherwise.
  int64_t expect_format(const std::string& kind, int64_t max_version) const;

  bool exists(const std::string& object) const;
  /// Names of the members of a group, sorted.
  std::vector<std::string> list(const std::string& group) const;

  /// Reads a dataset. Floating data keeps its width (float32 or float64); unsigned 8-bit
  /// integers (image pixels) are read as uint8, other integer data as int64.
  torch::Tensor read(const std::string& dataset) const;
  /// Shape of a dataset without reading it.
  std::vector<int64_t> shape(const std::string& dataset) const;

  bool has_attr(const std::string& object, const std::string& name) const;
  std::string attr_string(const std::string& object, const std::string& name) const;
  int64_t attr_int(const std::string& object, const std::string& name) const;
  double attr_double(const std::string& object, const std::string& name) const;

 private:
  std::string path_;
  int64_t file_ = -1;
};

class H5Writer {
 public:
  /// Starts writing `path` through a temporary file, with root attributes nfkit_format =
  /// kind and format_version = version. Throws RuntimeError naming the file if the
  /// directory is not writable.
  H5Writer(const std::string& path, const std::string& kind, int64_t version);
  ~H5Writer();
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;

  /// Writes a tensor (moved to CPU, made contiguous). Intermediate groups are created.
  /// Supported dtypes: float32, float64, uint8, int64 (bool and int32 are stored as int64).
  void write(const std::string& dataset, const torch::Tensor& t);
  /// Creates a group (and its parents) if missing.
  void group(const std::string& group);

  void set_attr(const std::string& object, const std::string& name, const std::string& v);
  void set_attr(const std::string& object, const std::string& name, const char* v);
  void set_attr(const std::string& object, const std::string& name, int64_t v);
  void set_attr(const std::string& object, const std::string& name, double v);

  /// Flushes, closes and renames the temporary file onto the final path.
  void commit();

 private:
  std::string path_, tmp_;
  int64_t file_ = -1;
  bool committed_ = false;
};

}  // namespace nfkit
