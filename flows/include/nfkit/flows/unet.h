#pragma once
// A small convolutional U-Net velocity field v(t, x, context) for images, the field of flow
// matching on images (torchcfm's MNIST / CIFAR-10 examples, after the DDPM U-Net of Ho et
// al., NeurIPS 2020, and Ronneberger et al., MICCAI 2015).
//
// Rows of x are images [C, H, W] flattened channel-major (the VelocityField contract is
// [B, dim], dim = C*H*W; images.h's model space), so a UNetVelocity is a drop-in field of a
// ContinuousFlow: exact ODE sampling, Hutchinson log-densities, checkpoints.
//
// Architecture (levels L = channel_mult.size()):
//   time    sinusoidal features of 1000 t (the DDPM embedding, time_features of them) ->
//           Linear -> SiLU -> Linear to E = 4 base_channels; a one-hot class context [B, K]
//           adds a learned embedding Linear(K, E) (an all-zero row is the null label).
//   down    3x3 conv to base_channels; per level l: res_blocks residual blocks at
//           base_channels * channel_mult[l] (their outputs kept as skips), then a stride-2
//           3x3 conv (not after the last level).
//   middle  two residual blocks at the last level's width.
//   up      per level from the last: res_blocks + 1 residual blocks on [h, skip] (concatenated
//           channels), then nearest-neighbour x2 upsampling + 3x3 conv (not after level 0).
//   out     GroupNorm -> SiLU -> 3x3 conv to C, initialised to zero (the untrained field is 0).
//   Residual block: GroupNorm -> SiLU -> conv3x3 -> + Linear(SiLU(temb)) per channel ->
//           GroupNorm -> SiLU -> dropout -> conv3x3, plus the input (1x1 conv if the width
//           changes).
// Every normalisation is per image (GroupNorm, never batch statistics), so rows are
// independent: d v_i / d x_j = 0 for rows i != j, which the Hutchinson estimate of a row's
// divergence relies on. H and W must be divisible by 2^(L-1); every width by `groups`.
//
//   auto v = std::make_shared<nfkit::UNetVelocity>(nfkit::UNetVelocityOptions(1, 28, 28));
//   auto cnf = std::make_shared<nfkit::ContinuousFlow>(
//       std::make_shared<nfkit::StandardNormal>(784), v);
#include <torch/arg.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <vector>

#include "nfkit/flows/velocity.h"

namespace nfkit {

struct UNetVelocityOptions {
  UNetVelocityOptions(int64_t channels, int64_t height, int64_t width)
      : channels_(channels), height_(height), width_(width) {}
  TORCH_ARG(int64_t, channels);
  TORCH_ARG(int64_t, height);
  TORCH_ARG(int64_t, width);
  /// 0 = unconditional; K > 0 = a one-hot class context [B, K].
  TORCH_ARG(int64_t, num_classes) = 0;
  /// Width of the first level.
  TORCH_ARG(int64_t, base_channels) = 32;
  /// Width multiplier per level (its length is the number of levels).
  TORCH_ARG(std::vector<int64_t>, channel_mult) = std::vector<int64_t>({1, 2, 2});
  /// Residual blocks per level on the way down.
  TORCH_ARG(int64_t, res_blocks) = 1;
  /// GroupNorm groups.
  TORCH_ARG(int64_t, groups) = 8;
  /// Sinusoidal time features (even).
  TORCH_ARG(int64_t, time_features) = 64;
  TORCH_ARG(double, dropout) = 0.0;

 public:
  int64_t dim() const { return channels_ * height_ * width_; }
  nlohmann::json to_json() const;
  static UNetVelocityOptions from_json(const nlohmann::json& j);
  /// UsageError naming the option (--base-channels, --channel-mult, --groups, ...).
  void validate() const;
};

namespace detail {
// One residual block with a time (and class) embedding; see the header comment.
class UNetResBlockImpl : public torch::nn::Module {
 public:
  UNetResBlockImpl(int64_t in, int64_t out, int64_t emb, int64_t groups, double dropout);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);

 private:
  torch::nn::GroupNorm norm1_{nullptr}, norm2_{nullptr};
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, skip_{nullptr};
  torch::nn::Linear emb_{nullptr};
  double dropout_;
};
TORCH_MODULE(UNetResBlock);
}  // namespace detail

class UNetVelocity : public VelocityField {
 public:
  explicit UNetVelocity(UNetVelocityOptions opts);
  nlohmann::json config() const override;
  const UNetVelocityOptions& options() const { return opts_; }

 protected:
  torch::Tensor velocity(const torch::Tensor& t, const torch::Tensor& x,
                         const torch::Tensor& context) override;

 private:
  UNetVelocityOptions opts_;
  torch::Tensor freqs_;  // buffer [time_features / 2]
  torch::nn::Linear time1_{nullptr}, time2_{nullptr}, class_emb_{nullptr};
  torch::nn::Conv2d in_{nullptr}, out_{nullptr};
  torch::nn::GroupNorm out_norm_{nullptr};
  std::vector<std::vector<detail::UNetResBlock>> down_, up_;  // per level
  std::vector<torch::nn::Conv2d> downsample_, upsample_;     // per level boundary
  std::vector<detail::UNetResBlock> middle_;
};

}  // namespace nfkit
