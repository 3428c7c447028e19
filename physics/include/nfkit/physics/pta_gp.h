#pragma once
// Time-domain Gaussian-process likelihood of pulsar-timing residuals (the standard PTA
// likelihood, e.g. van Haasteren & Vallisneri 2014, arXiv 1407.1838; NANOGrav 15-yr GWB
// search, Agazie et al. 2023): for pulsars a = 1..P with residuals r_a (s) at times t_a (s)
// and white-noise standard deviations sigma_a (s),
//   r_a = F_a c_a + n_a,   n_a ~ N(0, N_a = diag sigma_a^2),
// F_a the Fourier basis [sin(2π f_k t), cos(2π f_k t)] with f_k = k/T (k = 1..K, T the
// array's time span), and Gaussian coefficients with covariance
//   <c_{a,k} c_{b,k}> = delta_ab phi_a(f_k) + Gamma_ab phi_gw(f_k),   phi(f) = S(f)/T,
// for both the sine and the cosine of each frequency. S is the power-law PSD of physics/pta.h
// for the intrinsic red noise of each pulsar (log10_A_a, gamma_a) and for the common process
// (log10_A, gamma). Gamma is the Hellings-Downs overlap reduction function,
//   Gamma_ab = 3/2 x ln x - x/4 + 1/2,  x = (1 - cos zeta_ab)/2,  Gamma_aa = 1,
// or the identity for the uncorrelated common process. Marginalising the coefficients, by the
// Woodbury identity with Sigma = Phi^-1 + F^T N^-1 F and d = F^T N^-1 r:
//   ln L = -1/2 r^T N^-1 r + 1/2 d^T Sigma^-1 d - 1/2 ln|N| - 1/2 ln|Phi| - 1/2 ln|Sigma|
//          - n/2 ln 2π.
// Without correlations the likelihood is a product over pulsars (each a 2K x 2K system);
// with Hellings-Downs the system is 2KP x 2KP.
//
// Parameters theta [B, 2P + 2]: (log10_A_1, gamma_1, ..., log10_A_P, gamma_P, log10_A, gamma).
//
//   auto sim = nfkit::simulate_pta(nfkit::PTASimulation{});        // 10 pulsars
//   nfkit::PTALikelihood like(sim.pulsars, 5, /*hellings_downs=*/false);
//   auto lnL = like.log_likelihood(theta);                          // [B]
#include <torch/types.h>

#include <string>
#include <vector>

namespace nfkit {

struct Pulsar {
  std::string name;
  torch::Tensor toas;       ///< [n] s
  torch::Tensor residuals;  ///< [n] s
  torch::Tensor sigma;      ///< [n] s, white-noise standard deviation
  torch::Tensor position;   ///< [3] unit vector towards the pulsar
};

/// Hellings-Downs matrix [P, P] of unit positions (ones on the diagonal).
torch::Tensor hellings_downs(const std::vector<Pulsar>& pulsars);

class PTALikelihood {
 public:
  /// K frequencies f_k = k/T with T the span of all TOAs. UsageError on empty or
  /// inconsistent pulsars (names them).
  PTALikelihood(std::vector<Pulsar> pulsars, int64_t K, bool hellings_downs);
  int64_t pulsars() const { return static_cast<int64_t>(pulsars_.size()); }
  int64_t dim() const { return 2 * pulsars() + 2; }
  double tspan() const { return tspan_; }
  const torch::Tensor& freqs() const { return f_; }
  /// ln L [B] of theta [B, 2P + 2] (float64). Non-positive-definite systems give -inf.
  torch::Tensor log_likelihood(const torch::Tensor& theta) const;
  /// ln L_a [B] of pulsar a alone, given its phi [B, K] (s^2, per sine and cosine) — the
  /// factor of the uncorrelated likelihood (used by quadrature references).
  torch::Tensor pulsar_log_likelihood(int64_t a, const torch::Tensor& phi) const;
  /// The parameter names in theta's order.
  std::vector<std::string> names() const;

 private:
  std::vector<Pulsar> pulsars_;
  int64_t K_;
  bool hd_;
  double tspan_ = 0.0;
  torch::Tensor f_;                       // [K]
  std::vector<torch::Tensor> FNF_, d_;    // [2K, 2K], [2K]
  std::vector<double> const_;             // -1/2 r N^-1 r - 1/2 ln|N| - n/2 ln 2π
  torch::Tensor gamma_;                   // [P, P]
};

struct PTASimulation {
  int64_t pulsars = 10;
  int64_t toas = 200;            ///< per pulsar, at random times over the span
  double years = 15.0;
  double sigma = 1e-7;           ///< white noise, s
  int64_t components = 5;        ///< K of the injected processes
  double gw_log10_A = -14.3;
  double gw_gamma = 13.0 / 3.0;
  bool hellings_downs = false;   ///< inject a correlated (true) or uncorrelated common process
  uint64_t seed = 51;
};

struct SimulatedPTA {
  std::vector<Pulsar> pulsars;
  torch::Tensor truth;  ///< [2P + 2] injected parameters in theta's order
};

/// Residuals drawn from the model itself (red noise with log10_A_a ~ U[-14.5, -13.5],
/// gamma_a ~ U[2, 5], the common process, white noise), pulsars at random sky positions.
SimulatedPTA simulate_pta(const PTASimulation& sim);

}  // namespace nfkit
