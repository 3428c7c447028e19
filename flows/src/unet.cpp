#include "nfkit/flows/unet.h"

#include <torch/nn/functional/upsampling.h>
#include <torch/torch.h>

#include <cmath>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"

namespace nfkit {

nlohmann::json UNetVelocityOptions::to_json() const {
  return {{"channels", channels_},         {"height", height_},       {"width", width_},
          {"num_classes", num_classes_},   {"base_channels", base_channels_},
          {"channel_mult", channel_mult_}, {"res_blocks", res_blocks_}, {"groups", groups_},
          {"time_features", time_features_}, {"dropout", dropout_}};
}

UNetVelocityOptions UNetVelocityOptions::from_json(const nlohmann::json& j) {
  UNetVelocityOptions o(j.at("channels").get<int64_t>(), j.at("height").get<int64_t>(), j.at("width").get<int64_t>());
  o.num_classes(j.at("num_classes").get<int64_t>())
      .base_channels(j.at("base_channels").get<int64_t>())
      .channel_mult(j.at("channel_mult").get<std::vector<int64_t>>())
      .res_blocks(j.at("res_blocks").get<int64_t>())
      .groups(j.at("groups").get<int64_t>())
      .time_features(j.at("time_features").get<int64_t>())
      .dropout(j.at("dropout").get<double>());
  return o;
}

void UNetVelocityOptions::validate() const {
  check_positive_int("UNetVelocity", "channels", channels_);
  check_positive_int("UNetVelocity", "height", height_);
  check_positive_int("UNetVelocity", "width", width_);
  if (num_classes_ < 0) usage_error("UNetVelocity", "num_classes must be >= 0");
  check_positive_int("--base-channels", "value", base_channels_);
  check_positive_int("--res-blocks", "value", res_blocks_);
  check_positive_int("--groups", "value", groups_);
  if (channel_mult_.empty()) usage_error("--channel-mult", "needs at least one level, e.g. 1,2,2");
  for (const auto m : channel_mult_) {
    if (m < 1) usage_error("--channel-mult", "multipliers must be >= 1");
    if (base_channels_ * m % groups_ != 0)
      usage_error("--groups", "every level's width (--base-channels x multiplier = " + std::to_string(base_channels_ * m) +
                                  ") must be divisible by the GroupNorm groups (" + std::to_string(groups_) + ")");
  }
  const int64_t f = int64_t{1} << (channel_mult_.size() - 1);
  if (height_ % f != 0 || width_ % f != 0)
    usage_error("--channel-mult", std::to_string(channel_mult_.size()) + " levels halve the image " +
                                      std::to_string(channel_mult_.size() - 1) + " times, but " + std::to_string(height_) +
                                      "x" + std::to_string(width_) + " is not divisible by " + std::to_string(f));
  if (time_features_ < 2 || time_features_ % 2 != 0) usage_error("--time-features", "must be an even number >= 2");
  if (!(dropout_ >= 0.0 && dropout_ < 1.0)) usage_error("--dropout", "must be in [0, 1)");
}

namespace detail {

UNetResBlockImpl::UNetResBlockImpl(int64_t in, int64_t out, int64_t emb, int64_t groups, double dropout)
    : dropout_(dropout) {
  using namespace torch::nn;
  norm1_ = register_module("norm1", GroupNorm(GroupNormOptions(groups, in)));
  conv1_ = register_module("conv1", Conv2d(Conv2dOptions(in, out, 3).padding(1)));
  emb_ = register_module("emb", Linear(emb, out));
  norm2_ = register_module("norm2", GroupNorm(GroupNormOptions(groups, out)));
  conv2_ = register_module("conv2", Conv2d(Conv2dOptions(out, out, 3).padding(1)));
  if (in != out) skip_ = register_module("skip", Conv2d(Conv2dOptions(in, out, 1)));
}

torch::Tensor UNetResBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& emb) {
  auto h = conv1_->forward(torch::silu(norm1_->forward(x)));
  h = h + emb_->forward(emb).unsqueeze(-1).unsqueeze(-1);
  h = torch::silu(norm2_->forward(h));
  if (dropout_ > 0.0) h = torch::dropout(h, dropout_, is_training());
  h = conv2_->forward(h);
  return h + (skip_ ? skip_->forward(x) : x);
}

}  // namespace detail

