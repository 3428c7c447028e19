#pragma once
// Stochastic gravitational-wave background models for pulsar-timing-array model comparison
// on free-spectrum ("refit") data, each with two free parameters (the setting of Lai & Li
// 2025, arXiv 2504.04211). A model = spectrum template + fixed parameters + normalised priors;
// its likelihood is refit_log_likelihood (physics/pta.h) of rho_k^2 = S(f_k)/T.
//
//   name       free parameters (priors)                         template, fixed parameters
//   smbhb      log10_A, gamma: 2-D Gaussian, NANOGrav-15 astrophysical prior:
//              mean (-15.61492963, 4.70709637), cov [[0.27871359, -0.00263617],
//              [-0.00263617, 0.12415383]]                      power law
//   pl         log10_A ~ U[-18, -14], gamma ~ U[0, 7]           power law (PTArcade defaults)
//   turnover   log10_A ~ U[-18, -14], log10_fbend ~ U[-10, -7]  PL / (1 + (f_bend/f)^κ),
//                                                               γ = 13/3, κ = 10/3 (Sampson et al. 2015)
//   bpl        log10_A ~ U[-18, -14], log10_fb ~ U[-10, -7]     broken PL, γ = 13/3, δ = 0, κ = 0.1
//                                                               (NANOGrav 15-yr GWB search)
//   pt         log10_omega ~ U[-14, -4], log10_fpeak ~ U[-10, -6]  first-order phase transition,
//              sound waves: Ω h² = Ω_p x³ (7/(4 + 3x²))^(7/2), x = f/f_p (Caprini et al. 2016,
//              arXiv 1512.06239, eq. 30)
//   dw         log10_omega ~ U[-14, -4], log10_fpeak ~ U[-10, -6]  domain walls (broken PL):
//              Ω h² = Ω_p (a+b)^c / (b x^(-a/c) + a x^(b/c))^c, (a, b, c) = (3, 1, 1)
//              (causality f³ below the peak, f⁻¹ above; NANOGrav 15-yr new-physics paper)
//   sigw       log10_A_zeta ~ U[-3, 1], log10_fstar ~ U[-11, -5]  scalar-induced GWs from a
//              δ-peaked curvature spectrum (Kohri & Terada 2018, arXiv 1804.08577, eq. 29)
//   igw        log10_r ~ U[-30, 0], n_t ~ U[0, 6]               blue-tilted inflationary GWs:
//              Ω h² = (c_g/24) Ω_r h² r A_s (f/f_CMB)^n_t, A_s = 2.1e-9, f_CMB = 7.73e-17 Hz
// Cosmological templates are redshifted with c_g = 0.83 (g* = g*s = 10.75 in the PTA band)
// and Ω_r h² = 4.18e-5. Left out: cosmic strings (stable and metastable string spectra need
// numerical loop-distribution integrals, no defensible closed form), SIGW with a log-normal or
// box peak (a 2-D integral per frequency), and audible axions (tabulated templates).
//
//   auto fs = nfkit::FreeSpectrum::load("data/pta/ng15_30f_fs_hd_ceffyl").first_bins(14);
//   auto m = nfkit::make_pta_model("pl", fs);   // m.model.log_posterior(theta)
#include <string>
#include <vector>

#include "nfkit/inference/model.h"
#include "nfkit/physics/pta.h"

namespace nfkit {

struct PTAModel {
  std::string name;
  std::string description;
  Model model;
  /// S(f_k) [B, K] in s^3 for theta [B, 2].
  std::function<torch::Tensor(const torch::Tensor&)> psd;
};

/// Every model name above, in table order.
const std::vector<std::string>& pta_model_names();
/// The names joined by `sep` ("smbhb,pl,..." for option defaults and messages).
std::string pta_model_list(const std::string& sep = ",");
/// UsageError naming --models and listing the names unless `name` is one of them.
void check_pta_model(const std::string& name);
/// Builds a model on the data; UsageError (check_pta_model) if the name is unknown.
PTAModel make_pta_model(const std::string& name, const FreeSpectrum& data);

/// The δ-peak SIGW spectrum Ω_GW(x) during radiation domination (before redshifting),
/// x = f/f_star, per unit A_zeta^2.
torch::Tensor sigw_delta_shape(const torch::Tensor& x);

}  // namespace nfkit
