#pragma once
// Process-wide run-time settings: compute device, thread count, random seed.
//
//   auto dev = nfkit::parse_device("cuda:0");   // UsageError if CUDA is not available
//   nfkit::set_threads(0);                        // 0 = all cores (torch starts with 1 here)
//   nfkit::seed_all(42);                          // same seed, same results on CPU
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace nfkit {

/// Parses "cpu", "cuda" or "cuda:N". Throws UsageError for anything else, or when CUDA is
/// requested but this LibTorch has no CUDA or the machine has no (or too few) GPUs.
c10::Device parse_device(const std::string& spec);

/// Number of hardware threads (at least 1).
int hardware_threads();

/// Sets LibTorch's intra-op thread count; n <= 0 means all cores. Returns the count set.
/// Also calls retain_freed_memory() (once per process).
int set_threads(int n);

/// Keeps glibc's malloc from handing freed memory back to the kernel after every step of a
/// training loop: a 64 MiB top pad, a 128 MiB trim threshold, blocks below 32 MiB from the
/// heap. With glibc's defaults every step of a small model trims the heap (or maps its 128 KiB
/// activations afresh) and page-faults the same memory in again; on the project's virtual
/// machines that made small-batch training up to 4x slower (MAF D = 2: 55k -> 250k samples/s,
/// see docs/benchmarks.md). Costs at most ~200 MiB of retained address space. No-op without
/// glibc; idempotent.
void retain_freed_memory();

/// Seeds LibTorch's CPU (and, where present, CUDA) generators.
void seed_all(uint64_t seed);

/// A seed derived deterministically from (seed, stream, index): used to give each training
/// step or worker its own reproducible random stream (SplitMix64 mixing).
uint64_t derive_seed(uint64_t seed, uint64_t stream, uint64_t index);

/// "0.1.0".
std::string version_string();

}  // namespace nfkit
