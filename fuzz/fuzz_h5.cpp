// Fuzz target: nfkit's HDF5 format checks on crafted files.
//
// The input is not the file's bytes (that would fuzz the HDF5 library, not nfkit) but a recipe
// for a structurally valid HDF5 file: the target builds the file with the HDF5 API and hands it
// to every reader of an nfkit format (chains, samples, trajectories, flow / continuous-flow /
// one-step checkpoints, Boltzmann generators, OPF datasets and models, --data file.h5:/x).
// Seeds are recipes of real files (scripts/fuzz converts them with fuzz/h5_recipe.py), so the
// mutations are files that are almost right: a dataset of another shape or type, an attribute
// missing, of another type, or an array where a scalar is expected, a model config changed.
//
// Recipe: records until the input ends, each
//   u8 op   even: dataset, odd: attribute
//   dataset:   str8 path, u8 type (low 3 bits: f32 f64 i64 u8 i32 i8 f16-as-f32 string;
//              bit 7: chunked and never written, with u32 dims, so a crafted shape can be huge),
//              u8 rank (% 5), rank dims (u16, or u32 when chunked), the data (zero-filled if short)
//   attribute: str8 object, str8 name, u8 type (% 4: fixed string, int64, double, variable
//              string), for numbers u8 count (0 scalar, else a 1-D array of count % 5 values),
//              then the value: u32 length + bytes for strings, 8 bytes per number
#include <hdf5.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "data_source.h"
#include "fuzz_common.h"
#include "nfkit/boltzmann/md.h"
#include "nfkit/boltzmann/pipeline.h"
#include "nfkit/flows/checkpoint.h"
#include "nfkit/inference/chains.h"
#include "nfkit/opf/dataset.h"
#include "nfkit/opf/model.h"
#include "nfkit/physics/dc_network.h"
#include "nfkit/physics/power_case.h"

namespace {

struct Input {
  const uint8_t* p;
  size_t n;
  bool empty() const { return n == 0; }
  uint64_t uint(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(n ? (--n, *p++) : 0) << (8 * i);
    return v;
  }
  std::string str(size_t len) {
    len = std::min(len, n);
    std::string s(reinterpret_cast<const char*>(p), len);
    p += len;
    n -= len;
    return s;
  }
  void fill(void* dst, size_t len) {
    const size_t k = std::min(len, n);
    std::memcpy(dst, p, k);
    std::memset(static_cast<char*>(dst) + k, 0, len - k);
    p += k;
    n -= k;
  }
};

hid_t lcpl() {
  static const hid_t l = [] {
    hid_t h = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(h, 1);
    return h;
  }();
  return l;
}

hid_t string_type(size_t size) {  // size 0: variable length
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, size ? size : H5T_VARIABLE);
  return t;
}

void add_dataset(hid_t file, Input& in) {
  const std::string path = in.str(in.uint(1));
  const int type = static_cast<int>(in.uint(1));
  const bool lazy = type & 0x80;
  const int rank = static_cast<int>(in.uint(1) % 5);
  std::vector<hsize_t> dims(rank);
  uint64_t count = 1;
  for (auto& d : dims) {
    d = in.uint(lazy ? 4 : 2);
    count *= std::max<hsize_t>(d, 1);
  }
  if (!lazy && count > (1u << 18)) return;
  hid_t ftype, mtype;
  size_t elem;
  bool own_type = false;
  switch (type & 7) {
    case 0: ftype = mtype = H5T_NATIVE_FLOAT; elem = 4; break;
    case 1: ftype = mtype = H5T_NATIVE_DOUBLE; elem = 8; break;
    case 2: ftype = mtype = H5T_NATIVE_INT64; elem = 8; break;
    case 3: ftype = mtype = H5T_NATIVE_UCHAR; elem = 1; break;
    case 4: ftype = mtype = H5T_NATIVE_INT32; elem = 4; break;
    case 5: ftype = mtype = H5T_NATIVE_SCHAR; elem = 1; break;
    case 6: ftype = H5T_IEEE_F32BE; mtype = H5T_NATIVE_FLOAT; elem = 4; break;
    default: ftype = mtype = string_type(8); elem = 8; own_type = true; break;
  }
  hid_t space = rank ? H5Screate_simple(rank, dims.data(), nullptr) : H5Screate(H5S_SCALAR);
  hid_t dcpl = H5P_DEFAULT;
  if (lazy && rank) {
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    std::vector<hsize_t> chunk(rank, 1);
    H5Pset_chunk(dcpl, rank, chunk.data());
  }
  hid_t d = space >= 0 ? H5Dcreate2(file, path.c_str(), ftype, space, lcpl(), dcpl, H5P_DEFAULT) : -1;
  if (d >= 0 && !lazy) {
    std::vector<char> buf(count * elem);
    if (rank && std::any_of(dims.begin(), dims.end(), [](hsize_t x) { return x == 0; })) buf.clear();
    in.fill(buf.data(), buf.size());
    if (!buf.empty()) H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
  }
  if (d >= 0) H5Dclose(d);
  if (dcpl != H5P_DEFAULT) H5Pclose(dcpl);
  if (space >= 0) H5Sclose(space);
  if (own_type) H5Tclose(ftype);
}

