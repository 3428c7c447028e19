#pragma once
// NumPy .npy files (format versions 1-3), read without Python.
//
// Supported: little-endian float64 ('<f8'), float32 ('<f4'), int64 ('<i8') and int32 ('<i4')
// in C order; the result keeps float64/float32 and reads integers as int64. Anything else
// (Fortran order, big-endian, object arrays, truncated data) is a RuntimeError naming the file.
//
//   auto density = nfkit::read_npy("data/pta/ng15_30f_fs_hd_ceffyl/density.npy");  // [1, 30, 10000]
#include <torch/types.h>

#include <string>

namespace nfkit {

torch::Tensor read_npy(const std::string& path);

/// Writes a float64, float32 or int64 tensor as a version-1 .npy file (atomically).
void write_npy(const std::string& path, const torch::Tensor& t);

}  // namespace nfkit
