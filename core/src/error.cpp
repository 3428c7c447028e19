#include "nfkit/core/error.h"

#include <cstdio>

namespace nfkit {
namespace {
// Every error nfkit raises goes through the three functions below, which keep what() one line:
// line breaks and other control characters (a file's text quoted back, say) become escapes
// (found by fuzz/fuzz_h5: a format name holding a line break was quoted into the message).
std::string one_line(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (u < 0x20 && c != '\t') {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}
}  // namespace

void usage_error(const std::string& fn, const std::string& msg) {
  throw UsageError(one_line(fn + ": " + msg));
}

void runtime_error(const std::string& fn, const std::string& msg) {
  throw RuntimeError(one_line(fn + ": " + msg));
}

namespace detail {
void assertion_failed(const char* expr, const char* file, int line, const std::string& msg) {
  throw Error(one_line(std::string("internal error (this is a bug in nfkit, please report it): ") +
                       msg + " [" + expr + " at " + file + ":" + std::to_string(line) + "]"));
}
}  // namespace detail

}  // namespace nfkit
