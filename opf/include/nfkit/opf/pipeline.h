#pragma once
// Training and evaluating the learned DC-OPF pipeline (model.h) on an opf_dataset.
//
// Training, stage 1 (the physics-informed GNN), minimises per minibatch
//   w_pg     mean (u_g - u*_g)^2, one-sided at a bound the optimum sits on (u* = 0: relu(u)^2,
//            u* = 1: relu(1 - u)^2), so a clamped prediction can be exact at the bound
//   w_lmp    mean Huber((λ_i - λ*_i) / c_scale), δ = 1               (the solver's LMPs; robust,
//            since near infeasibility a congested bus's LMP is ~1000 times the usual)
//   w_balance mean ((Σ_g P_g - D) / s_b)^2, s_b = sqrt(Σ_g (P_max,g - P_min,g)^2)  (power
//            balance; with independent unit errors of size ε in unit coordinates the mismatch
//            has size ε s_b, so the term weighs like the dispatch term on any grid size: scaled
//            by p_scale instead, on case118 it outweighed the dispatch term ~100 times and the
//            GNN did not learn the dispatch, validation RMSE 0.35 against 0.065 without it)
//   w_line   mean (relu(|f_k| - rate_k) / p_scale)^2, f = PTDF (C_g P_g - pd - Gs) + shifts
//            (Kirchhoff through the PTDF of the scenario's topology, outages included)
//   w_kkt    mean relu(r_g) u_g + relu(-r_g) (1 - u_g),  r_g = (c'_g(P_g) - λ_bus(g)) / c_scale:
//            stationarity with the predicted multipliers (c'_g = λ for a unit strictly between
//            its bounds: economic dispatch at the local price; a unit priced above λ sits at
//            P_min, below at P_max) and its complementarity,
// where P_g uses u clamped to [0, 1]. Stage 2 (the refinement) freezes the GNN and trains the
// velocity field by conditional flow matching (CfmMethod::kICFM, flows/flow_matching.h) on
// the pairs (x0 = GNN output u, x1 = u*) with the GNN's embeddings as context. Both stages:
// Adam with cosine decay, minibatches from derive_seed(seed, 13, ...), the weights of the best
// validation epoch kept (stage 1: RMSE of clamped u; stage 2: RMSE after the ODE solve).
//
// Evaluation runs the batched pipeline (GNN, ODE refinement, exact projection) on every
// scenario, and Ipopt one by one on the same scenarios in the same run for the speed ratio.
//
//   auto data = nfkit::OpfDataset::read("train.h5");
//   auto trained = nfkit::train_opf_model(data, pc, nfkit::DcConvention::kMatpower, {});
//   auto rep = nfkit::evaluate_opf_model(trained.model, nfkit::OpfDataset::read("test.h5"), pc, conv, {});
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nfkit/opf/dataset.h"
#include "nfkit/opf/model.h"
#include "nfkit/physics/dc_projection.h"

namespace nfkit {

/// The physics terms of the training loss (see above), each a 0-d tensor.
struct OpfLossTerms {
  torch::Tensor balance, line, kkt;
};

/// The grid's physics as float32 tensors for the training losses: the PTDF of every topology
/// in `outages` (network branch indices, -1 none; slot 0 is the base grid), shift flows, limits
/// and marginal costs.
struct OpfLossPhysics {
  OpfLossPhysics(const PowerCase& pc, DcConvention conv, const DcNetwork& base, const torch::Tensor& outages);
  /// Topology slot of each outage index [B].
  torch::Tensor slots(const torch::Tensor& outage) const;
  /// Branch flows [B, nl] (MW, base branch order; 0 on the outaged branch) of dispatches pg
  /// [B, ng] for loads pd [B, nb] in topology slots sl [B]: PTDF (C_g pg - pd - Gs) + shifts.
  torch::Tensor flows(const torch::Tensor& pd, const torch::Tensor& pg, const torch::Tensor& sl) const;
  /// Marginal costs c'_g(P_g) [B, ng] ($/MWh): polynomials exactly, piecewise-linear slopes.
  torch::Tensor marginal(const torch::Tensor& pg) const;
  /// Balance, line and KKT terms of dispatches pg (MW) with unit coordinates u in [0, 1] and
  /// prices lmp [B, nb] ($/MWh); all vanish at a DC-OPF optimum with its LMPs.
  OpfLossTerms terms(const torch::Tensor& pd, const torch::Tensor& pg, const torch::Tensor& u, const torch::Tensor& lmp,
                     const torch::Tensor& sl, double p_scale, double c_scale) const;