void add_attribute(hid_t file, Input& in) {
  std::string object = in.str(in.uint(1));
  const std::string name = in.str(in.uint(1));
  const int type = static_cast<int>(in.uint(1) % 4);
  if (object.empty()) object = "/";
  if (object != "/" && H5Lexists(file, object.c_str(), H5P_DEFAULT) <= 0) {
    hid_t g = H5Gcreate2(file, object.c_str(), lcpl(), H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return;
    H5Gclose(g);
  }
  if (H5Aexists_by_name(file, object.c_str(), name.c_str(), H5P_DEFAULT) > 0)
    H5Adelete_by_name(file, object.c_str(), name.c_str(), H5P_DEFAULT);
  hid_t space, atype, mtype;
  std::vector<char> buf;
  std::string text;
  const char* vptr = nullptr;
  if (type == 0 || type == 3) {
    text = in.str(in.uint(4));
    space = H5Screate(H5S_SCALAR);
    atype = mtype = string_type(type == 0 ? std::max<size_t>(text.size(), 1) : 0);
    vptr = text.c_str();
  } else {
    const hsize_t count = in.uint(1) % 5;
    space = count ? H5Screate_simple(1, &count, nullptr) : H5Screate(H5S_SCALAR);
    atype = mtype = H5Tcopy(type == 1 ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE);
    buf.resize(std::max<hsize_t>(count, 1) * 8);
    in.fill(buf.data(), buf.size());
  }
  hid_t a = H5Acreate_by_name(file, object.c_str(), name.c_str(), atype, space, H5P_DEFAULT,
                              H5P_DEFAULT, H5P_DEFAULT);
  if (a >= 0) {
    if (type == 3) H5Awrite(a, mtype, &vptr);
    else if (type == 0) H5Awrite(a, mtype, text.c_str());
    else H5Awrite(a, mtype, buf.data());
    H5Aclose(a);
  }
  H5Tclose(atype);
  H5Sclose(space);
}

const nfkit::DcNetwork& network() {  // the OPF model reader needs the case it was made for
  static const nfkit::DcNetwork net(
      nfkit::read_matpower_case(std::string(NFKIT_SOURCE_DIR) + "/data/matpower/pglib/pglib_opf_case14_ieee.m"),
      nfkit::DcConvention::kMatpower);
  return net;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  (void)network();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = nfkit::fuzz::scratch_dir() + "/crafted.h5";
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) std::abort();
  Input in{data, size};
  for (int records = 0; !in.empty() && records < 256; ++records) {
    if (in.uint(1) % 2 == 0) add_dataset(file, in);
    else add_attribute(file, in);
  }
  if (H5Fclose(file) < 0) std::abort();

  using nfkit::fuzz::expect_clean;
  expect_clean([&] { (void)nfkit::read_chains(path); });
  expect_clean([&] { (void)nfkit::read_samples(path, 0); });
  expect_clean([&] { (void)nfkit::read_samples(path, 22); });
  expect_clean([&] { (void)nfkit::read_trajectory(path, 22); });
  expect_clean([&] { (void)nfkit::load_flow(path); });
  expect_clean([&] { (void)nfkit::load_continuous_flow(path); });
  expect_clean([&] { (void)nfkit::load_one_step_generator(path); });
  expect_clean([&] { (void)nfkit::load_generator(path); });
  expect_clean([&] { (void)nfkit::OpfDataset::read(path); });
  expect_clean([&] { (void)nfkit::OpfModel::load(path, network()); });
  expect_clean([&] { (void)nfkit::cli::load_data(path + ":/x", 0); });
  return 0;
}
