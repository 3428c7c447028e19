#pragma once
// Progress of long work on stderr.
//
// On a terminal: one line rewritten in place with done/total, rate and ETA. Otherwise (logs,
// CI): a plain line at most every `interval` seconds and one at the end. Silent when quiet.
//
//   nfkit::Progress p("train", steps, {.quiet = opts.quiet});
//   for (int64_t i = 0; i < steps; ++i) { ...; p.update(i + 1, "loss 1.234"); }
//   p.finish();
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace nfkit {

struct ProgressOptions {
  bool quiet = false;
  /// Seconds between plain lines when stderr is not a terminal.
  double interval = 10.0;
  /// Force terminal / plain mode (default: detect with isatty).
  int force_tty = -1;
  std::FILE* stream = stderr;
};

class Progress {
 public:
  Progress(std::string label, int64_t total, ProgressOptions opts = {});
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  /// Reports `done` units finished (out of total) with an optional status text. Work that
  /// resumes at `start` reports rates over the units done in this run only.
  void update(int64_t done, const std::string& status = "");
  /// Writes the closing line (idempotent).
  void finish(const std::string& status = "");
  /// Sets the first unit of this run (for resumed work) so rate and ETA stay honest.
  void set_start(int64_t start) { start_ = start; }

 private:
  void print(int64_t done, const std::string& status, bool final);

  std::string label_;
  int64_t total_;
  ProgressOptions opts_;
  bool tty_ = false;
  bool finished_ = false;
  int64_t start_ = 0;
  int64_t last_done_ = 0;
  std::string last_status_;
  std::chrono::steady_clock::time_point t0_, last_print_;
};

/// "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

}  // namespace nfkit
