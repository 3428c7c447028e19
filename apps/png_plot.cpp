#include "png_plot.h"

#include <png.h>
#include <torch/torch.h>
#include <unistd.h>

#include <array>
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

}  // namespace nfkit::cli
