#pragma once
// Images for density models: 8-bit pixels <-> model space, dequantisation, bits per dimension.
//
// Model space: y = (pixel + u) / 128 - 1 in [-1, 1), u the dequantisation noise. With
// u ~ U[0, 1) (uniform dequantisation, Theis et al. 2016; TARFlow's likelihood evaluation),
// E_u[log q(y)] + D log(1/128) is a lower bound on the log-probability of the discrete image, so
//
//   bits/dim = (NLL_y + D ln 128) / (D ln 2)    with NLL_y = -log q(y) in nats,
//
// an upper bound on the discrete model's code length. Gaussian augmentation (pixel/128 - 1 +
// sigma * n, TARFlow's training for generation) is also provided; its bits/dim are not a
// discrete likelihood and are not reported as one.
//
//   auto y = nfkit::dequantize_uniform(images);          // uint8 [N, C, H, W] -> float [N, C*H*W]
//   auto bpd = nfkit::bits_per_dim(*flow, images, labels, 256, seed);
#include <torch/types.h>

#include <functional>

#include "nfkit/flows/distribution.h"

namespace nfkit {

/// Pixels 0..255 (uint8, or floating point holding pixel values) [N, C, H, W], [N, H, W] or
/// [N, C*H*W] -> float32 [N, C*H*W]: (pixel + U[0,1)) / 128 - 1.
torch::Tensor dequantize_uniform(const torch::Tensor& images);
/// Pixels (as above) -> float32 [N, dim]: pixel / 128 - 1 + (sigma > 0 ? sigma * N(0, 1) : 0), plus 1/256 to
/// centre the bins.
torch::Tensor pixels_to_model(const torch::Tensor& images, double sigma = 0.0);
/// float [N, C*H*W] in model space -> uint8 [N, C*H*W] (rounded, clamped to 0..255).
torch::Tensor model_to_pixels(const torch::Tensor& y);

/// Bits/dim of the discrete image from -log q(y) in nats over `dims` model-space values.
torch::Tensor nll_to_bits_per_dim(const torch::Tensor& nll, double dims);
double nll_to_bits_per_dim(double nll, double dims);

struct BitsPerDim {
  double mean = 0, se = 0;  ///< over images
  int64_t n = 0;
};
/// Test-set bits/dim with uniform dequantisation (one noise draw per image, seeded), in
/// batches; labels (int64 [N]) are one-hot encoded for class-conditional models. Any density
/// model over [N, C*H*W] (a Flow, or a ContinuousFlow, whose Hutchinson estimate is unbiased
/// so that the standard error over images includes the probes' spread). The model is
/// evaluated in eval mode, without gradients; `progress` (if set) hears (images done, N).
BitsPerDim bits_per_dim(Distribution& model, const torch::Tensor& images, const torch::Tensor& labels,
                        int64_t batch, uint64_t seed, int64_t num_classes = 0,
                        const std::function<void(int64_t, int64_t)>& progress = {});

/// Frechet distance between Gaussians fitted to two feature sets a [N, F] and b [M, F]
/// (Heusel et al., NeurIPS 2017, "FID" with Inception features; here with any features):
///   |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2),
/// unbiased covariances, in float64, the matrix square roots by symmetric eigendecomposition
/// (eigenvalues below 0 from round-off clipped to 0). Biased upward for finite N: compare
/// numbers at the same N only.
double frechet_distance(const torch::Tensor& a, const torch::Tensor& b);

/// One score step x + variance * grad_x log q(x | context) (Tweedie's formula: the posterior
/// mean of clean data given x = clean + N(0, variance) noise, with q standing in for the noisy
/// density). TARFlow's denoising of samples drawn from a model trained on noisy images.
torch::Tensor denoise_step(Flow& flow, const torch::Tensor& x, const torch::Tensor& context,
                           double variance);

/// The noise variance a model was trained with, for denoise_step: noise_sigma^2 for Gaussian
/// augmentation, 1 / (12 * 128^2) (the variance of uniform dequantisation) otherwise.
double training_noise_variance(double noise_sigma);

/// int64 labels [N] -> float one-hot [N, K] (K > 0); labels outside [0, K) are an error.
torch::Tensor one_hot_labels(const torch::Tensor& labels, int64_t num_classes);

}  // namespace nfkit
