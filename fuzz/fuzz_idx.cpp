// Fuzz target: IDX files, plain and gzip-compressed (core/idx.h). The first byte picks how
// the rest reaches the reader: as a plain file, as raw bytes named .gz (gzip's own checks),
// or gzip-compressed (the IDX checks behind a valid gzip stream).
#include <zlib.h>

#include "fuzz_common.h"
#include "nfkit/core/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int mode = data[0] % 3;
  ++data;
  --size;
  std::string path;
  if (mode < 2) {
    path = nfkit::fuzz::write_input(mode == 0 ? "images.idx" : "raw.gz", data, size);
  } else {
    path = nfkit::fuzz::scratch_dir() + "/images.gz";
    gzFile f = gzopen(path.c_str(), "wb");
    if (!f || (size && gzwrite(f, data, static_cast<unsigned>(size)) != static_cast<int>(size)) ||
        gzclose(f) != Z_OK)
      std::abort();
  }
  nfkit::fuzz::expect_clean([&] {
    const auto t = nfkit::read_idx(path);
    if (t.scalar_type() != torch::kUInt8) nfkit::fuzz::finding("read_idx returned no uint8 tensor", "");
  });
  return 0;
}
