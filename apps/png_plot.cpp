#include "png_plot.h"

#include <png.h>
#include <torch/torch.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>

#include "nfkit/core/error.h"

namespace nfkit::cli {
namespace {

// Viridis at 9 evenly spaced anchors (matplotlib's table), linearly interpolated.
std::array<unsigned char, 3> viridis(double t) {
  static const double a[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},
                                 {44, 113, 142}, {33, 144, 141}, {39, 173, 129},
                                 {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
  t = std::min(1.0, std::max(0.0, t)) * 8.0;
  const int i = std::min(7, static_cast<int>(t));
  const double f = t - i;
  std::array<unsigned char, 3> c{};
  for (int k = 0; k < 3; ++k) c[k] = static_cast<unsigned char>(a[i][k] + f * (a[i + 1][k] - a[i][k]) + 0.5);
  return c;
}

}  // namespace

torch::Tensor density_grid(const std::function<torch::Tensor(const torch::Tensor&)>& log_prob,
                           double L, int64_t n) {
  torch::NoGradGuard ng;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const double h = 2.0 * L / n;
  const auto g = -L + h * (torch::arange(n, f64) + 0.5);
  auto grid = torch::meshgrid({g.flip(0), g}, "ij");  // rows: y from top to bottom
  const auto pts = torch::stack({grid[1].reshape({-1}), grid[0].reshape({-1})}, 1);
  return torch::exp(log_prob(pts).to(torch::kFloat64)).nan_to_num(0.0).reshape({n, n});
}

void write_rgb_png(const std::string& path, int64_t width, int64_t n,
                   const std::vector<unsigned char>& img) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) runtime_error(path, "cannot be written (directory missing or not writable?)");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(f);
    std::remove(tmp.c_str());
    runtime_error(path, "PNG encoding failed");
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(n), 8,
               PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int64_t r = 0; r < n; ++r) png_write_row(png, &img[static_cast<size_t>(r * width * 3)]);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  if (std::fclose(f) != 0 || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    runtime_error(path, "cannot be written");
  }
}

void write_density_png(const std::string& path, const std::vector<torch::Tensor>& panels) {
  NFKIT_ASSERT(!panels.empty(), "write_density_png without panels");
  const int64_t n = panels[0].size(0), gap = 8;
  const int64_t width = static_cast<int64_t>(panels.size()) * n + (panels.size() - 1) * gap;
  double vmax = 0;
  for (const auto& p : panels) vmax = std::max(vmax, p.max().item<double>());
  if (!(vmax > 0)) vmax = 1;
  std::vector<unsigned char> img(static_cast<size_t>(width * n * 3), 255);
  for (size_t k = 0; k < panels.size(); ++k) {
    const auto p = panels[k].to(torch::kFloat64).contiguous();
    const double* d = p.data_ptr<double>();
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < n; ++c) {
        const auto col = viridis(d[r * n + c] / vmax);
        unsigned char* px = &img[static_cast<size_t>((r * width + k * (n + gap) + c) * 3)];
        px[0] = col[0], px[1] = col[1], px[2] = col[2];
      }
  }
  write_rgb_png(path, width, n, img);
}

namespace {
void put(std::vector<unsigned char>& img, int64_t W, int64_t H, int64_t x, int64_t y,
         const std::array<unsigned char, 3>& c) {
  if (x < 0 || y < 0 || x >= W || y >= H) return;
  unsigned char* p = &img[static_cast<size_t>((y * W + x) * 3)];
  p[0] = c[0], p[1] = c[1], p[2] = c[2];
}
void line(std::vector<unsigned char>& img, int64_t W, int64_t H, int64_t x0, int64_t y0,
          int64_t x1, int64_t y1, const std::array<unsigned char, 3>& c, int thick) {
  const int64_t steps = std::max(std::abs(x1 - x0), std::abs(y1 - y0)) + 1;
  for (int64_t s = 0; s <= steps; ++s) {
    const double t = static_cast<double>(s) / static_cast<double>(steps);
    const auto x = static_cast<int64_t>(std::lround(x0 + t * (x1 - x0)));
    const auto y = static_cast<int64_t>(std::lround(y0 + t * (y1 - y0)));
    for (int dx = 0; dx < thick; ++dx)
      for (int dy = 0; dy < thick; ++dy) put(img, W, H, x + dx, y + dy, c);
  }
}
}  // namespace

void write_histogram_png(const std::string& path, const std::vector<torch::Tensor>& series,
                         double lo, double hi, int64_t bins) {
  NFKIT_ASSERT(!series.empty() && hi > lo && bins > 0, "write_histogram_png arguments");
  static const std::array<unsigned char, 3> colors[] = {
      {0, 0, 0}, {31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40}};
  const int64_t W = 720, H = 420, m = 30;
  std::vector<unsigned char> img(static_cast<size_t>(W * H * 3), 255);
  std::vector<std::vector<double>> dens;
  double vmax = 0;
  for (const auto& s : series) {
    const auto v = s.to(torch::kFloat64).contiguous();
    std::vector<double> h(bins, 0.0);
    const double* d = v.data_ptr<double>();
    int64_t used = 0;
    for (int64_t i = 0; i < v.numel(); ++i) {
      if (!std::isfinite(d[i]) || d[i] < lo || d[i] >= hi) continue;
      h[static_cast<size_t>((d[i] - lo) / (hi - lo) * bins)] += 1.0;
      ++used;
    }
    for (auto& x : h) {
      x /= std::max<int64_t>(used, 1);
      vmax = std::max(vmax, x);
    }
    dens.push_back(h);
  }
  if (!(vmax > 0)) vmax = 1;
  const std::array<unsigned char, 3> grey{150, 150, 150};
  line(img, W, H, m, H - m, W - m, H - m, grey, 1);
  line(img, W, H, m, m, m, H - m, grey, 1);
  const double bw = static_cast<double>(W - 2 * m) / bins;
  for (size_t k = 0; k < dens.size(); ++k) {
    const auto& c = colors[k % 5];
    int64_t py = H - m;
    for (int64_t b = 0; b < bins; ++b) {
      const auto x0 = static_cast<int64_t>(m + b * bw), x1 = static_cast<int64_t>(m + (b + 1) * bw);
      const auto y = static_cast<int64_t>(H - m - dens[k][b] / vmax * (H - 2 * m));
      line(img, W, H, x0, py, x0, y, c, 2);
      line(img, W, H, x0, y, x1, y, c, 2);
      py = y;
    }
  }
  write_rgb_png(path, W, H, img);
}

}  // namespace nfkit::cli
