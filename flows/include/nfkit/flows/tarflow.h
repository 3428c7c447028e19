#pragma once
// Transformer autoregressive flows over image patches.
//
//   TARFlow:    Zhai et al., "Normalizing Flows are Capable Generative Models",
//               arXiv 2412.06329 (2024).
//   STARFlow:   Gu et al., "STARFlow: Scaling Latent Normalizing Flows for High-resolution
//               Image Synthesis", arXiv 2506.06276 (2025): learned start token, softplus
//               scale with soft clipping, Gaussian-product guidance, chunked Jacobi.
//   GS-Jacobi:  Liu & Qin, "Accelerate TarFlow Sampling with GS-Jacobi Iteration",
//               arXiv 2505.12849 (2025): Jacobi / Gauss-Seidel-Jacobi inversion, the
//               Convergence Ranking Metric (CRM) and Initial Guessing Metric (IGM).
//
// An image [B, C, H, W] (flattened to [B, C*H*W], the Transform contract) is cut into
// T = (H/p)(W/p) patches, tokens of D = C p^2 values (channel fastest). Each block b applies,
// in token order (identity for even b, reversed for odd b),
//
//     z_t = (x_t - mu_t(x_<t)) / sigma_t(x_<t),     log|det dz/dx| = -sum_t log sigma_t,
//
// with (mu_t, log sigma_t) from a causal transformer on the earlier tokens:
//   start = "shift" (TARFlow): positions 0..T-2 read x_0..x_{T-2}; token t uses position t-1,
//           token 0 is left unchanged (mu = 0, sigma = 1).
//   start = "token" (STARFlow): position 0 reads a learned start token, position p >= 1 reads
//           x_{p-1}; token t uses position t (so token 0 is transformed too).
//   scale = "exp": log sigma = a (TARFlow); "softplus": sigma = softplus(a + ln(e - 1)) (1 at
//           a = 0, STARFlow). soft_clip c > 0 replaces log sigma by c tanh(log sigma / c).
// The output projection starts at zero, so an untrained flow is the identity.
//
// Class-conditional models take a one-hot context [B, K]; an all-zero row is the null label
// (unconditional). During training, rows are dropped to the null label with probability
// label_drop, which is what classifier-free guidance needs.
//
// Inversion (sampling) solves, per block, the triangular system x_t = mu_t(x_<t) +
// sigma_t(x_<t) z_t. All samplers below solve the same system and agree at convergence:
//   sequential: one token at a time with a key/value cache (T serial passes of 1 token).
//   jacobi:     all tokens updated in parallel under the causal mask until the largest change
//               is below tol; exact after T - 1 iterations (start = "shift", token 0 is known)
//               or T (start = "token").
//   gs-jacobi:  the tokens are split into M consecutive modules, solved one after another
//               (Gauss-Seidel), Jacobi inside each module against the cached prefix; per-block
//               module counts, iteration caps and initial guesses (BlockStrategy).
//   STARFlow's chunked Jacobi is gs-jacobi with the relative-change stop (relative_tol).
//   A sliding window (BlockStrategy::window = W, our variant of GS-Jacobi) replaces the fixed
//   modules by the W tokens after the solved prefix: the window advances as soon as its
//   leading tokens converge, so no pass is spent only on confirming a module's convergence.
//   W = 1 is the sequential sampler, W = T plain Jacobi.
//
//   auto flow = nfkit::make_tarflow(nfkit::TarFlowOptions().height(28).width(28).patch(4));
//   auto tf = std::dynamic_pointer_cast<nfkit::TarFlow>(flow->transform());
//   nfkit::SampleOptions so; so.sampler = nfkit::SamplerKind::kGSJacobi;
//   auto x = tf->sample_inverse(z, {}, so);
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <string>
#include <vector>

#include "nfkit/flows/distribution.h"

namespace nfkit {

struct TarFlowOptions {
  TORCH_ARG(int64_t, channels) = 1;
  TORCH_ARG(int64_t, height) = 28;
  TORCH_ARG(int64_t, width) = 28;
  TORCH_ARG(int64_t, patch) = 4;
  TORCH_ARG(int64_t, blocks) = 4;
  /// Transformer layers per block.
  TORCH_ARG(int64_t, layers) = 2;
  /// Transformer width (model dimension).
  TORCH_ARG(int64_t, hidden) = 128;
  /// Width of one attention head; hidden / head_dim heads.
  TORCH_ARG(int64_t, head_dim) = 32;
  /// 0 = unconditional; K > 0 = class-conditional with a one-hot context [B, K].
  TORCH_ARG(int64_t, num_classes) = 0;
  TORCH_ARG(double, label_drop) = 0.1;
  TORCH_ARG(std::string, start) = "shift";  ///< shift | token
  TORCH_ARG(std::string, scale) = "exp";    ///< exp | softplus
  TORCH_ARG(double, soft_clip) = 0.0;       ///< 0 = none

