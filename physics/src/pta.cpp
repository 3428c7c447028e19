#include "nfkit/physics/pta.h"

#include <torch/torch.h>

#include <cmath>

#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/npy.h"

namespace nfkit {

FreeSpectrum FreeSpectrum::load(const std::string& dir) {
  if (!file_exists(dir)) runtime_error(dir, "free-spectrum directory not found");
  auto need = [&](const char* name) {
    auto p = dir + "/" + name;
    if (!file_exists(p)) runtime_error(p, "missing (a free-spectrum directory holds density.npy, "
                                          "log10rhogrid.npy and freqs.npy)");
    return read_npy(p).to(torch::kFloat64);
  };
  FreeSpectrum fs;
  fs.source = dir;
  fs.density = need("density.npy");
  fs.grid = need("log10rhogrid.npy");
  fs.freqs = need("freqs.npy");
  const std::string dpath = dir + "/density.npy", gpath = dir + "/log10rhogrid.npy",
                    fpath = dir + "/freqs.npy";
  if (fs.density.dim() == 3 && fs.density.size(0) == 1) fs.density = fs.density.squeeze(0);
  if (fs.grid.dim() != 1 || fs.grid.size(0) < 2)
    runtime_error(gpath, "shape " + shape_string(fs.grid) + ", expected [G] with G >= 2");
  if (fs.freqs.dim() != 1 || fs.freqs.size(0) < 1)
    runtime_error(fpath, "shape " + shape_string(fs.freqs) + ", expected [K]");
  if (fs.density.dim() != 2 || fs.density.size(0) != fs.freqs.size(0) || fs.density.size(1) != fs.grid.size(0))
    runtime_error(dpath, "shape " + shape_string(fs.density) + ", expected [1, " +
                             std::to_string(fs.freqs.size(0)) + ", " + std::to_string(fs.grid.size(0)) +
                             "] (bins from freqs.npy, grid points from log10rhogrid.npy)");
  if (!torch::isfinite(fs.grid).all().item<bool>()) runtime_error(gpath, "grid values must be finite");
  auto d = fs.grid.diff();
  fs.spacing = d.mean().item<double>();
  if (!(fs.spacing > 0) || (d - fs.spacing).abs().max().item<double>() > 1e-6 * fs.spacing)
    runtime_error(gpath, "the grid must be uniform and increasing");
  if (torch::isnan(fs.density).any().item<bool>() || (fs.density == INFINITY).any().item<bool>())
    runtime_error(dpath, "densities must not be nan or +inf");
  if (!(fs.freqs > 0).all().item<bool>()) runtime_error(fpath, "frequencies must be positive");
  const double f1 = fs.freqs[0].item<double>();
  auto k = torch::arange(1, fs.bins() + 1, torch::kFloat64);
  if (((fs.freqs - k * f1).abs() > 1e-6 * f1).any().item<bool>())
    runtime_error(fpath, "frequencies must be f_k = k/T (k = 1, 2, ...)");
  fs.tspan = 1.0 / f1;
  return fs;
}

FreeSpectrum FreeSpectrum::first_bins(int64_t k) const {
  if (k < 1 || k > bins())
    usage_error("--nbins", std::to_string(k) + " is out of range: " + source + " has " +
                               std::to_string(bins()) + " frequency bins");
  FreeSpectrum out = *this;
  out.density = density.narrow(0, 0, k).contiguous();
  out.freqs = freqs.narrow(0, 0, k).contiguous();
  return out;
}

torch::Tensor refit_log_likelihood(const FreeSpectrum& fs, const torch::Tensor& rho2) {
  const char* fn = "refit_log_likelihood";
  check_dim(fn, "rho2", rho2, 2);
  check_size(fn, "rho2", rho2, 1, fs.bins());
  auto r2 = rho2.to(torch::kFloat64);
  const int64_t G = fs.grid.size(0), K = fs.bins();
  const double y0 = fs.grid[0].item<double>();
  // NaN or negative power is invalid; zero power sits below the grid (lowest point).
  auto bad = torch::isnan(r2) | (r2 < 0);
  auto y = 0.5 * torch::log10(torch::where(r2 > 0, r2, torch::full_like(r2, 1e-300)));
  auto pos = torch::round((y - y0) / fs.spacing);
  auto above = pos > static_cast<double>(G - 1);
  auto idx = pos.clamp(0, G - 1).to(torch::kLong);  // below the grid: lowest point
  auto offs = torch::arange(K, torch::kLong) * G;
  auto vals = fs.density.reshape({-1}).index_select(0, (idx + offs).reshape({-1})).view(idx.sizes());
  auto ll = (vals + std::log(fs.spacing)).sum(1);
  auto invalid = (bad | above).any(1);
  return torch::where(invalid, torch::full_like(ll, -INFINITY), ll);
}

torch::Tensor powerlaw_psd(const torch::Tensor& f, const torch::Tensor& log10_A, const torch::Tensor& gamma) {
  auto A2 = torch::pow(10.0, 2.0 * log10_A).unsqueeze(1);
  auto g = gamma.unsqueeze(1);
  auto ff = f.unsqueeze(0);
  return A2 / (12.0 * M_PI * M_PI) * torch::pow(kFYear, g - 3.0) * torch::pow(ff, -g);
}

torch::Tensor turnover_psd(const torch::Tensor& f, const torch::Tensor& log10_A, const torch::Tensor& gamma,
                           const torch::Tensor& log10_fbend, double kappa) {
  auto fb = torch::pow(10.0, log10_fbend).unsqueeze(1);
  return powerlaw_psd(f, log10_A, gamma) / (1.0 + torch::pow(fb / f.unsqueeze(0), kappa));
}

torch::Tensor broken_powerlaw_psd(const torch::Tensor& f, const torch::Tensor& log10_A,
                                  const torch::Tensor& gamma, double delta, const torch::Tensor& log10_fb,
                                  double kappa) {
  auto ff = f.unsqueeze(0);
  auto g = gamma.unsqueeze(1);
  auto fb = torch::pow(10.0, log10_fb).unsqueeze(1);
  auto hc2 = torch::pow(10.0, 2.0 * log10_A).unsqueeze(1) * torch::pow(ff / kFYear, 3.0 - g) *
             torch::pow(1.0 + torch::pow(ff / fb, 1.0 / kappa), kappa * (g - delta));
  return hc2 / (12.0 * M_PI * M_PI * ff.pow(3));
}

torch::Tensor omega_h2_to_psd(const torch::Tensor& f, const torch::Tensor& omega_h2) {
  return kH100 * kH100 * omega_h2 / (8.0 * std::pow(M_PI, 4) * f.unsqueeze(0).pow(5));
}

}  // namespace nfkit