UNetVelocity::UNetVelocity(UNetVelocityOptions opts)
    : VelocityField(opts.dim(), opts.num_classes()), opts_(std::move(opts)) {
  opts_.validate();
  using namespace torch::nn;
  const int64_t base = opts_.base_channels(), E = 4 * base, G = opts_.groups();
  const double p = opts_.dropout();
  const int64_t half = opts_.time_features() / 2;
  freqs_ = register_buffer("freqs", torch::exp(-std::log(10000.0) * torch::arange(half, torch::kFloat32) / half));
  time1_ = register_module("time1", Linear(opts_.time_features(), E));
  time2_ = register_module("time2", Linear(E, E));
  if (opts_.num_classes() > 0)
    class_emb_ = register_module("class_emb", Linear(LinearOptions(opts_.num_classes(), E).bias(false)));
  in_ = register_module("in", Conv2d(Conv2dOptions(opts_.channels(), base, 3).padding(1)));

  // Widths of the skips in push order, to size the up path's concatenations.
  const auto& mult = opts_.channel_mult();
  const int64_t L = static_cast<int64_t>(mult.size());
  std::vector<int64_t> skips{base};
  int64_t ch = base;
  down_.resize(L);
  up_.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t w = base * mult[l];
    for (int64_t r = 0; r < opts_.res_blocks(); ++r) {
      down_[l].push_back(register_module("down" + std::to_string(l) + "_" + std::to_string(r),
                                         detail::UNetResBlock(ch, w, E, G, p)));
      ch = w;
      skips.push_back(ch);
    }
    if (l + 1 < L) {
      downsample_.push_back(register_module("downsample" + std::to_string(l),
                                            Conv2d(Conv2dOptions(ch, ch, 3).stride(2).padding(1))));
      skips.push_back(ch);
    }
  }
  for (int64_t m = 0; m < 2; ++m)
    middle_.push_back(register_module("middle" + std::to_string(m), detail::UNetResBlock(ch, ch, E, G, p)));
  upsample_.assign(static_cast<size_t>(L > 1 ? L - 1 : 0), torch::nn::Conv2d(nullptr));
  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t w = base * mult[l];
    for (int64_t r = 0; r <= opts_.res_blocks(); ++r) {
      const int64_t skip = skips.back();
      skips.pop_back();
      up_[l].push_back(register_module("up" + std::to_string(l) + "_" + std::to_string(r),
                                       detail::UNetResBlock(ch + skip, w, E, G, p)));
      ch = w;
    }
    if (l > 0)
      upsample_[l - 1] = register_module("upsample" + std::to_string(l - 1), Conv2d(Conv2dOptions(ch, ch, 3).padding(1)));
  }
  NFKIT_ASSERT(skips.empty(), "U-Net skip bookkeeping");
  out_norm_ = register_module("out_norm", GroupNorm(GroupNormOptions(G, ch)));
  out_ = register_module("out", Conv2d(Conv2dOptions(ch, opts_.channels(), 3).padding(1)));
  torch::NoGradGuard ng;
  out_->weight.zero_();
  out_->bias.zero_();
}

nlohmann::json UNetVelocity::config() const {
  auto j = opts_.to_json();
  j["type"] = "unet_velocity";
  return j;
}

torch::Tensor UNetVelocity::velocity(const torch::Tensor& t, const torch::Tensor& x, const torch::Tensor& context) {
  const int64_t B = x.size(0), L = static_cast<int64_t>(down_.size());
  const auto tb = t.dim() == 0 ? t.expand({B}) : t;
  const auto arg = (1000.0 * tb).unsqueeze(1) * freqs_.to(x.dtype());
  auto emb = time2_->forward(torch::silu(time1_->forward(torch::cat({torch::sin(arg), torch::cos(arg)}, 1))));
  if (class_emb_) emb = emb + class_emb_->forward(context.to(x.dtype()));
  const auto emb_act = torch::silu(emb);  // every block reads SiLU(emb)

  auto h = in_->forward(x.reshape({B, opts_.channels(), opts_.height(), opts_.width()}));
  std::vector<torch::Tensor> skips{h};
  for (int64_t l = 0; l < L; ++l) {
    for (auto& block : down_[l]) {
      h = block->forward(h, emb_act);
      skips.push_back(h);
    }
    if (l + 1 < L) {
      h = downsample_[l]->forward(h);
      skips.push_back(h);
    }
  }
  for (auto& block : middle_) h = block->forward(h, emb_act);
  namespace F = torch::nn::functional;
  for (int64_t l = L - 1; l >= 0; --l) {
    for (auto& block : up_[l]) {
      h = block->forward(torch::cat({h, skips.back()}, 1), emb_act);
      skips.pop_back();
    }
    if (l > 0) {
      h = F::interpolate(h, F::InterpolateFuncOptions()
                                .size(std::vector<int64_t>{2 * h.size(2), 2 * h.size(3)})
                                .mode(torch::kNearest));
      h = upsample_[l - 1]->forward(h);
    }
  }
  h = out_->forward(torch::silu(out_norm_->forward(h)));
  return h.reshape({B, opts_.dim()});
}

}  // namespace nfkit
