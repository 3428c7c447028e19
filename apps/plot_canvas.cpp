#include "plot_canvas.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <sstream>

#include "png_plot.h"

namespace nfkit::cli {
namespace {

// 5x7 glyphs, rows top to bottom, '#' = ink.
const std::map<char, const char*>& glyphs() {
  static const std::map<char, const char*> g{
      {'0', ".###.#...##..###.#.###..##...#.###."}, {'1', "..#...##....#....#....#....#...###."},
      {'2', ".###.#...#....#...#...#...#...#####"}, {'3', "#####...#...#.....#.....##...#.###."},
      {'4', "...#...##..#.#.#..#.#####...#....#."}, {'5', "#####.....####.....#....##...#.###."},
      {'6', "..##..#...#....####.#...##...#.###."}, {'7', "#####....#...#...#...#....#....#..."},
      {'8', ".###.#...##...#.###.#...##...#.###."}, {'9', ".###.#...##...#.####....#...#..##.."},
      {'a', "...........###.....#.#####...#.####"}, {'b', "#....#....####.#...##...##...#####."},
      {'c', "...........###.#....#....#...#.###."}, {'d', "....#....#.#####...##...##...#.####"},
      {'e', "...........###.#...#######.....###."}, {'f', "..##..#..#.#...###...#....#....#..."},
      {'g', "......#####...##...#.####....#.###."}, {'h', "#....#....#.##.##..##...##...##...#"},
      {'i', "..#........##....#....#....#...###."}, {'j', "...#........##....#....#.#..#..##.."},
      {'k', "#....#....#..#.#.#..##...#.#..#..#."}, {'l', ".##....#....#....#....#....#...###."},
      {'m', "..........##.#.#.#.##.#.##...##...#"}, {'n', "..........#.##.##..##...##...##...#"},
      {'o', "...........###.#...##...##...#.###."}, {'p', "..........####.#...#####.#....#...."},
      {'q', "...........#####...#.####....#....#"}, {'r', "..........#.##.##..##....#....#...."},
      {'s', "...........#####.....###.....#####."}, {'t', ".#....#...###...#....#....#..#..##."},
      {'u', "..........#...##...##...##..##.##.#"}, {'v', "..........#...##...##...#.#.#...#.."},
      {'w', "..........#...##...##.#.##.#.#.#.#."}, {'x', "..........#...#.#.#...#...#.#.#...#"},
      {'y', "..........#...##...#.####....#.###."}, {'z', "..........#####...#...#...#...#####"},
      {'-', "...............###................."}, {'+', ".......#....#..#####..#....#......."},
      {'.', "..............................##..."}, {',', ".....................##....#...#..."},
      {'_', "..............................#####"}, {':', "......##...##........##...##......."},
      {'=', "..........#####.....#####.........."}, {'(', "...#...#...#....#....#.....#.....#."},
      {')', ".#.....#.....#....#....#...#...#..."}, {'/', "....#...#...#....#...#...#....#...."},
      {'%', "##...##..#...#...#...#...#..##...##"}, {'<', "...#...#...#...#.....#.....#.....#."},
      {'>', ".#.....#.....#.....#...#...#...#..."}, {'|', "..#....#....#....#....#....#....#.."}};
  return g;
}

const Rgb kBlack{0, 0, 0}, kGrey{170, 170, 170}, kBlue{31, 119, 180}, kDark{40, 40, 40};

std::string num(double v, int prec) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(prec);
  s << v;
  return s.str();
}

}  // namespace

Canvas::Canvas(int64_t width, int64_t height)
    : w_(width), h_(height), img_(static_cast<size_t>(width * height * 3), 255) {}

void Canvas::pixel(int64_t x, int64_t y, const Rgb& c) {
  if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
  auto* p = &img_[static_cast<size_t>((y * w_ + x) * 3)];
  p[0] = c[0];
  p[1] = c[1];
  p[2] = c[2];
}

