#include "nfkit/flows/transform.h"

#include <torch/torch.h>

#include "nfkit/core/checks.h"

namespace nfkit {

Transform::Transform(int64_t dim, int64_t context_dim) : dim_(dim), context_dim_(context_dim) {
  check_positive_int("Transform", "dim", dim);
  if (context_dim < 0)
    usage_error("Transform", "context_dim is " + std::to_string(context_dim) + ", but must be >= 0");
}

void Transform::check_input(const char* fn, const char* name, const torch::Tensor& x,
                            const torch::Tensor& context) const {
  check_dim(fn, name, x, 2);
  check_size(fn, name, x, 1, dim_);
  check_floating(fn, name, x);
  check_context(fn, context, context_dim_, x.size(0), x);
}

ValueAndLogDet Transform::forward(const torch::Tensor& x, const torch::Tensor& context) {
  check_input("Transform::forward", "x", x, context);
  return forward_impl(x, context);
}

ValueAndLogDet Transform::inverse(const torch::Tensor& z, const torch::Tensor& context) {
  check_input("Transform::inverse", "z", z, context);
  return inverse_impl(z, context);
}

// ------------------------------------------------------------------ composite

namespace {
int64_t common_dim(const std::vector<TransformPtr>& ts) {
  if (ts.empty()) usage_error("CompositeTransform", "needs at least one transform");
  for (const auto& t : ts)
    if (t->dim() != ts.front()->dim())
      usage_error("CompositeTransform", "members have dims " + std::to_string(ts.front()->dim()) +
                                            " and " + std::to_string(t->dim()) +
                                            ", but must all have the same dim");
  return ts.front()->dim();
}
int64_t max_context(const std::vector<TransformPtr>& ts) {
  int64_t c = 0;
  for (const auto& t : ts) {
    if (c > 0 && t->context_dim() > 0 && t->context_dim() != c)
      usage_error("CompositeTransform", "members have different context_dim");
    c = std::max(c, t->context_dim());
  }
  return c;
}
}  // namespace

CompositeTransform::CompositeTransform(std::vector<TransformPtr> transforms)
    : Transform(common_dim(transforms), max_context(transforms)), transforms_(std::move(transforms)) {
  for (size_t i = 0; i < transforms_.size(); ++i)
    register_module(std::to_string(i), transforms_[i]);
}

json CompositeTransform::config() const {
  json members = json::array();
  for (const auto& t : transforms_) members.push_back(t->config());
  return {{"type", "composite"}, {"transforms", members}};
}

bool CompositeTransform::forward_is_single_pass() const {
  for (const auto& t : transforms_)
    if (!t->forward_is_single_pass()) return false;
  return true;
}

bool CompositeTransform::inverse_is_single_pass() const {
  for (const auto& t : transforms_)
    if (!t->inverse_is_single_pass()) return false;
  return true;
}

ValueAndLogDet CompositeTransform::forward_impl(const torch::Tensor& x,
                                                const torch::Tensor& context) {
  torch::Tensor z = x;
  torch::Tensor total;
  for (const auto& t : transforms_) {
    auto [zn, ladj] = t->forward(z, t->context_dim() > 0 ? context : torch::Tensor());
    z = zn;
    total = total.defined() ? total + ladj : ladj;
  }
  return {z, total};
}

ValueAndLogDet CompositeTransform::inverse_impl(const torch::Tensor& z,
                                                const torch::Tensor& context) {
  torch::Tensor x = z;
  torch::Tensor total;
  for (auto it = transforms_.rbegin(); it != transforms_.rend(); ++it) {
    auto [xn, ladj] = (*it)->inverse(x, (*it)->context_dim() > 0 ? context : torch::Tensor());
    x = xn;
    total = total.defined() ? total + ladj : ladj;
  }
  return {x, total};
}

// ------------------------------------------------------------------ inverse

InverseTransform::InverseTransform(TransformPtr base)
    : Transform(base->dim(), base->context_dim()), base_(std::move(base)) {
  register_module("base", base_);
}

json InverseTransform::config() const { return {{"type", "inverse"}, {"base", base_->config()}}; }

ValueAndLogDet InverseTransform::forward_impl(const torch::Tensor& x, const torch::Tensor& context) {
  return base_->inverse(x, context);
}

ValueAndLogDet InverseTransform::inverse_impl(const torch::Tensor& z, const torch::Tensor& context) {
  return base_->forward(z, context);
}

}  // namespace nfkit
