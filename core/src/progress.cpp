#include "nfkit/core/progress.h"

#include <unistd.h>

#include <cmath>

namespace nfkit {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long t = static_cast<long>(std::lround(s));
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

Progress::Progress(std::string label, int64_t total, ProgressOptions opts)
    : label_(std::move(label)), total_(total), opts_(opts) {
  tty_ = opts_.force_tty >= 0 ? opts_.force_tty == 1 : ::isatty(::fileno(opts_.stream)) == 1;
  t0_ = last_print_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  if (tty_ && !finished_ && !opts_.quiet && last_done_ > 0) std::fputc('\n', opts_.stream);
}

void Progress::update(int64_t done, const std::string& status) {
  last_done_ = done;
  // A status (e.g. a validation result) stays on the line until the next one, so that the
  // periodic plain lines of a log show it even when it arrived between two of them.
  if (!status.empty()) last_status_ = status;
  if (opts_.quiet || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_print_).count();
  if (since < (tty_ ? 0.2 : opts_.interval)) return;
  last_print_ = now;
  print(done, last_status_, false);
}

void Progress::finish(const std::string& status) {
  if (finished_) return;
  finished_ = true;
  if (opts_.quiet) return;
  print(last_done_, status.empty() ? last_status_ : status, true);
}

void Progress::print(int64_t done, const std::string& status, bool final) {
  const double el =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const double rate = el > 0 ? static_cast<double>(done - start_) / el : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : NAN;
  char head[160];
  std::snprintf(head, sizeof head, "%s: %lld/%lld (%3.0f%%) %.1f/s %s %s", label_.c_str(),
                static_cast<long long>(done), static_cast<long long>(total_),
                total_ > 0 ? 100.0 * done / total_ : 100.0, rate,
                final ? "elapsed" : "eta", format_duration(final ? el : eta).c_str());
  if (tty_)
    std::fprintf(opts_.stream, "\r\033[K%s%s%s%s", head, status.empty() ? "" : "  ",
                 status.c_str(), final ? "\n" : "");
  else
    std::fprintf(opts_.stream, "%s%s%s\n", head, status.empty() ? "" : "  ", status.c_str());
  std::fflush(opts_.stream);
}

}  // namespace nfkit
