#pragma once
// The learned DC-OPF pipeline's model (after Khanal 2025, "Refining Graphical Neural Network
// Predictions Using Flow Matching for Optimal Power Flow with Constraint-Satisfaction
// Guarantee"): a physics-informed graph neural network gives a first dispatch, a conditional
// flow-matching velocity field (Lipman et al. 2023, "Flow Matching for Generative Modeling";
// Tong et al. 2024, torchcfm) transports it toward the solver's optimum, and the exact
// projection (physics/dc_projection.h) makes it feasible.
//
// Dispatches are learned in unit coordinates u_g = (P_g - P_min,g) / (P_max,g - P_min,g)
// (units with P_max = P_min are fixed). Inputs are normalised by p_scale (the mean P_max, MW)
// and c_scale (the mean marginal cost at mid-range, $/MWh).
//
// OpfGnn: message passing on the bus-branch graph (Gilmer et al. 2017, "Neural Message
// Passing for Quantum Chemistry"), both directions of every branch, with
//   node features  per bus: load / p_scale, total load / capacity, Gs / p_scale, reference
//                  flag, units at the bus, their P_max / p_scale and cheapest marginal cost
//   edge features  per branch: b / mean b, limit / p_scale (0 when unlimited), unlimited
//                  flag, direction (+1 from -> to, -1 back); an outaged branch sends nothing
//   layer          m_e = W2 σ(A h_src + B h_dst + E e),  a_i = Σ_{e -> i} m_e / sqrt(deg_i),
//                  h_i += U2 σ(U1 [LN(h_i), a_i, mean_j h_j])   (σ = SiLU; the mean is a
//                  virtual global node, so balance information reaches every bus)
//   heads          u_g = head([h_bus(g), gen features]) (unbounded; clamped to [0, 1] for the
//                  dispatch), λ_i = c_scale * lmp_head(h_i) ($/MWh), and a per-unit embedding
//                  of `embed` features that conditions the velocity field.
// OpfVelocity: a graph-aware velocity field in unit coordinates, conditioned on the loads and
// the GNN's output: one MLP shared by all units on [u_g, time features, the unit's GNN
// embedding, the mean embedding, the balance mismatch (Σ P_g - D) / p_scale, D / p_scale,
// σ(W_load pd / p_scale), σ(W_state u)]; it sees the grid through the GNN's embeddings, which
// are computed once per instance, so an ODE step costs one small MLP per unit. Its output
// layer starts at zero, so an untrained refinement returns the GNN's dispatch.
//
//   nfkit::OpfModel model(net, nfkit::OpfModelOptions());
//   auto pred = model.predict(pd, outages, nfkit::OdeOptions().method(nfkit::OdeMethod::kEuler).steps(4));
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nfkit/flows/ode.h"
#include "nfkit/flows/velocity.h"
#include "nfkit/physics/dc_network.h"

namespace nfkit {

struct OpfModelOptions {
  TORCH_ARG(int64_t, hidden) = 64;        ///< GNN width
  TORCH_ARG(int64_t, layers) = 6;         ///< message-passing layers
  TORCH_ARG(int64_t, embed) = 16;         ///< per-unit embedding for the velocity field
  TORCH_ARG(int64_t, velocity_hidden) = 128;
  TORCH_ARG(int64_t, velocity_layers) = 3;
  TORCH_ARG(int64_t, time_features) = 8;  ///< sinusoidal (even)
 public:
  nlohmann::json to_json() const;
  static OpfModelOptions from_json(const nlohmann::json& j);
  /// UsageError naming the option (--hidden, --layers, ...).
  void validate() const;
};

/// What the networks need to know about a grid, as float32 tensors (CPU).
struct OpfGraph {
  int64_t nb = 0, ng = 0, nl = 0;
  double p_scale = 1.0, c_scale = 1.0, capacity = 0.0;  ///< MW, $/MWh, Σ P_max (MW)
  torch::Tensor src, dst;       ///< [2 nl] int64: edge e < nl is from -> to of branch e, e >= nl back
  torch::Tensor edge_attr;      ///< [2 nl, 4]
  torch::Tensor bus_attr;       ///< [nb, 5]: Gs / p_scale, reference flag, units, their P_max / p_scale, cheapest marginal / c_scale
  torch::Tensor gen_attr;       ///< [ng, 5]: P_min, P_max / p_scale, marginal at P_min, mid, P_max / c_scale
  torch::Tensor gen_bus;        ///< [ng] int64
  torch::Tensor inv_sqrt_deg;   ///< [nb]
  torch::Tensor pmin, range;    ///< [ng] MW (float64)
  torch::Tensor gs;             ///< [nb] MW (float64)
  /// The identity of the grid a model was trained on: name, sizes, convention, Σ b, Σ P_max.
  nlohmann::json fingerprint;
  static OpfGraph from_network(const DcNetwork& net);
};

struct GnnOutput {
  torch::Tensor u;    ///< [B, ng] unit coordinates (unbounded)
  torch::Tensor lmp;  ///< [B, nb] $/MWh
  torch::Tensor emb;  ///< [B, ng, embed]
};

class OpfGnn : public torch::nn::Module {
 public:
  OpfGnn(const OpfGraph& graph, OpfModelOptions opts);
  /// pd [B, nb] MW (any float dtype); in_service [B, nl] (1 = in service) or undefined (all).
  GnnOutput forward(const torch::Tensor& pd, const torch::Tensor& in_service = {});

