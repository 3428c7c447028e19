#include "nfkit/inference/pta_models.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "nfkit/core/checks.h"

namespace nfkit {
namespace {

constexpr double kCg = 0.83;          // (g*/g*0)(g*s0/g*s)^(4/3) with g* = g*s = 10.75
constexpr double kOmegaRh2 = 4.18e-5; // radiation density today times h^2
constexpr double kAs = 2.1e-9;        // scalar amplitude at the CMB pivot
constexpr double kFCMB = 7.73e-17;    // 0.05/Mpc in Hz

torch::Tensor col(const torch::Tensor& th, int64_t k) { return th.select(1, k); }

}  // namespace

torch::Tensor sigw_delta_shape(const torch::Tensor& x) {
  auto x2 = x * x;
  auto a = 3.0 * x2 - 2.0;
  auto resonant = torch::where(x < 2.0 / std::sqrt(3.0), torch::full_like(x, M_PI * M_PI) * a * a, torch::zeros_like(x));
  auto logterm = torch::log(torch::abs(1.0 - 4.0 / (3.0 * x2)));
  auto inner = 4.0 + a * logterm;
  auto shape = 3.0 / 64.0 * ((4.0 - x2) / 4.0).pow(2) * x2 * a * a * (resonant + inner * inner);
  // Zero above the cut-off x = 2; the log singularity at x = 2/sqrt(3) is integrable but
  // infinite at one point: the product a^2 * log^2 -> 0 there, so only guard NaN.
  shape = torch::where(x < 2.0, shape, torch::zeros_like(x));
  return torch::where(torch::isfinite(shape), shape, torch::zeros_like(shape));
}

const std::vector<std::string>& pta_model_names() {
  static const std::vector<std::string> names{"smbhb", "pl", "turnover", "bpl", "pt", "dw", "sigw", "igw"};
  return names;
}

std::string pta_model_list(const std::string& sep) {
  std::string list;
  for (const auto& n : pta_model_names()) list += (list.empty() ? "" : sep) + n;
  return list;
}

void check_pta_model(const std::string& name) {
  const auto& names = pta_model_names();
  if (std::find(names.begin(), names.end(), name) == names.end())
    usage_error("--models", "unknown model '" + name + "', expected one of " + pta_model_list(", "));
}

PTAModel make_pta_model(const std::string& name, const FreeSpectrum& data) {
  PTAModel m;
  m.name = name;
  const auto f = data.freqs;
  if (name == "smbhb") {
    m.description = "SMBHB power law, NANOGrav-15 astrophysical prior on (log10_A, gamma)";
    m.model.add(std::vector<std::string>{"log10_A", "gamma"},
                multivariate_normal_prior(torch::tensor({-15.61492963, 4.70709637}, torch::kFloat64),
                                          torch::tensor({{0.27871359, -0.00263617}, {-0.00263617, 0.12415383}},
                                                        torch::kFloat64)));
    m.psd = [f](const torch::Tensor& th) { return powerlaw_psd(f, col(th, 0), col(th, 1)); };
  } else if (name == "pl") {
    m.description = "power law, free gamma";
    m.model.add("log10_A", uniform_prior(-18, -14)).add("gamma", uniform_prior(0, 7));
    m.psd = [f](const torch::Tensor& th) { return powerlaw_psd(f, col(th, 0), col(th, 1)); };
  } else if (name == "turnover") {
    m.description = "power law (gamma 13/3) with a low-frequency turnover (kappa 10/3)";
    m.model.add("log10_A", uniform_prior(-18, -14)).add("log10_fbend", uniform_prior(-10, -7));
    m.psd = [f](const torch::Tensor& th) {
      return turnover_psd(f, col(th, 0), torch::full_like(col(th, 0), 13.0 / 3.0), col(th, 1), 10.0 / 3.0);
    };
  } else if (name == "bpl") {
    m.description = "broken power law (gamma 13/3, delta 0, kappa 0.1)";
    m.model.add("log10_A", uniform_prior(-18, -14)).add("log10_fb", uniform_prior(-10, -7));
    m.psd = [f](const torch::Tensor& th) {
      return broken_powerlaw_psd(f, col(th, 0), torch::full_like(col(th, 0), 13.0 / 3.0), 0.0, col(th, 1), 0.1);
    };
  } else if (name == "pt") {
    m.description = "first-order phase transition, sound-wave template";
    m.model.add("log10_omega", uniform_prior(-14, -4)).add("log10_fpeak", uniform_prior(-10, -6));
    m.psd = [f](const torch::Tensor& th) {
      auto x = f.unsqueeze(0) / torch::pow(10.0, col(th, 1)).unsqueeze(1);
      auto shape = x.pow(3) * torch::pow(7.0 / (4.0 + 3.0 * x * x), 3.5);
      return omega_h2_to_psd(f, torch::pow(10.0, col(th, 0)).unsqueeze(1) * shape);
    };
  } else if (name == "dw") {
    m.description = "domain walls, broken power law (a, b, c) = (3, 1, 1)";
    m.model.add("log10_omega", uniform_prior(-14, -4)).add("log10_fpeak", uniform_prior(-10, -6));
    m.psd = [f](const torch::Tensor& th) {
      auto x = f.unsqueeze(0) / torch::pow(10.0, col(th, 1)).unsqueeze(1);
      const double a = 3.0, b = 1.0, c = 1.0;
      auto shape = std::pow(a + b, c) / torch::pow(b * torch::pow(x, -a / c) + a * torch::pow(x, b / c), c);
      return omega_h2_to_psd(f, torch::pow(10.0, col(th, 0)).unsqueeze(1) * shape);
    };
  } else if (name == "sigw") {
    m.description = "scalar-induced GWs, delta-peaked curvature spectrum";
    m.model.add("log10_A_zeta", uniform_prior(-3, 1)).add("log10_fstar", uniform_prior(-11, -5));
    m.psd = [f](const torch::Tensor& th) {
      auto x = f.unsqueeze(0) / torch::pow(10.0, col(th, 1)).unsqueeze(1);
      auto A2 = torch::pow(10.0, 2.0 * col(th, 0)).unsqueeze(1);
      return omega_h2_to_psd(f, kCg * kOmegaRh2 * A2 * sigw_delta_shape(x));
    };
  } else if (name == "igw") {
    m.description = "blue-tilted inflationary GWs";
    m.model.add("log10_r", uniform_prior(-30, 0)).add("n_t", uniform_prior(0, 6));
    m.psd = [f](const torch::Tensor& th) {
      auto r = torch::pow(10.0, col(th, 0)).unsqueeze(1);
      auto tilt = torch::pow(f.unsqueeze(0) / kFCMB, col(th, 1).unsqueeze(1));
      return omega_h2_to_psd(f, kCg / 24.0 * kOmegaRh2 * kAs * r * tilt);
    };
  } else {
    check_pta_model(name);
    NFKIT_ASSERT(false, "model '" + name + "' is listed but not built");
  }
  auto psd = m.psd;
  const double T = data.tspan;
  FreeSpectrum fs = data;
  m.model.set_log_likelihood([psd, T, fs](const torch::Tensor& th) { return refit_log_likelihood(fs, psd(th) / T); });
  return m;
}

}  // namespace nfkit
