#include "nfkit/core/idx.h"

#include <torch/torch.h>
#include <zlib.h>

#include <cstring>

#include "nfkit/core/error.h"
#include "nfkit/core/files.h"

namespace nfkit {

namespace {
std::string read_all_gz(const std::string& path) {
  // gzopen reads plain files too (transparently), so one path serves both.
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) runtime_error(path, "cannot be opened (missing or unreadable)");
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const int n = gzread(f, buf, sizeof buf);
    if (n < 0) {
      int code = 0;
      const std::string msg = gzerror(f, &code);
      gzclose(f);
      runtime_error(path, "is not a readable gzip or IDX file (" + msg + ")");
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  const int rc = gzclose(f);
  if (rc != Z_OK) runtime_error(path, "is a truncated or corrupt gzip file");
  return out;
}

uint32_t be32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}
}  // namespace

torch::Tensor read_idx(const std::string& path) {
  const std::string bytes = read_all_gz(path);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < 4 || p[0] != 0 || p[1] != 0)
    runtime_error(path, "is not an IDX file (expected the magic 00 00 <type> <ndim>)");
  if (p[2] != 0x08)
    runtime_error(path, "holds IDX type 0x" + std::to_string(p[2]) + "; only unsigned bytes (0x08) are supported");
  const int nd = p[3];
  if (nd < 1 || nd > 4) runtime_error(path, "has " + std::to_string(nd) + " dimensions, expected 1 to 4");
  const size_t header = 4 + 4 * static_cast<size_t>(nd);
  if (bytes.size() < header) runtime_error(path, "is truncated inside the IDX header");
  std::vector<int64_t> dims;
  const size_t data_bytes = bytes.size() - header;
  size_t total = 1;
  for (int i = 0; i < nd; ++i) {
    const uint32_t d = be32(p + 4 + 4 * i);
    if (d == 0) runtime_error(path, "has a zero-length dimension in its IDX header");
    // The product is checked against the data as it grows, so that it cannot overflow (found by
    // fuzz/fuzz_idx: dimensions whose product wrapped around to the file's size).
    if (d > data_bytes / total)
      runtime_error(path, "holds " + std::to_string(data_bytes) + " data bytes, but its IDX header promises more "
                          "(truncated or corrupt)");
    dims.push_back(d);
    total *= d;
  }
  if (bytes.size() - header != total)
    runtime_error(path, "holds " + std::to_string(bytes.size() - header) + " data bytes, the header " +
                            "promises " + std::to_string(total) + " (truncated or corrupt)");
  auto t = torch::empty(dims, torch::kUInt8);
  std::memcpy(t.data_ptr<uint8_t>(), p + header, total);
  return t;
}

void write_idx(const std::string& path, const torch::Tensor& t) {
  if (t.scalar_type() != torch::kUInt8) runtime_error(path, "write_idx takes a uint8 tensor");
  if (t.dim() < 1 || t.dim() > 4) runtime_error(path, "write_idx takes 1 to 4 dimensions");
  std::string raw = {0, 0, 0x08, static_cast<char>(t.dim())};
  for (int64_t i = 0; i < t.dim(); ++i) {
    const auto d = static_cast<uint32_t>(t.size(i));
    raw += static_cast<char>(d >> 24);
    raw += static_cast<char>((d >> 16) & 0xff);
    raw += static_cast<char>((d >> 8) & 0xff);
    raw += static_cast<char>(d & 0xff);
  }
  const auto c = t.contiguous();
  raw.append(reinterpret_cast<const char*>(c.data_ptr<uint8_t>()), static_cast<size_t>(c.numel()));
  const bool gz = path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
  if (!gz) {
    write_file_atomic(path, raw);
    return;
  }
  uLongf cap = compressBound(raw.size()) + 32;
  std::string out(cap, '\0');
  z_stream zs{};
  if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    runtime_error(path, "cannot start gzip compression");
  zs.next_in = reinterpret_cast<Bytef*>(raw.data());
  zs.avail_in = static_cast<uInt>(raw.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&zs, Z_FINISH);
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) runtime_error(path, "gzip compression failed");
  out.resize(zs.total_out);
  write_file_atomic(path, out);
}

}  // namespace nfkit
