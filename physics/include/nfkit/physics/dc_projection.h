#pragma once
// The exact feasibility projection of DC-OPF dispatches, fast enough for batches: the
// Goldfarb-Idnani dual active-set method (D. Goldfarb and A. Idnani 1983, "A numerically
// stable dual method for solving strictly convex quadratic programs", Math. Program. 27,
// 1-33) on the PTDF form of the feasible set of a DcNetwork.
//
// The projection of p0 (MW per generator) for loads pd is the unique solution of
//   min ½ |P_g - p0|^2
//   s.t. Σ_g P_g = Σ_i (pd_i + Gs_i)                      (balance)
//        P_min <= P_g <= P_max
//        -rate_k <= f0_k(pd) + (H P_g)_k <= rate_k           (branch limits, finite rates)
//        angmin_k <= a0_k(pd) + (A P_g)_k <= angmax_k       (angle differences, where set)
// where H and A are the sensitivities of the branch flows and angle differences to the
// generator outputs (the reference bus absorbing the imbalance; exact, since the DC model is
// affine) and f0, a0 their values at P_g = 0. The Hessian is the identity, so the method
// starts from p0 itself and adds the most violated constraint (rows scaled to unit norm) until
// none is violated by more than `tol`, dropping constraints whose multipliers would turn
// negative; it ends in finitely many steps with the exact projection or a proof of
// infeasibility (a violated constraint that the active ones make impossible).
//
// The guarantee: every result is checked by DcNetwork::check; a result that violates anything
// by more than `feasible_tol_mw` (which only rounding in a badly conditioned case could cause)
// is replaced by Ipopt's projection (project_dispatch, dc_opf.h) when `ipopt_fallback` is set,
// and is reported as kFailed otherwise. kInfeasible means no dispatch serves the loads: the
// method's own certificate (not re-checked by Ipopt, whose infeasibility detection takes
// ~100 times longer).
//
// project_batch runs instances in parallel on torch's intra-op threads (set_num_threads); each
// instance is independent, so results do not depend on the thread count. Ipopt fallbacks run
// afterwards, one by one (Ipopt/MUMPS is not thread-safe).
//
//   nfkit::DcProjector proj(net);
//   auto r = proj.project(pd, p0);       // r.pg feasible when r.status == kOptimal
#include <Eigen/Dense>
#include <vector>
#include "nfkit/physics/dc_opf.h"

namespace nfkit {

struct ProjectionOptions {
  double tol = 1e-10;              ///< violation (MW along the unit-norm row) that adds a constraint
  double feasible_tol_mw = 1e-6;   ///< the guarantee checked on every result (MW, and deg for angles)
  bool ipopt_fallback = true;      ///< replace a result that fails the check by Ipopt's projection
  int max_iter = 0;                ///< active-set changes (0: 10 x (rows + generators))
};

struct Projection {
  OpfStatus status = OpfStatus::kFailed;
  Eigen::VectorXd pg;              ///< MW per generator (the projection when kOptimal)
  FeasibilityReport feasibility;   ///< of pg, by DcNetwork::check
  double distance = 0.0;           ///< |pg - p0| (MW)
  int iterations = 0;              ///< active-set changes
  int active = 0;                  ///< active constraints at the end (the balance included)
  bool fallback = false;           ///< pg came from Ipopt
  std::string message;             ///< why, when not kOptimal
};

class DcProjector {
 public:
  explicit DcProjector(const DcNetwork& net, ProjectionOptions opts = {});
  const DcNetwork& network() const { return net_; }
  /// UsageError for a pd / p0 of the wrong size or with non-finite entries.
  Projection project(const Eigen::VectorXd& pd, const Eigen::VectorXd& p0) const;
  /// Rows of pd [B, nb] and p0 [B, ng]; one Projection per row.
  std::vector<Projection> project_batch(const Eigen::MatrixXd& pd, const Eigen::MatrixXd& p0) const;
  /// Flow sensitivities H [nl, ng] (MW per MW) and the flows at zero generation f0 (MW).
  const Eigen::MatrixXd& flow_sensitivity() const { return hflow_; }
  Eigen::VectorXd base_flows(const Eigen::VectorXd& pd) const;

 private:
  Projection solve(const Eigen::VectorXd& pd, const Eigen::VectorXd& p0) const;  // active set + check
  void fall_back(const Eigen::VectorXd& pd, const Eigen::VectorXd& p0, Projection& r) const;  // Ipopt
  bool needs_fallback(const Projection& r) const;
  DcNetwork net_;
  ProjectionOptions opts_;
  Eigen::MatrixXd hflow_, hangle_;   // [nl, ng], [na, ng]
  std::vector<int64_t> angle_rows_;  // branches with angle limits
  // Inequality rows n^T x >= b, scaled to unit norm: c_ [m, ng]; their kind and index.
  Eigen::MatrixXd c_;
  Eigen::VectorXd cnorm_;
  std::vector<int> kind_, index_;    // kind 0 gen lower, 1 gen upper, 2 flow lower, 3 flow upper, 4 angle lower, 5 angle upper
  // Limited branches whose flow (angle difference) no generator moves: fixed by the loads.
  std::vector<int64_t> fixed_flows_, fixed_angles_;
};

}  // namespace nfkit
