#include "nfkit/core/runtime.h"

#include <torch/torch.h>

#include <regex>
#include <thread>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "nfkit/core/error.h"
#include "nfkit/core/version.h"

namespace nfkit {

c10::Device parse_device(const std::string& spec) {
  static const std::regex re("^(cpu|cuda)(:([0-9]+))?$");
  std::smatch m;
  if (!std::regex_match(spec, m, re) || (m[1] == "cpu" && m[2].matched))
    usage_error("--device", "'" + spec + "' is not a device, expected cpu, cuda or cuda:N");
  if (m[1] == "cpu") return c10::Device(c10::kCPU);
  if (!torch::cuda::is_available())
    usage_error("--device", "'" + spec +
                                "' requested, but CUDA is not available (this LibTorch has no "
                                "CUDA support or no GPU is visible); use --device cpu");
  const int index = m[2].matched ? std::stoi(m[3]) : 0;
  const int count = static_cast<int>(torch::cuda::device_count());
  if (index >= count)
    usage_error("--device", "'" + spec + "' requested, but only " + std::to_string(count) +
                                " CUDA device(s) are visible");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void retain_freed_memory() {
#ifdef __GLIBC__
  static const bool once = [] {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 128 << 20);
    mallopt(M_TOP_PAD, 64 << 20);
    return true;
  }();
  (void)once;
#endif
}

int set_threads(int n) {
  retain_freed_memory();
  const int k = n <= 0 ? hardware_threads() : n;
  torch::set_num_threads(k);
  return k;
}

void seed_all(uint64_t seed) {
  torch::manual_seed(seed);  // seeds CPU and, lazily, every CUDA device
}

uint64_t derive_seed(uint64_t seed, uint64_t stream, uint64_t index) {
  auto mix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  return mix(mix(mix(seed) ^ stream) ^ index) >> 1;  // keep it positive as int64
}

std::string version_string() { return NFKIT_VERSION_STRING; }

}  // namespace nfkit
