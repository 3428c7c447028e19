#include "nfkit/core/h5.h"

#include <hdf5.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "nfkit/core/error.h"
#include "nfkit/core/files.h"

namespace nfkit {
namespace {

// HDF5 prints its own error stack by default; we report one line instead.
void silence_hdf5() {
  static const bool once = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)once;
}

// Closes an HDF5 handle of any kind at scope exit.
struct Handle {
  hid_t id;
  explicit Handle(hid_t h) : id(h) {}
  ~Handle() {
    if (id >= 0) H5Oclose_any(id);
  }
  static void H5Oclose_any(hid_t h) {
    switch (H5Iget_type(h)) {
      case H5I_GROUP: H5Gclose(h); break;
      case H5I_DATASET: H5Dclose(h); break;
      case H5I_DATASPACE: H5Sclose(h); break;
      case H5I_DATATYPE: H5Tclose(h); break;
      case H5I_ATTR: H5Aclose(h); break;
      case H5I_GENPROP_LST: H5Pclose(h); break;
      default: break;
    }
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
};

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
  runtime_error(path, msg);
}

bool link_exists(hid_t file, const std::string& object) {
  if (object == "/" || object.empty()) return true;
  // Check each prefix so that a missing parent is not an HDF5 error.
  size_t pos = 0;
  while (true) {
    pos = object.find('/', pos + 1);
    const std::string prefix = object.substr(0, pos);
    if (!prefix.empty() && prefix != "/" && H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0)
      return false;
    if (pos == std::string::npos) return true;
  }
}

hid_t open_object(hid_t file, const std::string& path, const std::string& object) {
  if (!link_exists(file, object)) fail(path, "has no object '" + object + "'");
  hid_t o = H5Oopen(file, object.c_str(), H5P_DEFAULT);
  if (o < 0) fail(path, "cannot open object '" + object + "'");
  return o;
}

struct Obj {  // H5Oopen'd object
  hid_t id;
  explicit Obj(hid_t h) : id(h) {}
  ~Obj() {
    if (id >= 0) H5Oclose(id);
  }
};

}  // namespace

// ---------------------------------------------------------------- reader

H5Reader::H5Reader(const std::string& path) : path_(path) {
  silence_hdf5();
  if (::access(path.c_str(), R_OK) != 0) fail(path, "cannot be read (missing file?)");
  if (H5Fis_hdf5(path.c_str()) <= 0) fail(path, "is not an HDF5 file");
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file_ < 0) fail(path, "cannot be opened as HDF5 (corrupt file?)");
}

H5Reader::~H5Reader() {
  if (file_ >= 0) H5Fclose(file_);
}

int64_t H5Reader::expect_format(const std::string& kind, int64_t max_version) const {
  if (!has_attr("/", "nfkit_format") || !has_attr("/", "format_version"))
    fail(path_, "is not an nfkit file (no nfkit_format/format_version attributes), expected a '" +
                    kind + "' file");
  const std::string got = attr_string("/", "nfkit_format");
  if (got != kind) fail(path_, "is an nfkit '" + got + "' file, but a '" + kind + "' file is expected");
  const int64_t v = attr_int("/", "format_version");
  if (v < 1 || v > max_version)
    fail(path_, "has " + kind + " format_version " + std::to_string(v) +
                    ", but this nfkit reads versions 1 to " + std::to_string(max_version) +
                    " (a newer nfkit wrote it?)");
  return v;
}

bool H5Reader::exists(const std::string& object) const { return link_exists(file_, object); }

std::vector<std::string> H5Reader::list(const std::string& group) const {
  Obj g(open_object(file_, path_, group));
  H5G_info_t info;
  if (H5Gget_info(g.id, &info) < 0) fail(path_, "'" + group + "' is not a group");
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t n = H5Lget_name_by_idx(g.id, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0,
                                         H5P_DEFAULT);
    if (n < 0) fail(path_, "cannot list the members of '" + group + "' (corrupt file?)");
    std::string s(static_cast<size_t>(n), '\0');
    H5Lget_name_by_idx(g.id, ".", H5_INDEX_NAME, H5_ITER_INC, i, s.data(), n + 1, H5P_DEFAULT);
    names.push_back(s);
  }
  return names;
}

