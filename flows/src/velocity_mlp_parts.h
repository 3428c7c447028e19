#pragma once
// Parts shared by the MLP fields of velocity.cpp and flow_map.cpp (private to the library).
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <vector>

#include "nfkit/flows/velocity.h"

namespace nfkit::detail {

/// Registers the "freqs" buffer of the sinusoidal time embedding (undefined for "concat") and
/// returns the number of features per time.
int64_t register_time_embedding(torch::nn::Module& m, const VelocityMLPOptions& o, torch::Tensor* freqs);

/// Registers layer0 .. layer<hidden_layers>: in -> hidden -> ... -> dim.
std::vector<torch::nn::Linear> register_mlp_layers(torch::nn::Module& m, int64_t in, const VelocityMLPOptions& o);

}  // namespace nfkit::detail
