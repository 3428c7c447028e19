#pragma once
// An autoregressive density over bounded continuous coordinates with categorical conditionals
// over uniform bins: the density model of Autoregressive Boltzmann Generators (ArBG; Rehman,
// Tan, Bengio, Bose & Tong 2026, github.com/danyalrehman/autobg), a PixelCNN/GPT-style
// causal transformer over discretised coordinates.
//
// Coordinate d lives on [low_d, high_d), cut into K bins of width w_d = (high_d - low_d) / K.
// The D coordinates are read in a token order pi (one token per coordinate; token t is
// coordinate pi_t), and
//
//     log q(x) = sum_t log p(k_t | k_<t) - sum_d log w_d,     k_t = floor((x_pi_t - low) / w),
//
// i.e. each token's bin has the categorical probability of a causal transformer given the
// earlier tokens' bins, and the value is uniform within its bin. q is an exact, normalised
// density on the box (brute-force tested); outside the box log q = -inf.
//
// Sampling draws the bins token by token with a key/value cache (D passes of one token) and a
// uniform offset within each bin. Two sampling modifiers change the sampled density, and
// log_prob always returns the density of the modified sampler, so importance weights stay exact:
//   temperature T > 0  each conditional's logits divided by T, p_T(k) ∝ p(k)^(1/T) (token by
//                      token; ArBG samples alanine dipeptide at T = 1.03). Unlike the flows'
//                      base temperature (distribution.h) T > 1 is allowed.
//   top_p in (0, 1]    nucleus sampling: each conditional restricted to the most probable bins
//                      whose mass first reaches top_p (ties broken by bin index) and
//                      renormalised; 1 = off. Bins outside the nucleus get log q = -inf.
//
// Differences from the ArBG reference code, all for an exact density: bins are half-open
// intervals of equal width (the reference rounds to K grid points, which gives the two end
// bins half the width of the others while sampling them with a full-width offset), log q
// includes -sum log w (a constant the reference omits), and data outside the box are refused,
// not clipped (count_outside says how many rows fall outside).
//
// Network: the start token and the bin indices are embedded (a table of K + 1 rows), then the
// pre-norm causal transformer of flows/tarflow.h (learned positions, LayerNorm, GELU MLP) maps
// position t's input (the bin of token t - 1) to K logits for token t; its output projection
// starts at zero, so an untrained model is uniform on the box. ArBG's transformer uses RMSNorm,
// SwiGLU and sinusoidal positions with 8 layers of width 256; ours defaults to 4 layers of
// width 128 for two-core machines.
//
//   nfkit::BinnedAutoregressiveOptions o; o.bins = 256;
//   auto q = nfkit::make_binned_autoregressive(o, train_x);  // box from the data, 5% margin
//   nfkit::Trainer(q, ...);                                  // maximum likelihood as for flows
//   q->set_temperature(1.03);
//   auto [x, log_q] = q->sample_and_log_prob(1000);
#include <torch/nn/modules/embedding.h>

#include <vector>

#include "nfkit/flows/distribution.h"
#include "nfkit/flows/tarflow.h"

namespace nfkit {

struct BinnedAutoregressiveOptions {
  int64_t dim = 2;
  int64_t bins = 256;
  int64_t layers = 4;      ///< transformer layers
  int64_t hidden = 128;    ///< transformer width (and the bin embedding's)
  int64_t head_dim = 32;   ///< width of one attention head
  /// Token order: token t models coordinate order[t]; empty = 0, 1, ..., dim - 1.
  std::vector<int64_t> order;
  json to_json() const;
  static BinnedAutoregressiveOptions from_json(const json& j);
};

class BinnedAutoregressive : public Distribution {
 public:
  /// low, high [dim]: the box; every low_d < high_d.
  BinnedAutoregressive(BinnedAutoregressiveOptions opts, const torch::Tensor& low,
                       const torch::Tensor& high);

  double temperature() const override { return temperature_; }
  /// T > 0 (see above).
  void set_temperature(double T) override;
  double top_p() const { return top_p_; }
  /// p in (0, 1]; 1 = off.
  void set_top_p(double p);
  json config() const override;
  torch::TensorOptions tensor_options() const override { return low_.options(); }
  const BinnedAutoregressiveOptions& options() const { return opts_; }
  torch::Tensor low() const { return low_; }
  torch::Tensor high() const { return high_; }

  /// Rows of x [N, dim] with a coordinate outside [low, high) (log q = -inf there).
  int64_t count_outside(const torch::Tensor& x) const;
  /// Bin indices [N, dim] of x (coordinate order; values outside the box clamped to the end bins).
  torch::Tensor bin_index(const torch::Tensor& x) const;
  /// Log-probabilities [N, dim, bins] of every bin of every token given the earlier tokens
  /// of x (token order, after temperature and top-p): what log_prob sums, for tests and
  /// diagnostics.
  torch::Tensor conditional_log_probs(const torch::Tensor& x);

 protected:
  torch::Tensor log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  std::tuple<torch::Tensor, torch::Tensor> sample_impl(int64_t n, const torch::Tensor& context) override;

 private:
  // Logits [B, n, K] of positions [pos0, pos0 + n) from the bins of the previous tokens
  // (prev [B, n], the start token is index K).
  torch::Tensor logits(const torch::Tensor& prev, int64_t pos0, KVCache* cache);
  // floor((x - low) / w) in the dtype of the box, coordinate order (NaN stays NaN).
  torch::Tensor unclamped_bins(const torch::Tensor& x) const;
  // Of unclamped bins u: the bin indices clamped into [0, K) (NaN -> 0), and [N] bool rows with
  // a coordinate outside [low, high) (or NaN).
  torch::Tensor clamped(const torch::Tensor& u) const;
  torch::Tensor outside_rows(const torch::Tensor& u) const;
  // conditional_log_probs of bins k_tok [B, dim] in token order.
  torch::Tensor token_log_probs(const torch::Tensor& k_tok);
  // Temperature and top-p applied; log-probabilities over the last dimension.
  torch::Tensor filtered_log_softmax(const torch::Tensor& logits) const;

  BinnedAutoregressiveOptions opts_;
  double temperature_ = 1.0, top_p_ = 1.0;
  torch::Tensor low_, high_;        // [dim], coordinate order
  torch::Tensor order_;             // [dim] long (not a buffer: dtype conversions skip it)
  torch::nn::Embedding embed_{nullptr};
  CausalTransformer net_{nullptr};
};

/// A BinnedAutoregressive whose box is the per-coordinate range of train_x [N, dim] widened by
/// `margin` of that range on each side (coordinates that do not vary get +-margin).
std::shared_ptr<BinnedAutoregressive> make_binned_autoregressive(BinnedAutoregressiveOptions opts,
                                                                 const torch::Tensor& train_x,
                                                                 double margin = 0.05);

}  // namespace nfkit
