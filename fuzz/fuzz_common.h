#pragma once
// Shared helpers of the libFuzzer targets (docs/reliability.md).
//
// Each target hands the fuzzer's bytes to one reader of outside data. The reader must either
// return or throw nfkit::Error whose message is one non-empty line (what the command line
// prints as `nfkit: <message>`); any other exception (a torch error, std::out_of_range, ...)
// or a multi-line message is a finding: the target prints it and aborts, so libFuzzer saves
// the input. Crashes, leaks and sanitizer reports are findings by themselves.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>

#include <c10/util/Exception.h>

#include "nfkit/core/error.h"

namespace nfkit::fuzz {

/// A per-process scratch directory (readers take paths): $TMPDIR/nfkit-fuzz-<pid>.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string d = std::string(t && *t ? t : "/tmp") + "/nfkit-fuzz-" + std::to_string(getpid());
    std::string cmd = "mkdir -p '" + d + "'";
    if (std::system(cmd.c_str()) != 0) std::abort();
    return d;
  }();
  return dir;
}

/// Writes bytes to <scratch>/<name> and returns the path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!f) std::abort();
  return path;
}

[[noreturn]] inline void finding(const char* kind, const std::string& what) {
  std::fprintf(stderr, "\nnfkit-fuzz FINDING (%s): %s\n", kind, what.c_str());
  std::abort();
}

/// Runs f; nfkit::Error with a one-line message is the expected answer to bad input.
template <class F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const nfkit::Error& e) {
    const std::string m = e.what();
    if (m.empty() || m.find('\n') != std::string::npos) finding("message is not one line", m);
  } catch (const c10::Error& e) {
    finding("torch error escaped", e.what_without_backtrace());
  } catch (const std::exception& e) {
    finding("non-nfkit exception escaped", e.what());
  } catch (...) {
    finding("unknown exception escaped", "");
  }
}

}  // namespace nfkit::fuzz
