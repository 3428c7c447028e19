#pragma once
// IDX files (the MNIST / Fashion-MNIST format, LeCun et al.), plain or gzip-compressed.
//
// Header: two zero bytes, a type byte (0x08 = unsigned byte, the only type supported here),
// the number of dimensions, then each dimension as a big-endian uint32; the data follow in
// C order. The file must hold exactly prod(dims) values. A missing, truncated, corrupt or
// unsupported file is a RuntimeError naming the file and what was wrong.
//
//   auto images = nfkit::read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
//   // uint8 [10000, 28, 28]
#include <torch/types.h>

#include <string>

namespace nfkit {

torch::Tensor read_idx(const std::string& path);

/// Writes a uint8 tensor as an IDX file (gzip-compressed when path ends in .gz), atomically.
void write_idx(const std::string& path, const torch::Tensor& t);

}  // namespace nfkit
