#include "nfkit/flows/normalization.h"

#include <torch/torch.h>

#include "nfkit/core/checks.h"

namespace nfkit {

ActNorm::ActNorm(int64_t dim) : Transform(dim, 0) {
  shift_ = register_parameter("shift", torch::zeros({dim}));
  log_scale_ = register_parameter("log_scale", torch::zeros({dim}));
  initialized_ = register_buffer("initialized", torch::zeros({}));
}

json ActNorm::config() const { return {{"type", "actnorm"}, {"dim", dim()}}; }

bool ActNorm::initialized() const { return initialized_.item<double>() > 0.5; }

ValueAndLogDet ActNorm::forward_impl(const torch::Tensor& x, const torch::Tensor&) {
  if (is_training() && !initialized()) {
    torch::NoGradGuard ng;
    if (x.size(0) < 2)
      usage_error("ActNorm", "data-dependent initialisation needs a batch of >= 2 samples, got " +
                                 std::to_string(x.size(0)));
    shift_.copy_(x.mean(0));
    log_scale_.copy_(torch::log(x.std(0).clamp_min(1e-6)));
    initialized_.fill_(1.0);
  }
  return {(x - shift_) * torch::exp(-log_scale_), (-log_scale_.sum()).expand({x.size(0)})};
}

ValueAndLogDet ActNorm::inverse_impl(const torch::Tensor& z, const torch::Tensor&) {
  return {z * torch::exp(log_scale_) + shift_, log_scale_.sum().expand({z.size(0)})};
}

ElementwiseAffine::ElementwiseAffine(const torch::Tensor& shift, const torch::Tensor& log_scale,
                                     bool learnable)
    : Transform(shift.numel(), 0), learnable_(learnable) {
  check_dim("ElementwiseAffine", "shift", shift, 1);
  check_size("ElementwiseAffine", "log_scale", log_scale, 0, shift.numel());
  check_finite("ElementwiseAffine", "shift", shift, Kind::usage);
  check_finite("ElementwiseAffine", "log_scale", log_scale, Kind::usage);
  auto s = shift.detach().clone().to(torch::kFloat32);
  auto l = log_scale.detach().clone().to(torch::kFloat32);
  if (learnable) {
    shift_ = register_parameter("shift", s);
    log_scale_ = register_parameter("log_scale", l);
  } else {
    shift_ = register_buffer("shift", s);
    log_scale_ = register_buffer("log_scale", l);
  }
}

std::shared_ptr<ElementwiseAffine> ElementwiseAffine::standardize(const torch::Tensor& x) {
  check_dim("ElementwiseAffine::standardize", "x", x, 2);
  if (x.size(0) < 2)
    usage_error("ElementwiseAffine::standardize", "needs >= 2 samples, got " + std::to_string(x.size(0)));
  auto xd = x.detach().to(torch::kFloat64);
  return std::make_shared<ElementwiseAffine>(xd.mean(0), torch::log(xd.std(0).clamp_min(1e-12)),
                                             false);
}

json ElementwiseAffine::config() const {
  return {{"type", "elementwise_affine"}, {"dim", dim()}, {"learnable", learnable_}};
}

ValueAndLogDet ElementwiseAffine::forward_impl(const torch::Tensor& x, const torch::Tensor&) {
  return {(x - shift_) * torch::exp(-log_scale_), (-log_scale_.sum()).expand({x.size(0)})};
}

ValueAndLogDet ElementwiseAffine::inverse_impl(const torch::Tensor& z, const torch::Tensor&) {
  return {z * torch::exp(log_scale_) + shift_, log_scale_.sum().expand({z.size(0)})};
}

}  // namespace nfkit