 public:
  int64_t tokens() const { return (height_ / patch_) * (width_ / patch_); }
  int64_t token_dim() const { return channels_ * patch_ * patch_; }
  int64_t dim() const { return channels_ * height_ * width_; }
  json to_json() const;
  static TarFlowOptions from_json(const json& j);
};

/// Keys and values per transformer layer in buffers [B, heads, positions, hd]: a pass over
/// positions [pos0, pos0 + n) writes its keys and values there, and `length` positions (the
/// solved prefix) are final. Buffers are allocated on the first pass.
struct KVCache {
  std::vector<torch::Tensor> k, v;
  int64_t length = 0;
  /// The first n positions written by the last pass become final.
  void commit(int64_t n) { length += n; }
};

/// Pre-norm causal transformer: input projection + position (+ class) embedding, `layers` x
/// [LN -> multi-head causal attention -> residual, LN -> MLP 4x GELU -> residual], final LN
/// and a zero-initialised output projection to 2 D values per position.
class CausalTransformerImpl : public torch::nn::Module {
 public:
  CausalTransformerImpl(int64_t positions, int64_t in_dim, int64_t out_dim, int64_t hidden,
                        int64_t head_dim, int64_t layers, int64_t num_classes);
  /// Outputs [B, n, out_dim] of positions [pos0, pos0 + n) given inputs u [B, n, in_dim].
  /// Without a cache, pos0 must be 0. With one, positions [0, pos0) come from it
  /// (cache->length must equal pos0) and this pass's keys and values are written into it at
  /// [pos0, pos0 + n); the caller commits those whose inputs are final.
  /// class_emb [B, hidden] or undefined; attn_temperature scales the attention logits by 1/tau.
  torch::Tensor forward(const torch::Tensor& u, int64_t pos0, KVCache* cache,
                        const torch::Tensor& class_emb, double attn_temperature = 1.0);
  /// The class embedding of a one-hot context (zero rows -> the learned null embedding).
  torch::Tensor class_embedding(const torch::Tensor& onehot);
  int64_t heads() const { return heads_; }

 private:
  int64_t hidden_, heads_, head_dim_, num_classes_;
  torch::nn::Linear in_proj_{nullptr}, out_proj_{nullptr}, class_proj_{nullptr};
  torch::Tensor pos_emb_, null_emb_;
  std::vector<torch::nn::LayerNorm> ln1_, ln2_;
  std::vector<torch::nn::Linear> qkv_, attn_out_, fc1_, fc2_;
  torch::nn::LayerNorm ln_f_{nullptr};
};
TORCH_MODULE(CausalTransformer);

enum class SamplerKind { kSequential, kJacobi, kGSJacobi };
SamplerKind parse_sampler(const std::string& name);  ///< sequential | jacobi | gs-jacobi
std::string sampler_name(SamplerKind k);

/// How one block is inverted by the gs-jacobi sampler.
struct BlockStrategy {
  int64_t modules = 1;    ///< consecutive token groups solved one after another
  int64_t max_iters = 0;  ///< per module; 0 = the exact bound (its token count)
  std::string init = "latent";  ///< initial guess: latent (the block's z) | zeros
  /// > 0: instead of fixed modules, a sliding window of this many tokens starting at the
  /// first unsolved token (max_iters then caps the passes a token spends in the window).
  int64_t window = 0;
};

enum class GuidanceKind { kNone, kCFG, kProduct, kAttention };
GuidanceKind parse_guidance(const std::string& name);  ///< none | cfg | product | attention

/// STARFlow's Gaussian-product guidance for a token: the Gaussian proportional to
/// N(mu_c, s_c^2)^(1+w) / N(mu_u, s_u^2)^w, i.e. precision (1+w)/s_c^2 - w/s_u^2 and the
/// matching mean, returned as (mean, log sigma). Where the unconditional branch is the sharper
/// one (s_u < s_c) that product widens the token and is not normalisable for large w, so 1/s_u^2
/// is capped at 1/s_c^2: there the result keeps the conditional scale and moves the mean like
/// cfg, (1+w) mu_c - w mu_u. w broadcasts (annealing passes one weight per token).
std::tuple<torch::Tensor, torch::Tensor> product_guidance(const torch::Tensor& mu_c, const torch::Tensor& ls_c,
                                                          const torch::Tensor& mu_u, const torch::Tensor& ls_u,
                                                          const torch::Tensor& w);

struct SampleOptions {
  SamplerKind sampler = SamplerKind::kSequential;
  /// Jacobi stop: largest absolute change of a token value below tol (0 = run to the cap).
  double tol = 1e-6;
  /// If > 0, stop instead when ||x_k - x_{k-1}|| / ||x_k|| < relative_tol (STARFlow).
  double relative_tol = 0.0;
  /// gs-jacobi: one strategy per block (in forward order); empty = `modules` for every block.
  std::vector<BlockStrategy> blocks;
  int64_t modules = 7;
  int64_t window = 0;  ///< gs-jacobi without `blocks`: sliding window (0 = fixed modules)
  std::string init = "latent";
  /// Guidance of strength w: cfg mixes (mu, log sigma) as (1 + w) cond - w uncond (TARFlow);
  /// product samples the Gaussian N(mu_c, s_c^2)^(1+w) / N(mu_u, s_u^2)^w (STARFlow; see
  /// product_guidance);
  /// attention uses the model itself with attention logits / attn_temperature as the
  /// negative branch (unconditional models). anneal: w grows linearly over tokens, 0 -> w.
  GuidanceKind guidance = GuidanceKind::kNone;
  double guidance_weight = 0.0;
  bool guidance_anneal = false;
  double attn_temperature = 2.0;
  /// Iterates are kept finite: NaN -> 0, |x| clamped to this bound (data and latents live on
  /// an O(1) scale, so the bound is only reached by diverging iterates).
  double clamp = 1e3;
};

struct SampleStats {
  std::vector<int64_t> iterations;      ///< transformer passes per block (forward order)
  std::vector<int64_t> token_positions; ///< token-positions evaluated per block
  int64_t clamped = 0;                  ///< iterate values that were non-finite or clamped
};

/// Per-block diagnostics for choosing gs-jacobi strategies (GS-Jacobi paper, sec. 4), from a
/// batch of training images pushed forward through the flow; see docs/tarflow.md.
struct BlockMetrics {
  double crm = 0.0;        ///< Convergence Ranking Metric (larger = tougher)
  double igm_latent = 0.0; ///< Initial Guessing Metric of the latent guess (smaller = better)
  double igm_zeros = 0.0;  ///< ... of the zero guess
  double jacobi_iters = 0; ///< mean Jacobi iterations to tol from the chosen guess
  BlockStrategy chosen;
};

class TarFlow : public Transform {
 public:
  explicit TarFlow(TarFlowOptions opts);
  json config() const override;
  bool inverse_is_single_pass() const override { return false; }
  const TarFlowOptions& options() const { return opts_; }

