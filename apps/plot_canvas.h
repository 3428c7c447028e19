#pragma once
// A small RGB canvas for result figures (lines, rectangles, 5x7 bitmap text) and the figures of
// `nfkit pta compare`: a bar chart with error bars and a corner plot.
#include <torch/types.h>

#include <array>
#include <string>
#include <vector>

namespace nfkit::cli {

using Rgb = std::array<unsigned char, 3>;

class Canvas {
 public:
  Canvas(int64_t width, int64_t height);
  void pixel(int64_t x, int64_t y, const Rgb& c);
  void rect(int64_t x0, int64_t y0, int64_t x1, int64_t y1, const Rgb& c);  ///< filled, inclusive
  void line(double x0, double y0, double x1, double y1, const Rgb& c);
  /// Text with its top-left corner at (x, y); scale 1 = 5x7 pixels per glyph (6 px advance).
  /// Letters print in lower case; characters without a glyph print as blanks.
  void text(int64_t x, int64_t y, const std::string& s, const Rgb& c, int scale = 2);
  static int64_t text_width(const std::string& s, int scale = 2) { return static_cast<int64_t>(s.size()) * 6 * scale; }
  void write_png(const std::string& path) const;
  int64_t width() const { return w_; }
  int64_t height() const { return h_; }

 private:
  int64_t w_, h_;
  std::vector<unsigned char> img_;
};

/// Horizontal bars of values with ± errors, one row per label, a zero line and tick labels.
void write_bar_chart_png(const std::string& path, const std::string& title, const std::vector<std::string>& labels,
                         const std::vector<double>& values, const std::vector<double>& errors);

/// Corner plot of samples [N, D]: 1-D histograms on the diagonal, 2-D histograms below.
void write_corner_png(const std::string& path, const std::string& title, const torch::Tensor& samples,
                      const std::vector<std::string>& names);

}  // namespace nfkit::cli
