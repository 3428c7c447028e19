#include "nfkit/flows/nets.h"

#include <torch/torch.h>

#include "nfkit/core/checks.h"

namespace nfkit {

MLPImpl::MLPImpl(int64_t in, int64_t out, NetOptions opts) {
  check_positive_int("MLP", "hidden", opts.hidden);
  check_positive_int("MLP", "hidden_layers", opts.hidden_layers);
  int64_t width = in;
  for (int64_t l = 0; l < opts.hidden_layers; ++l) {
    layers_.push_back(register_module("linear" + std::to_string(l),
                                      torch::nn::Linear(width, opts.hidden)));
    width = opts.hidden;
  }
  auto last = register_module("linear" + std::to_string(opts.hidden_layers),
                              torch::nn::Linear(width, out));
  torch::NoGradGuard ng;
  last->weight.zero_();
  last->bias.zero_();
  layers_.push_back(last);
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x;
  // relu_ in place on the fresh addmm output (addmm's backward does not need its result).
  for (size_t l = 0; l + 1 < layers_.size(); ++l) h = layers_[l]->forward(h).relu_();
  return layers_.back()->forward(h);
}

MaskedLinearImpl::MaskedLinearImpl(const torch::Tensor& m) {
  const int64_t out = m.size(0), in = m.size(1);
  // Same initialisation as torch::nn::Linear: U(-1/sqrt(in), 1/sqrt(in)).
  const double bound = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(in, 1)));
  weight = register_parameter("weight", torch::empty({out, in}).uniform_(-bound, bound));
  bias = register_parameter("bias", torch::empty({out}).uniform_(-bound, bound));
  mask = register_buffer("mask", m.to(torch::kFloat32));
}

torch::Tensor MaskedLinearImpl::forward(const torch::Tensor& x) {
  // weight * mask on every call: a cached product keyed on the weight's version counter would
  // miss the updates of LibTorch's optimizers, which write through .data() (a new counter).
  return torch::addmm(bias, x, (weight * mask).t());
}

MADEImpl::MADEImpl(int64_t dim, std::vector<int64_t> in_deg, int64_t params, int64_t context_dim,
                   NetOptions opts)
    : dim_(dim), params_(params), context_dim_(context_dim) {
  check_positive_int("MADE", "dim", dim);
  check_positive_int("MADE", "hidden", opts.hidden);
  check_positive_int("MADE", "hidden_layers", opts.hidden_layers);
  // Degrees: inputs as given, context 0 (visible to every hidden unit), hidden units cycle
  // through 1..dim-1 (a unit of degree k sees variables 1..k), outputs of variable i have
  // degree i and see hidden units of degree < i.
  auto degrees_in = torch::tensor(in_deg, torch::kInt64);
  if (context_dim > 0)
    degrees_in = torch::cat({degrees_in, torch::zeros({context_dim}, torch::kInt64)});
  // With a context, hidden degrees start at 0 (units that see the context alone), so that
  // the first variable's parameters depend on the context too.
  auto prev = degrees_in;
  for (int64_t l = 0; l < opts.hidden_layers; ++l) {
    auto deg = context_dim > 0
                   ? torch::arange(opts.hidden, torch::kInt64).remainder(dim)
                   : torch::arange(opts.hidden, torch::kInt64).remainder(std::max<int64_t>(dim - 1, 1)) + 1;
    if (dim == 1) deg.zero_();  // one variable: its parameters may see the context only
    auto mask = deg.unsqueeze(1) >= prev.unsqueeze(0);
    layers_.push_back(register_module("layer" + std::to_string(l), MaskedLinear(mask)));
    prev = deg;
  }
  auto out_deg = torch::arange(1, dim + 1, torch::kInt64).repeat_interleave(params);
  auto mask = out_deg.unsqueeze(1) > prev.unsqueeze(0);
  auto last = register_module("layer" + std::to_string(opts.hidden_layers), MaskedLinear(mask));
  torch::NoGradGuard ng;
  last->weight.zero_();
  last->bias.zero_();
  layers_.push_back(last);
}

torch::Tensor MADEImpl::forward(const torch::Tensor& features, const torch::Tensor& context) {
  torch::Tensor h = context_dim_ > 0 ? torch::cat({features, context}, 1) : features;
  for (size_t l = 0; l + 1 < layers_.size(); ++l) h = layers_[l]->forward(h).relu_();
  return layers_.back()->forward(h).view({-1, dim_, params_});
}

}  // namespace nfkit
