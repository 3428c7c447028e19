#pragma once
// Pulsar-timing-array spectra and the free-spectrum ("refit") likelihood.
//
// Free-spectrum data (ceffyl, Lamb et al. 2023, arXiv 2303.15442; the NANOGrav 15-year set,
// Agazie et al. 2023, arXiv 2306.16213): for each frequency bin k a kernel density estimate
// density_k(y) of y = log10 rho_k (rho_k in s), tabulated as a natural-log density on a
// uniform grid, and the frequencies f_k = k/T (Hz). A spectrum model gives
//   rho_k^2 = Σ_signals S(f_k) / T        (S the timing-residual power spectral density, s^3)
// and the refit log-likelihood over the first K bins is
//   ln L = Σ_k [ density_k(log10 rho_k) + ln Δ ]
// with Δ the grid spacing (density_k is then a probability per grid cell). Conventions:
//   * nearest grid point: index round((y - y_0)/Δ);
//   * above the grid (y > y_last + Δ/2): ln L = -inf (more power than any sample allowed);
//   * below the grid (and rho^2 = 0): the lowest grid point (the free spectrum is flat there:
//     an upper limit);
//   * NaN or negative rho^2: -inf.
//
// Spectra (f in Hz, S in s^3, amplitudes at f_yr = 1/yr):
//   power law      S = A^2/(12 π^2) f_yr^(γ-3) f^(-γ)
//   turnover       S_PL(A, γ) / (1 + (f_bend/f)^κ)                 (Sampson et al. 2015)
//   broken PL      h_c = A (f/f_yr)^((3-γ)/2) (1 + (f/f_b)^(1/κ))^(κ(γ-δ)/2),
//                  S = h_c^2/(12 π^2 f^3)                           (NANOGrav 15-yr GWB paper)
//   from Ω_GW h^2  S = H_100^2 Ω_GW h^2 / (8 π^4 f^5),  H_100 = 100 km/s/Mpc
//                  (h_c^2 = 3 H_0^2 Ω_GW / (2 π^2 f^2), S = h_c^2/(12 π^2 f^3)).
//
//   auto fs = nfkit::FreeSpectrum::load("data/pta/ng15_30f_fs_hd_ceffyl").first_bins(14);
//   auto S = nfkit::powerlaw_psd(fs.freqs, log10_A, gamma);      // [B, K]
//   auto lnL = nfkit::refit_log_likelihood(fs, S / fs.tspan);     // [B]
#include <torch/types.h>

#include <string>

namespace nfkit {

/// 1/yr in Hz (Julian year).
constexpr double kFYear = 1.0 / (365.25 * 86400.0);
/// 100 km/s/Mpc in 1/s.
constexpr double kH100 = 3.2407792894443648e-18;

struct FreeSpectrum {
  torch::Tensor density;  ///< [K, G] natural-log density of log10 rho per bin (float64)
  torch::Tensor grid;     ///< [G] log10 rho grid, uniform
  torch::Tensor freqs;    ///< [K] Hz
  double tspan = 0.0;     ///< T = 1/f_1 in s
  double spacing = 0.0;   ///< Δ of the grid
  std::string source;     ///< directory it came from

  /// Reads density.npy ([1, K, G] or [K, G]), log10rhogrid.npy and freqs.npy from dir;
  /// RuntimeError naming the file and what is wrong (missing, shapes, non-uniform grid,
  /// NaN densities, frequencies not k/T).
  static FreeSpectrum load(const std::string& dir);
  int64_t bins() const { return freqs.size(0); }
  /// The first k bins (UsageError naming --nbins when k is out of range).
  FreeSpectrum first_bins(int64_t k) const;
};

/// ln L [B] of rho^2 [B, K] (s^2) with K == fs.bins(); see the conventions above.
torch::Tensor refit_log_likelihood(const FreeSpectrum& fs, const torch::Tensor& rho2);

/// Power law: log10_A, gamma [B]; f [K]; returns S [B, K].
torch::Tensor powerlaw_psd(const torch::Tensor& f, const torch::Tensor& log10_A, const torch::Tensor& gamma);
/// Turnover: power law divided by 1 + (f_bend/f)^kappa; log10_fbend [B].
torch::Tensor turnover_psd(const torch::Tensor& f, const torch::Tensor& log10_A, const torch::Tensor& gamma,
                           const torch::Tensor& log10_fbend, double kappa);
/// Broken power law of the NANOGrav 15-year GWB search; log10_fb [B].
torch::Tensor broken_powerlaw_psd(const torch::Tensor& f, const torch::Tensor& log10_A,
                                  const torch::Tensor& gamma, double delta, const torch::Tensor& log10_fb,
                                  double kappa);
/// S [B, K] from Ω_GW h^2 [B, K] at f [K].
torch::Tensor omega_h2_to_psd(const torch::Tensor& f, const torch::Tensor& omega_h2);

}  // namespace nfkit