 private:
  OpfGraph g_;
  OpfModelOptions o_;
  torch::nn::Linear enc1_{nullptr}, enc2_{nullptr}, edge_enc_{nullptr}, gen_enc_{nullptr};
  std::vector<torch::nn::Linear> a_, b_, w2_, u1_, u2_;
  std::vector<torch::nn::LayerNorm> ln_;
  torch::nn::Linear head1_{nullptr}, head2_{nullptr}, lmp1_{nullptr}, lmp2_{nullptr}, emb_{nullptr};
};

class OpfVelocity : public VelocityField {
 public:
  /// context = [embeddings [ng * embed], pd / p_scale [nb], D / p_scale]
  OpfVelocity(const OpfGraph& graph, OpfModelOptions opts);
  nlohmann::json config() const override;
  /// The context rows of a GNN output and the loads pd [B, nb] (MW).
  torch::Tensor context(const GnnOutput& out, const torch::Tensor& pd) const;

 protected:
  torch::Tensor velocity(const torch::Tensor& t, const torch::Tensor& x, const torch::Tensor& context) override;

 private:
  OpfGraph g_;
  OpfModelOptions o_;
  std::vector<torch::nn::Linear> layers_;
  torch::nn::Linear load_enc_{nullptr}, state_enc_{nullptr};
  torch::Tensor freqs_, pmin_, range_;  // buffers (float32)
};

struct OpfPrediction {
  torch::Tensor pg_gnn;  ///< [B, ng] MW (float64), the GNN's dispatch (u clamped to [0, 1])
  torch::Tensor pg_cfm;  ///< [B, ng] MW, after the flow-matching refinement (clamped)
  torch::Tensor lmp;     ///< [B, nb] $/MWh, the GNN's prices
};

class OpfModel {
 public:
  OpfModel(const DcNetwork& net, OpfModelOptions opts);
  const OpfGraph& graph() const { return graph_; }
  const OpfModelOptions& options() const { return opts_; }
  std::shared_ptr<OpfGnn> gnn() const { return gnn_; }
  std::shared_ptr<OpfVelocity> velocity() const { return vel_; }
  /// Unit coordinates of MW dispatches [B, ng] and back (float64).
  torch::Tensor to_unit(const torch::Tensor& pg) const;
  torch::Tensor from_unit(const torch::Tensor& u) const;
  /// Batched prediction without gradients. pd [B, nb] MW; outage [B] int64 network branch
  /// index (-1 none) or undefined; ode: the refinement's solver (a few Euler steps).
  OpfPrediction predict(const torch::Tensor& pd, const torch::Tensor& outage, const OdeOptions& ode) const;
  /// [B, nl] in-service mask (float32) of outage indices.
  torch::Tensor in_service(const torch::Tensor& outage) const;

  /// File kind "opf_model" (version 1): attrs config (options, fingerprint, scales, metadata);
  /// /gnn/..., /velocity/... tensors. Atomic.
  void save(const std::string& path, const nlohmann::json& metadata = nlohmann::json::object()) const;
  /// RuntimeError naming the file for another kind, or a model of another grid than `net`.
  static OpfModel load(const std::string& path, const DcNetwork& net, nlohmann::json* metadata = nullptr);

 private:
  OpfGraph graph_;
  OpfModelOptions opts_;
  std::shared_ptr<OpfGnn> gnn_;
  std::shared_ptr<OpfVelocity> vel_;
};

}  // namespace nfkit