  torch::Tensor ptdf;     ///< [K, nl, nb]
  torch::Tensor fshift;   ///< [K, nl]
  torch::Tensor rate;     ///< [nl] MW (0 where unlimited)
  torch::Tensor limited;  ///< [nl] 1 where limited
  torch::Tensor gen_bus, gs;
  std::map<int64_t, int64_t> slot;  ///< outage index (-1 none) -> slot
  torch::Tensor dcoef;               ///< [ng, K] derivative coefficients, lowest order first
  struct Pwl {
    int64_t g;
    torch::Tensor xs, slopes;
  };
  std::vector<Pwl> pwl;
  double balance_scale = 1.0;  ///< s_b = sqrt(Σ_g (P_max,g - P_min,g)^2), MW
  int64_t nb = 0, nl = 0;
};

struct OpfTrainOptions {
  OpfModelOptions model;
  int64_t epochs = 300;           ///< GNN epochs
  int64_t cfm_epochs = 300;       ///< velocity-field epochs (0: no refinement stage)
  int64_t batch_size = 128;
  double lr = 2e-3, cfm_lr = 1e-3;
  double val_fraction = 0.1;      ///< of the optimal scenarios, held out for model selection
  double w_pg = 1.0, w_lmp = 0.1, w_balance = 1.0, w_line = 1.0, w_kkt = 0.1;
  double cfm_sigma = 0.01;        ///< path noise of the refinement (unit coordinates)
  OdeOptions ode = OdeOptions().method(OdeMethod::kEuler).steps(4);  ///< for stage-2 validation
  uint64_t seed = 0;
  bool quiet = false;
  /// Stage-1 checkpoint: when set, the finished GNN stage is saved there, and a later run with
  /// the same stage-1 options and data takes the GNN from it and goes on with stage 2.
  std::string gnn_checkpoint;
  /// Asked after every epoch; true stops training: the report says interrupted and the model
  /// holds the best weights so far.
  std::function<bool()> should_stop;
  nlohmann::json to_json() const;
  /// UsageError naming the option.
  void validate() const;
};

struct OpfTrainReport {
  int64_t train = 0, val = 0;                 ///< scenarios used (optimal ones only)
  int64_t gnn_best_epoch = -1, cfm_best_epoch = -1;
  double gnn_val_rmse = NAN, cfm_val_rmse = NAN;  ///< unit coordinates
  double seconds = 0.0;
  bool interrupted = false;
  std::vector<std::pair<int64_t, double>> gnn_curve, cfm_curve;  ///< (epoch, validation RMSE)
  nlohmann::json to_json() const;
};

struct OpfTrained {
  OpfModel model;
  OpfTrainReport report;
};

/// Trains on the optimal scenarios of `data`, which must come from the grid pc in convention
/// conv (RuntimeError naming the dataset otherwise).
OpfTrained train_opf_model(const OpfDataset& data, const PowerCase& pc, DcConvention conv, const OpfTrainOptions& opts);

struct OpfEvalOptions {
  OdeOptions ode = OdeOptions().method(OdeMethod::kEuler).steps(4);
  int64_t ipopt_sample = 200;   ///< scenarios Ipopt re-solves one by one for the speed ratio (0: all)
  int64_t repeats = 3;          ///< timed passes of the pipeline and of Ipopt; the best of each counts
  ProjectionOptions projection;
  bool quiet = false;
};

/// One load level's results (gaps in %, of the cost against Ipopt's optimum, mean |gap| over
/// the scenarios Ipopt solved; violations in MW, the worst kind per scenario).
struct OpfLevelResult {
  double level = 0.0;
  int64_t scenarios = 0, optimal = 0;   ///< in the data; Ipopt's optimum exists for `optimal`
  int64_t refused = 0;                  ///< non-optimal scenarios the pipeline refused too
  int64_t returned = 0;                 ///< solved scenarios the pipeline returned a dispatch for
  int64_t feasible = 0;                 ///< returned dispatches passing the check (<= 1e-6 MW)
  double gap_gnn = 0, gap_cfm = 0, gap_final = 0, gap_final_max = 0;
  double gap_gnn_projected = 0;         ///< the GNN's dispatch projected without the refinement
  double viol_gnn_mean = 0, viol_gnn_max = 0, viol_cfm_mean = 0, viol_cfm_max = 0;
  double worst_after = 0;               ///< MW, after projection
  nlohmann::json to_json() const;
};

struct OpfEvalReport {
  std::vector<OpfLevelResult> levels;
  OpfLevelResult all;
  int64_t fallbacks = 0;                ///< projections Ipopt had to redo
  int64_t returned_infeasible = 0;      ///< scenarios Ipopt solved but the pipeline refused
  double pipeline_seconds = 0.0;        ///< GNN + ODE + projection, all scenarios, batched
  double projection_seconds = 0.0;      ///< of which the projection
  double ipopt_seconds_per_instance = 0.0;
  int64_t ipopt_timed = 0;
  int64_t repeats = 1;                  ///< timed passes; the times are the best pass of each
  double ipopt_projection_seconds_per_instance = 0.0;  ///< Ipopt projecting the same dispatches
  double speedup = 0.0;                 ///< Ipopt per instance / pipeline per instance
  std::string ode;                      ///< solver summary
  nlohmann::json to_json() const;
  /// The per-level table of `nfkit opf eval`.
  std::string table() const;
};

OpfEvalReport evaluate_opf_model(const OpfModel& model, const OpfDataset& data, const PowerCase& pc,
                                 DcConvention conv, const OpfEvalOptions& opts);

/// The network branch index of each scenario's outage (-1 none), RuntimeError naming the
/// dataset for an outage that is not an in-service branch of the base network.
torch::Tensor outage_indices(const OpfDataset& data, const DcNetwork& base);

}  // namespace nfkit
