#pragma once
// Conditioner networks: the neural networks that output a transform's parameters.
//
//   * MLP  -- fully connected, for coupling layers (input: the untouched half + context).
//   * MADE -- masked autoencoder for distribution estimation (Germain et al., ICML 2015):
//             output block i depends only on inputs of degree < i, which makes the
//             transforms that use it autoregressive (MAF, Papamakarios et al. 2017).
// Both end in a zero-initialised linear layer, so every transform built on them starts as
// the identity (or the spline's identity), the standard trick for stable deep flows.
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <vector>

namespace nfkit {

struct NetOptions {
  int64_t hidden = 64;        ///< width of each hidden layer
  int64_t hidden_layers = 2;  ///< number of hidden layers (>= 1)
};

class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(int64_t in, int64_t out, NetOptions opts);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  std::vector<torch::nn::Linear> layers_;
};
TORCH_MODULE(MLP);

/// Linear layer y = x (W * M)^T + b with a fixed binary mask M (buffer "mask").
class MaskedLinearImpl : public torch::nn::Module {
 public:
  MaskedLinearImpl(const torch::Tensor& mask);  // mask [out, in]
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias, mask;
};
TORCH_MODULE(MaskedLinear);

/// MADE over `dim` autoregressive variables. Inputs are features with given degrees
/// (1..dim; a variable can own several features, e.g. cos and sin of an angle), optionally
/// followed by `context_dim` context features that every hidden unit sees. Output is
/// [B, dim, params]: block i depends on the features of variables 1..i-1 only.
class MADEImpl : public torch::nn::Module {
 public:
  MADEImpl(int64_t dim, std::vector<int64_t> input_degrees, int64_t params, int64_t context_dim,
           NetOptions opts);
  torch::Tensor forward(const torch::Tensor& features, const torch::Tensor& context);
  int64_t params() const { return params_; }

 private:
  int64_t dim_, params_, context_dim_;
  std::vector<MaskedLinear> layers_;
};
TORCH_MODULE(MADE);

}  // namespace nfkit
