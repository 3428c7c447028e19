#pragma once
// Errors and argument checks: a small vocabulary with uniform one-line messages.
//
// Two kinds of failure reach users (after Stan Math's prim/err):
//   * UsageError   -- the caller asked for something invalid (bad option, bad value, wrong
//                     shape); the command line exits with code 2.
//   * RuntimeError -- valid request, but the world disagreed (missing or corrupt file,
//                     non-finite data, solver failure); the command line exits with code 1.
// Both derive from nfkit::Error (a std::runtime_error) whose what() is one line:
//   "ess: log_weights[17] is nan, but must be finite"
// Internal invariants use NFKIT_ASSERT, whose message says "bug": users should never see it.
//
// Example:
//   check_finite("ess", "log_weights", w);          // throws RuntimeError on nan/inf
//   check_positive("StandardNormal", "temperature", T);  // throws UsageError if T <= 0
#include <stdexcept>
#include <string>

namespace nfkit {

/// Base class of every error nfkit raises on purpose. what() is a single line.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  /// Process exit code the command line uses for this error.
  virtual int exit_code() const noexcept { return 1; }
};

/// The request itself is invalid (exit code 2).
class UsageError : public Error {
 public:
  using Error::Error;
  int exit_code() const noexcept override { return 2; }
};

/// A valid request failed at run time: files, data, numerics (exit code 1).
class RuntimeError : public Error {
 public:
  using Error::Error;
};

/// Throws UsageError("fn: msg").
[[noreturn]] void usage_error(const std::string& fn, const std::string& msg);
/// Throws RuntimeError("fn: msg").
[[noreturn]] void runtime_error(const std::string& fn, const std::string& msg);

namespace detail {
[[noreturn]] void assertion_failed(const char* expr, const char* file, int line,
                                   const std::string& msg);
}  // namespace detail

}  // namespace nfkit

/// Internal invariant. A failure is a bug in nfkit, never the user's fault.
#define NFKIT_ASSERT(cond, msg)                                              \
  do {                                                                       \
    if (!(cond)) ::nfkit::detail::assertion_failed(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