  /// Inverse with a chosen sampler and guidance. z [B, dim]; context one-hot or undefined.
  ValueAndLogDet sample_inverse(const torch::Tensor& z, const torch::Tensor& context,
                                const SampleOptions& so, SampleStats* stats = nullptr);

  /// CRM and IGM per block on images x [N, dim] (and labels), and the strategy they choose:
  /// blocks whose CRM is at least crm_fraction of the largest get `modules` modules, the
  /// others plain Jacobi; each block starts from the guess with the smaller IGM.
  std::vector<BlockMetrics> block_metrics(const torch::Tensor& x, const torch::Tensor& context,
                                          int64_t modules, double tol, double crm_fraction = 0.5);

  /// [B, dim] <-> [B, T, D] (tokens in raster order of patches, channel fastest in a token).
  torch::Tensor patchify(const torch::Tensor& x) const;
  torch::Tensor unpatchify(const torch::Tensor& tokens) const;

 protected:
  ValueAndLogDet forward_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  ValueAndLogDet inverse_impl(const torch::Tensor& z, const torch::Tensor& context) override;

 private:
  struct Params;
  // Transformer inputs of a block for tokens x [B, T, D] in its order: x_0..x_{T-2}, after the
  // learned start token when start = "token".
  torch::Tensor block_inputs(int64_t b, const torch::Tensor& x) const;
  // One block forward on tokens in the block's order: z, log|det| [B].
  std::tuple<torch::Tensor, torch::Tensor> block_forward(int64_t b, const torch::Tensor& x,
                                                         const torch::Tensor& cemb);
  // Affine parameters for the tokens of positions [p0, p0 + n) from their inputs u.
  std::tuple<torch::Tensor, torch::Tensor> block_params(int64_t b, const torch::Tensor& u,
                                                        int64_t p0, KVCache* cache,
                                                        const torch::Tensor& cemb,
                                                        double attn_temperature);
  torch::Tensor block_inverse(int64_t b, const torch::Tensor& z, const torch::Tensor& cemb,
                              const torch::Tensor& cemb_neg, const SampleOptions& so,
                              const BlockStrategy& strategy, int64_t* passes, int64_t* positions,
                              int64_t* clamped, torch::Tensor* logdet);
  torch::Tensor log_sigma(const torch::Tensor& a) const;
  torch::Tensor reorder(int64_t b, const torch::Tensor& tokens) const;
  torch::Tensor drop_labels(const torch::Tensor& context);

  TarFlowOptions opts_;
  int64_t T_, D_, off_;
  std::vector<CausalTransformer> nets_;
  torch::Tensor start_;  // [blocks, D] learned start tokens (start = "token")
};

/// TarFlow over a standard normal base.
std::shared_ptr<Flow> make_tarflow(const TarFlowOptions& opts);

}  // namespace nfkit