void Canvas::rect(int64_t x0, int64_t y0, int64_t x1, int64_t y1, const Rgb& c) {
  if (x0 > x1) std::swap(x0, x1);
  if (y0 > y1) std::swap(y0, y1);
  for (int64_t y = y0; y <= y1; ++y)
    for (int64_t x = x0; x <= x1; ++x) pixel(x, y, c);
}

void Canvas::line(double x0, double y0, double x1, double y1, const Rgb& c) {
  const int64_t n = static_cast<int64_t>(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
  for (int64_t i = 0; i <= n; ++i) {
    const double t = static_cast<double>(i) / n;
    pixel(std::lround(x0 + t * (x1 - x0)), std::lround(y0 + t * (y1 - y0)), c);
  }
}

void Canvas::text(int64_t x, int64_t y, const std::string& s, const Rgb& c, int scale) {
  const auto& g = glyphs();
  for (size_t k = 0; k < s.size(); ++k) {
    char ch = static_cast<char>(std::tolower(static_cast<unsigned char>(s[k])));
    auto it = g.find(ch);
    if (it == g.end()) continue;
    for (int r = 0; r < 7; ++r)
      for (int col = 0; col < 5; ++col)
        if (it->second[r * 5 + col] == '#')
          rect(x + (static_cast<int64_t>(k) * 6 + col) * scale, y + r * scale,
               x + (static_cast<int64_t>(k) * 6 + col) * scale + scale - 1, y + r * scale + scale - 1, c);
  }
}

void Canvas::write_png(const std::string& path) const { write_rgb_png(path, w_, h_, img_); }

void write_bar_chart_png(const std::string& path, const std::string& title, const std::vector<std::string>& labels,
                         const std::vector<double>& values, const std::vector<double>& errors) {
  const int64_t n = static_cast<int64_t>(labels.size());
  const int64_t row = 44, left = 150, right = 40, top = 60, bottom = 50, W = 900;
  const int64_t H = top + bottom + n * row;
  Canvas c(W, H);
  c.text(20, 16, title, kBlack, 2);
  double lo = 0.0, hi = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(values[i])) continue;
    const double e = std::isfinite(errors[i]) ? errors[i] : 0.0;
    lo = std::min(lo, values[i] - e);
    hi = std::max(hi, values[i] + e);
  }
  const double pad = 0.08 * std::max(hi - lo, 1e-3);
  lo -= pad;
  hi += pad;
  auto X = [&](double v) { return left + (v - lo) / (hi - lo) * (W - left - right); };
  // Ticks: about 6 round steps.
  const double raw = (hi - lo) / 6.0;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double step = raw / mag < 2 ? 2 * mag : raw / mag < 5 ? 5 * mag : 10 * mag;
  const int prec = step < 1 ? static_cast<int>(std::ceil(-std::log10(step))) : 0;
  for (double t = std::ceil(lo / step) * step; t <= hi; t += step) {
    c.line(X(t), top - 4, X(t), H - bottom, {225, 225, 225});
    auto s = num(t, prec);
    c.text(static_cast<int64_t>(X(t)) - Canvas::text_width(s, 1) / 2, H - bottom + 8, s, kDark, 1);
  }
  c.line(X(0), top - 6, X(0), H - bottom, kGrey);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = top + i * row + row / 2;
    c.text(12, y - 7, labels[i], kBlack, 2);
    if (!std::isfinite(values[i])) continue;
    c.rect(static_cast<int64_t>(X(0)), y - 12, static_cast<int64_t>(X(values[i])), y + 12, kBlue);
    const double e = std::isfinite(errors[i]) ? errors[i] : 0.0;
    const double a = X(values[i] - e), b = X(values[i] + e);
    for (int d = -1; d <= 1; ++d) c.line(a, y + d, b, y + d, kBlack);
    c.line(a, y - 7, a, y + 7, kBlack);
    c.line(b, y - 7, b, y + 7, kBlack);
  }
  c.text(left, H - 22, "ln bayes factor (with 1-sigma errors)", kDark, 1);
  c.write_png(path);
}

