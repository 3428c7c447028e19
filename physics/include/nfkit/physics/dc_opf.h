#pragma once
// DC optimal power flow solved by Ipopt (Wächter & Biegler 2006, "On the implementation of an
// interior-point filter line-search algorithm for large-scale nonlinear programming", Math.
// Program. 106), and the exact feasibility projection.
//
// The DC-OPF over a DcNetwork (see dc_network.h for the two conventions), variables P_g (MW),
// θ (rad) and, for piecewise-linear costs, one epigraph variable per generator:
//   min  Σ_g c_g(P_g)                                           ($/h)
//   s.t. base (B θ)_i + P_shift,i + pd_i + Gs_i - Σ_{g at i} P_g = 0   (nodal balance, MW)
//        |base (B_f θ)_k + P_f,shift,k| <= rate_k                       (branch limits, MW)
//        angmin_k <= θ_f - θ_t <= angmax_k                              (angle differences)
//        P_min <= P_g <= P_max,   θ_ref = reference angle.
// The LMP of bus i is the multiplier of its balance row: d(cost*)/d(pd_i) in $/MWh.
//
// The projection of a dispatch p0 is the Euclidean projection onto the same feasible set,
//   min ½ |P_g - p0|^2 over the constraints above,
// a strictly convex QP with a unique solution; solved by Ipopt to the same tolerances, its
// result is feasible by construction (what the feasibility report then measures). A p0 that
// is already feasible (every violation <= 1e-9) is returned as it is.
//
// Ipopt runs with bound_relax_factor = 0 (bounds are never relaxed) and tol 1e-10, so a
// returned optimum violates no constraint by more than about 1e-8 MW.
//
//   nfkit::DcNetwork net(nfkit::read_matpower_case("case30.m"), nfkit::DcConvention::kMatpower);
//   auto sol = nfkit::solve_dc_opf(net, 1.3 * net.base_load());
//   if (sol.status == nfkit::OpfStatus::kOptimal) std::cout << sol.cost << " $/h\n";
#include <Eigen/Dense>

#include <nlohmann/json_fwd.hpp>
#include <string>

#include "nfkit/physics/dc_network.h"

namespace nfkit {

enum class OpfStatus { kOptimal, kInfeasible, kFailed };
std::string to_string(OpfStatus s);

struct DcOpfOptions {
  double tol = 1e-10;            ///< Ipopt's tol (scaled NLP error)
  double constr_viol_tol = 1e-9; ///< Ipopt's constr_viol_tol (MW and rad)
  int max_iter = 3000;
  int print_level = 0;           ///< Ipopt's print_level (0 silent .. 12)
};

struct DcOpfSolution {
  OpfStatus status = OpfStatus::kFailed;
  std::string message;           ///< Ipopt's status in words, or why no solve was attempted
  double cost = 0.0;             ///< $/h (for a projection: the cost of the projected dispatch)
  double objective = 0.0;        ///< the minimised objective (cost, or ½ |P_g - p0|^2 in MW^2)
  Eigen::VectorXd pg;            ///< MW per generator (network order)
  Eigen::VectorXd theta;         ///< rad per bus
  Eigen::VectorXd flows;         ///< MW per branch, from -> to
  Eigen::VectorXd lmp;           ///< $/MWh per bus (for a projection: MW per MW, the balance multipliers)
  FeasibilityReport feasibility; ///< of pg, computed by the network (not by Ipopt)
  int iterations = 0;
  double seconds = 0.0;          ///< wall time of the Ipopt solve

  /// JSON with the file's numbering: generators by row and bus, LMPs by bus number, flows
  /// by branch row.
  nlohmann::json to_json(const DcNetwork& net) const;
};

/// Solves the DC-OPF for loads pd (MW per bus, network order). Status kInfeasible when the
/// loads cannot be served (checked first against total capacity, then by Ipopt's
/// infeasibility detection), kFailed for any other Ipopt failure; never throws for those.
/// UsageError for a pd of the wrong size or with non-finite entries.
DcOpfSolution solve_dc_opf(const DcNetwork& net, const Eigen::VectorXd& pd, const DcOpfOptions& opts = {});

/// The Euclidean projection of dispatch p0 (MW per generator) onto the feasible set for loads
/// pd. Same statuses as solve_dc_opf.
DcOpfSolution project_dispatch(const DcNetwork& net, const Eigen::VectorXd& pd, const Eigen::VectorXd& p0,
                               const DcOpfOptions& opts = {});

}  // namespace nfkit
