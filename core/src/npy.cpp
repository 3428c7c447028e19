#include "nfkit/core/npy.h"

#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "nfkit/core/error.h"
#include "nfkit/core/files.h"

namespace nfkit {
namespace {

std::string dict_value(const std::string& header, const std::string& key, const std::string& path) {
  auto pos = header.find("'" + key + "'");
  if (pos == std::string::npos) runtime_error(path, "npy header has no '" + key + "'");
  pos = header.find(':', pos);
  if (pos == std::string::npos) runtime_error(path, "npy header is malformed");
  return header.substr(pos + 1);
}

}  // namespace

torch::Tensor read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) runtime_error(path, "cannot open the file");
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    runtime_error(path, "not a NumPy .npy file (bad magic)");
  const int major = static_cast<unsigned char>(magic[6]);
  uint32_t header_len = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!in.read(reinterpret_cast<char*>(b), 2)) runtime_error(path, "truncated npy header");
    header_len = b[0] | (b[1] << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (!in.read(reinterpret_cast<char*>(b), 4)) runtime_error(path, "truncated npy header");
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  } else {
    runtime_error(path, "unsupported npy format version " + std::to_string(major));
  }
  if (header_len > (1u << 20)) runtime_error(path, "npy header is implausibly long");
  std::string header(header_len, '\0');
  if (!in.read(header.data(), header_len)) runtime_error(path, "truncated npy header");

  std::smatch m;
  std::string descr_part = dict_value(header, "descr", path);
  static const std::regex descr_re(R"(^\s*'([<>|=])([fi])(\d+)')");
  if (!std::regex_search(descr_part, m, descr_re)) runtime_error(path, "npy descr is not a plain number type");
  const std::string endian = m[1], kind = m[2];
  if (m[3].length() > 2) runtime_error(path, "npy dtype width '" + m[3].str() + "' is not supported (f8, f4, i8, i4)");
  const int width = std::stoi(m[3]);
  if (endian == ">") runtime_error(path, "big-endian npy data is not supported");
  torch::Dtype dtype;
  if (kind == "f" && width == 8) dtype = torch::kFloat64;
  else if (kind == "f" && width == 4) dtype = torch::kFloat32;
  else if (kind == "i" && width == 8) dtype = torch::kInt64;
  else if (kind == "i" && width == 4) dtype = torch::kInt32;
  else runtime_error(path, "npy dtype " + kind + std::to_string(width) + " is not supported (f8, f4, i8, i4)");

  if (dict_value(header, "fortran_order", path).find("False") > 2)
    runtime_error(path, "Fortran-ordered npy data is not supported");
  std::string shape_part = dict_value(header, "shape", path);
  auto open = shape_part.find('('), close = shape_part.find(')');
  if (open == std::string::npos || close == std::string::npos || close < open)
    runtime_error(path, "npy shape is malformed");
  // The data that follow the header bound the shape: checked entry by entry, so that a crafted
  // shape can neither overflow the element count nor ask for a huge allocation (found by
  // fuzz/fuzz_npy, with a dtype width too long for an int).
  const std::streamoff data_start = in.tellg();
  in.seekg(0, std::ios::end);
  const int64_t available = static_cast<int64_t>(in.tellg() - data_start);
  in.seekg(data_start);
  std::vector<int64_t> shape;
  std::stringstream dims(shape_part.substr(open + 1, close - open - 1));
  std::string item;
  int64_t count = 1;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(" ") == std::string::npos) continue;
    size_t used = 0;
    try {
      shape.push_back(std::stoll(item, &used));
    } catch (const std::exception&) {
      runtime_error(path, "npy shape entry '" + item + "' is not an integer");
    }
    if (item.find_first_not_of(" L", used) != std::string::npos)
      runtime_error(path, "npy shape entry '" + item + "' is not an integer");
    if (shape.back() < 0) runtime_error(path, "npy shape has a negative entry");
    if (shape.back() > 0 && count > available / width / shape.back())
      runtime_error(path, "npy data is truncated (the shape promises more than the file's " +
                              std::to_string(available) + " data bytes)");
    count *= shape.back();
  }
  const std::streamsize bytes = static_cast<std::streamsize>(count) * width;
  if (bytes > available)
    runtime_error(path, "npy data is truncated (expected " + std::to_string(bytes) + " bytes)");
  auto t = torch::empty(shape, dtype);
  if (bytes > 0 && !in.read(static_cast<char*>(t.data_ptr()), bytes))
    runtime_error(path, "npy data is truncated (expected " + std::to_string(bytes) + " bytes)");
  if (dtype == torch::kInt32) t = t.to(torch::kInt64);
  return t;
}

void write_npy(const std::string& path, const torch::Tensor& t_in) {
  auto t = t_in.contiguous().cpu();
  std::string descr;
  if (t.scalar_type() == torch::kFloat64) descr = "<f8";
  else if (t.scalar_type() == torch::kFloat32) descr = "<f4";
  else if (t.scalar_type() == torch::kInt64) descr = "<i8";
  else usage_error("write_npy", "dtype must be float64, float32 or int64");
  std::string shape = "(";
  for (int64_t i = 0; i < t.dim(); ++i) shape += std::to_string(t.size(i)) + (t.dim() == 1 ? "," : (i + 1 < t.dim() ? ", " : ""));
  shape += ")";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  out += header;
  out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  write_file_atomic(path, out);
}

}  // namespace nfkit