std::vector<int64_t> H5Reader::shape(const std::string& dataset) const {
  if (!link_exists(file_, dataset)) fail(path_, "has no dataset '" + dataset + "'");
  Handle d(H5Dopen2(file_, dataset.c_str(), H5P_DEFAULT));
  if (d.id < 0) fail(path_, "'" + dataset + "' is not a dataset");
  Handle space(H5Dget_space(d.id));
  const int rank = H5Sget_simple_extent_ndims(space.id);
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(rank, 0)));
  H5Sget_simple_extent_dims(space.id, dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

torch::Tensor H5Reader::read(const std::string& dataset) const {
  const auto shape_v = shape(dataset);
  Handle d(H5Dopen2(file_, dataset.c_str(), H5P_DEFAULT));
  Handle type(H5Dget_type(d.id));
  const H5T_class_t cls = H5Tget_class(type.id);
  torch::Dtype dtype;
  hid_t mem;
  if (cls == H5T_FLOAT) {
    const bool single = H5Tget_size(type.id) <= 4;
    dtype = single ? torch::kFloat32 : torch::kFloat64;
    mem = single ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE;
  } else if (cls == H5T_INTEGER && H5Tget_size(type.id) == 1 && H5Tget_sign(type.id) == H5T_SGN_NONE) {
    dtype = torch::kByte;  // 8-bit pixels stay 8-bit
    mem = H5T_NATIVE_UCHAR;
  } else if (cls == H5T_INTEGER) {
    dtype = torch::kInt64;
    mem = H5T_NATIVE_INT64;
  } else {
    fail(path_, "dataset '" + dataset + "' is not numeric (expected float or integer data)");
  }
  // A shape the stored data cannot back (a truncated or crafted file) is refused before the
  // allocation (found by fuzz/fuzz_h5: an unwritten dataset of 10^15 values). Filtered
  // (compressed) data may be smaller than its shape; a failed allocation is then the error.
  double need = static_cast<double>(H5Tget_size(type.id));
  std::string dims;
  for (const auto n : shape_v) {
    need *= static_cast<double>(n);
    dims += (dims.empty() ? "" : ", ") + std::to_string(n);
  }
  Handle dcpl(H5Dget_create_plist(d.id));
  const hsize_t stored = H5Dget_storage_size(d.id);
  if (need > 0 && H5Pget_nfilters(dcpl.id) == 0 && static_cast<double>(stored) < need)
    fail(path_, "dataset '" + dataset + "' stores " + std::to_string(stored) + " bytes, less than its shape [" + dims +
                    "] needs (truncated or corrupt file?)");
  torch::Tensor t;
  try {
    t = torch::empty(shape_v, torch::TensorOptions().dtype(dtype));
  } catch (const c10::Error&) {
    fail(path_, "dataset '" + dataset + "' of shape [" + dims + "] is too large to read into memory");
  }
  if (t.numel() > 0 && H5Dread(d.id, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()) < 0)
    fail(path_, "cannot read dataset '" + dataset + "' (corrupt file?)");
  return t;
}

bool H5Reader::has_attr(const std::string& object, const std::string& name) const {
  if (!link_exists(file_, object)) return false;
  return H5Aexists_by_name(file_, object.c_str(), name.c_str(), H5P_DEFAULT) > 0;
}

namespace {
hid_t open_attr(hid_t file, const std::string& path, const std::string& object,
                const std::string& name) {
  if (!link_exists(file, object) ||
      H5Aexists_by_name(file, object.c_str(), name.c_str(), H5P_DEFAULT) <= 0)
    fail(path, "has no attribute '" + name + "' on '" + object + "'");
  return H5Aopen_by_name(file, object.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT);
}
}  // namespace

std::string H5Reader::attr_string(const std::string& object, const std::string& name) const {
  Handle a(open_attr(file_, path_, object, name));
  Handle type(H5Aget_type(a.id));
  if (H5Tget_class(type.id) != H5T_STRING)
    fail(path_, "attribute '" + name + "' on '" + object + "' is not a string");
  if (H5Tis_variable_str(type.id) > 0) {
    char* buf = nullptr;
    Handle mem(H5Tcopy(H5T_C_S1));
    H5Tset_size(mem.id, H5T_VARIABLE);
    H5Tset_cset(mem.id, H5Tget_cset(type.id));
    if (H5Aread(a.id, mem.id, &buf) < 0) fail(path_, "cannot read attribute '" + name + "'");
    std::string s = buf ? buf : "";
    H5free_memory(buf);
    return s;
  }
  const size_t n = H5Tget_size(type.id);
  std::string s(n, '\0');
  Handle mem(H5Tcopy(H5T_C_S1));
  H5Tset_size(mem.id, n);
  H5Tset_cset(mem.id, H5Tget_cset(type.id));
  if (H5Aread(a.id, mem.id, s.data()) < 0) fail(path_, "cannot read attribute '" + name + "'");
  s.resize(std::strlen(s.c_str()));
  return s;
}

int64_t H5Reader::attr_int(const std::string& object, const std::string& name) const {
  Handle a(open_attr(file_, path_, object, name));
  Handle type(H5Aget_type(a.id));
  if (H5Tget_class(type.id) != H5T_INTEGER)
    fail(path_, "attribute '" + name + "' on '" + object + "' is not an integer");
  int64_t v = 0;
  if (H5Aread(a.id, H5T_NATIVE_INT64, &v) < 0) fail(path_, "cannot read attribute '" + name + "'");
  return v;
}

double H5Reader::attr_double(const std::string& object, const std::string& name) const {
  Handle a(open_attr(file_, path_, object, name));
  Handle type(H5Aget_type(a.id));
  const auto cls = H5Tget_class(type.id);
  if (cls != H5T_FLOAT && cls != H5T_INTEGER)
    fail(path_, "attribute '" + name + "' on '" + object + "' is not a number");
  double v = 0;
  if (H5Aread(a.id, H5T_NATIVE_DOUBLE, &v) < 0) fail(path_, "cannot read attribute '" + name + "'");
  return v;
}

// ---------------------------------------------------------------- writer

H5Writer::H5Writer(const std::string& path, const std::string& kind, int64_t version)
    : path_(path), tmp_(path + ".tmp-" + std::to_string(::getpid())) {
  silence_hdf5();
  remove_stale_temporaries(path);
  file_ = H5Fcreate(tmp_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file_ < 0) fail(path, "cannot be written (directory missing or not writable?)");
  set_attr("/", "nfkit_format", kind);
  set_attr("/", "format_version", version);
}

H5Writer::~H5Writer() {
  if (!committed_) {
    if (file_ >= 0) H5Fclose(file_);
    std::remove(tmp_.c_str());
  }
}

void H5Writer::group(const std::string& group) {
  if (group.empty() || group == "/") return;
  size_t pos = 0;
  while (true) {
    pos = group.find('/', pos + 1);
    const std::string prefix = group.substr(0, pos);
    if (!prefix.empty() && prefix != "/" && H5Lexists(file_, prefix.c_str(), H5P_DEFAULT) <= 0) {
      hid_t g = H5Gcreate2(file_, prefix.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      if (g < 0) fail(path_, "cannot create group '" + prefix + "'");
      H5Gclose(g);
    }
    if (pos == std::string::npos) return;
  }
}

void H5Writer::write(const std::string& dataset, const torch::Tensor& tensor) {
  NFKIT_ASSERT(tensor.defined(), "H5Writer::write of undefined tensor " + dataset);
  auto t = tensor.detach().to(torch::kCPU);
  hid_t mem;
  hid_t file_type;
  switch (t.scalar_type()) {
    case torch::kFloat32: mem = file_type = H5T_NATIVE_FLOAT; break;
    case torch::kFloat64: mem = file_type = H5T_NATIVE_DOUBLE; break;
    case torch::kByte: mem = file_type = H5T_NATIVE_UCHAR; break;
    case torch::kBFloat16:
    case torch::kFloat16:
      t = t.to(torch::kFloat32);
      mem = file_type = H5T_NATIVE_FLOAT;
      break;
    default:
      t = t.to(torch::kInt64);
      mem = file_type = H5T_NATIVE_INT64;
  }
  t = t.contiguous();
  const auto slash = dataset.find_last_of('/');
  if (slash != std::string::npos && slash > 0) group(dataset.substr(0, slash));
  std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
  Handle space(t.dim() == 0 ? H5Screate(H5S_SCALAR)
                            : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  Handle d(H5Dcreate2(file_, dataset.c_str(), file_type, space.id, H5P_DEFAULT, H5P_DEFAULT,
                      H5P_DEFAULT));
  if (d.id < 0) fail(path_, "cannot create dataset '" + dataset + "'");
  if (t.numel() > 0 && H5Dwrite(d.id, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()) < 0)
    fail(path_, "cannot write dataset '" + dataset + "' (disk full?)");
}

namespace {
void write_attr(hid_t file, const std::string& path, const std::string& object,
                const std::string& name, hid_t type, const void* data) {
  if (H5Aexists_by_name(file, object.c_str(), name.c_str(), H5P_DEFAULT) > 0)
    H5Adelete_by_name(file, object.c_str(), name.c_str(), H5P_DEFAULT);
  Handle space(H5Screate(H5S_SCALAR));
  Handle a(H5Acreate_by_name(file, object.c_str(), name.c_str(), type, space.id, H5P_DEFAULT,
                             H5P_DEFAULT, H5P_DEFAULT));
  if (a.id < 0 || H5Awrite(a.id, type, data) < 0)
    fail(path, "cannot write attribute '" + name + "' on '" + object + "'");
}
}  // namespace

void H5Writer::set_attr(const std::string& object, const std::string& name,
                        const std::string& v) {
  group(object);
  // Variable-length UTF-8 string: what h5py writes for str attributes, read back as str.
  Handle type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.id, H5T_VARIABLE);
  H5Tset_cset(type.id, H5T_CSET_UTF8);
  const char* p = v.c_str();
  write_attr(file_, path_, object, name, type.id, &p);
}

void H5Writer::set_attr(const std::string& object, const std::string& name, const char* v) {
  set_attr(object, name, std::string(v));
}

void H5Writer::set_attr(const std::string& object, const std::string& name, int64_t v) {
  group(object);
  write_attr(file_, path_, object, name, H5T_NATIVE_INT64, &v);
}

void H5Writer::set_attr(const std::string& object, const std::string& name, double v) {
  group(object);
  write_attr(file_, path_, object, name, H5T_NATIVE_DOUBLE, &v);
}

void H5Writer::commit() {
  NFKIT_ASSERT(!committed_, "H5Writer::commit called twice for " + path_);
  if (H5Fclose(file_) < 0) {
    file_ = -1;
    fail(path_, "cannot be closed (disk full?)");
  }
  file_ = -1;
  try {
    sync_file(tmp_);
  } catch (const Error&) {
    std::remove(tmp_.c_str());
    throw;
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    std::remove(tmp_.c_str());
    fail(path_, "cannot be renamed into place from " + tmp_);
  }
  committed_ = true;
}

}  // namespace nfkit