void write_corner_png(const std::string& path, const std::string& title, const torch::Tensor& samples_in,
                      const std::vector<std::string>& names) {
  auto x = samples_in.to(torch::kFloat64).contiguous();
  const int64_t D = x.size(1), panel = 220, gap = 16, margin = 50, bins = 40;
  const int64_t W = margin + D * (panel + gap), H = margin + 30 + D * (panel + gap);
  Canvas c(W, H);
  c.text(16, 12, title, kBlack, Canvas::text_width(title, 2) + 32 <= W ? 2 : 1);  // long titles in small type
  std::vector<double> lo(D), hi(D);
  for (int64_t k = 0; k < D; ++k) {
    auto q = torch::quantile(x.select(1, k), torch::tensor({0.001, 0.999}, torch::kFloat64));
    lo[k] = q[0].item<double>();
    hi[k] = q[1].item<double>();
    if (!(hi[k] > lo[k])) hi[k] = lo[k] + 1e-9;
  }
  auto ox = [&](int64_t j) { return margin / 2 + j * (panel + gap); };
  auto oy = [&](int64_t i) { return margin + i * (panel + gap); };
  auto bin_of = [&](double v, int64_t k) {
    const double t = (v - lo[k]) / (hi[k] - lo[k]);
    return t < 0 || t >= 1 ? int64_t{-1} : static_cast<int64_t>(t * bins);
  };
  const double* p = x.data_ptr<double>();
  const int64_t N = x.size(0);
  for (int64_t i = 0; i < D; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      const int64_t X0 = ox(j), Y0 = oy(i);
      c.line(X0, Y0 + panel, X0 + panel, Y0 + panel, kGrey);
      c.line(X0, Y0, X0, Y0 + panel, kGrey);
      if (i == j) {
        std::vector<double> h(bins, 0.0);
        for (int64_t n = 0; n < N; ++n)
          if (auto b = bin_of(p[n * D + i], i); b >= 0) h[b] += 1;
        const double m = *std::max_element(h.begin(), h.end());
        for (int64_t b = 0; b < bins; ++b) {
          const int64_t top = Y0 + panel - static_cast<int64_t>(h[b] / std::max(m, 1.0) * (panel - 10));
          c.rect(X0 + b * panel / bins + 1, top, X0 + (b + 1) * panel / bins - 1, Y0 + panel - 1, kBlue);
        }
        c.text(X0, Y0 + panel + 4, names[i], kBlack, 1);
        c.text(X0, Y0 + panel + 14, num(lo[i], 2) + " .. " + num(hi[i], 2), kDark, 1);
      } else {
        std::vector<double> h(bins * bins, 0.0);
        for (int64_t n = 0; n < N; ++n) {
          auto bx = bin_of(p[n * D + j], j), by = bin_of(p[n * D + i], i);
          if (bx >= 0 && by >= 0) h[(bins - 1 - by) * bins + bx] += 1;
        }
        const double m = *std::max_element(h.begin(), h.end());
        for (int64_t r = 0; r < bins; ++r)
          for (int64_t q = 0; q < bins; ++q) {
            const double v = std::sqrt(h[r * bins + q] / std::max(m, 1.0));
            if (v <= 0) continue;
            const auto shade = static_cast<unsigned char>(255 - 215 * v);
            c.rect(X0 + q * panel / bins + 1, Y0 + r * panel / bins, X0 + (q + 1) * panel / bins, Y0 + (r + 1) * panel / bins - 1,
                   {shade, shade, static_cast<unsigned char>(std::min(255.0, shade + 40.0))});
          }
      }
    }
  c.write_png(path);
}

}  // namespace nfkit::cli
