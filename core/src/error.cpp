#include "nfkit/core/error.h"

namespace nfkit {

void usage_error(const std::string& fn, const std::string& msg) {
  throw UsageError(fn + ": " + msg);
}

void runtime_error(const std::string& fn, const std::string& msg) {
  throw RuntimeError(fn + ": " + msg);
}

namespace detail {
void assertion_failed(const char* expr, const char* file, int line, const std::string& msg) {
  throw Error(std::string("internal error (this is a bug in nfkit, please report it): ") +
              msg + " [" + expr + " at " + file + ":" + std::to_string(line) + "]");
}
}  // namespace detail

}  // namespace nfkit
