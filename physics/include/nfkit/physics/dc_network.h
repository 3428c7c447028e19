#pragma once
// The DC power-flow model of a grid: susceptances, B, PTDF, branch flows and a feasibility
// report, in one of the two conventions users meet (chosen explicitly, never guessed):
//
//   kMatpower    MATPOWER's DC model (Zimmerman et al. 2011, MATPOWER manual §3.7 and
//                makeBdc): branch flow P_ft = b (θ_f - θ_t - φ) with b = 1 / (x τ),
//                τ the tap ratio (1 where the file says 0), φ the phase shift; the reference
//                angle is the file's Va of the reference bus; angle-difference limits are
//                used where ANGMIN / ANGMAX are nonzero and inside (-360, 360) degrees;
//                RATE_A = 0 means unlimited.
//   kPowerModels PowerModels.jl's DCP model (Coffrin et al. 2018, PowerModels.jl;
//                constraint_ohms_yt_from for AbstractDCPModel), the convention of PGLib-OPF's
//                published DC baselines: P_ft = -b (θ_f - θ_t) with b = imag(1 / (r + j x)),
//                taps and phase shifts ignored, reference angle 0, angle-difference limits
//                as PowerModels corrects them (a limit at or beyond ±90° becomes ±60°, a
//                0/0 pair becomes ±60°), RATE_A = 0 means unlimited.
// Both: bus shunt conductance Gs is a demand at V = 1 p.u.; out-of-service generators and
// branches and isolated buses (type 4) are dropped; the remaining grid must be connected.
//
// Units: powers in MW, angles in radians (degrees only where a file says degrees), B in
// p.u./rad on baseMVA. Vectors are over the network's own (in-service) order: buses as in the
// file minus isolated ones, generators and branches as in the file minus out-of-service ones;
// `bus_ids()`, `generator_rows()` and `branch_rows()` map back to the file.
//
//   auto net = nfkit::DcNetwork(nfkit::read_matpower_case("case30.m"), nfkit::DcConvention::kMatpower);
//   Eigen::VectorXd pd = net.base_load() * 1.15;                  // MW per bus
//   auto report = net.check(pd, pg);                              // pg: MW per generator
//   std::cout << report.summary() << "\n";
#include <Eigen/Dense>
#include <Eigen/Sparse>
#include <Eigen/SparseLU>

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "nfkit/physics/power_case.h"

namespace nfkit {

enum class DcConvention { kMatpower, kPowerModels };

/// "matpower" or "powermodels"; UsageError naming `option` otherwise.
DcConvention parse_dc_convention(const std::string& name, const std::string& option = "--dc-model");
std::string to_string(DcConvention c);

/// How far a dispatch is from the DC-OPF feasible set (all in MW except the angle, in degrees;
/// each is the largest violation of its kind, 0 when none).
struct FeasibilityReport {
  double balance_mw = 0.0;     ///< |Σ P_g - Σ demand|
  double generator_mw = 0.0;   ///< largest violation of P_min <= P_g <= P_max
  double line_mw = 0.0;        ///< largest |P_ft| - limit
  double angle_deg = 0.0;      ///< largest angle-difference violation
  double worst_mw = 0.0;       ///< max of the three MW kinds
  std::string worst;           ///< the worst violation in words ("" when feasible)

  /// Every MW violation <= tol_mw and the angle violation <= tol_deg.
  bool feasible(double tol_mw = 1e-6, double tol_deg = 1e-6) const {
    return worst_mw <= tol_mw && angle_deg <= tol_deg;
  }
  std::string summary() const;
  nlohmann::json to_json() const;
};

class DcNetwork {
 public:
  /// RuntimeError (naming pc.source) for a branch with zero reactance, an islanded grid, or
  /// no in-service generator.
  DcNetwork(const PowerCase& pc, DcConvention convention);

  DcConvention convention() const { return convention_; }
  const std::string& name() const { return name_; }
  const std::string& source() const { return source_; }
  double base_mva() const { return base_mva_; }
  int64_t num_buses() const { return static_cast<int64_t>(bus_ids_.size()); }
  int64_t num_generators() const { return static_cast<int64_t>(gen_rows_.size()); }
  int64_t num_branches() const { return static_cast<int64_t>(branch_rows_.size()); }
  int64_t reference_bus() const { return ref_; }  ///< index into the buses

  const std::vector<int>& bus_ids() const { return bus_ids_; }       ///< external bus numbers
  const std::vector<int>& generator_rows() const { return gen_rows_; }  ///< rows of mpc.gen (0-based)
  const std::vector<int>& branch_rows() const { return branch_rows_; }  ///< rows of mpc.branch (0-based)

  /// Bus of each generator, from / to bus of each branch (indices into the buses).
  const std::vector<int64_t>& generator_bus() const { return gen_bus_; }
  const std::vector<int64_t>& branch_from() const { return from_; }
  const std::vector<int64_t>& branch_to() const { return to_; }

  const Eigen::VectorXd& base_load() const { return pd_; }          ///< Pd per bus (MW), the file's profile
  const Eigen::VectorXd& shunt_load() const { return gs_; }         ///< Gs per bus (MW at V = 1)
  const Eigen::VectorXd& pmin() const { return pmin_; }             ///< MW
  const Eigen::VectorXd& pmax() const { return pmax_; }             ///< MW
  const std::vector<GenCost>& costs() const { return costs_; }
  const Eigen::VectorXd& susceptance() const { return b_; }         ///< b per branch, p.u.
  const Eigen::VectorXd& phase_shift() const { return shift_; }     ///< rad (0 for kPowerModels)
  const Eigen::VectorXd& flow_limit() const { return rate_; }       ///< MW, +inf = unlimited
  const Eigen::VectorXd& angle_min() const { return angmin_; }      ///< rad, -inf = none
  const Eigen::VectorXd& angle_max() const { return angmax_; }      ///< rad, +inf = none
  double reference_angle() const { return va_ref_; }               ///< rad

  /// B (p.u./rad, [nb, nb]) and B_f ([nl, nb]): P_bus = B θ + P_shift, P_f = B_f θ + P_f,shift.
  const Eigen::SparseMatrix<double>& bbus() const { return bbus_; }
  const Eigen::SparseMatrix<double>& bf() const { return bf_; }
  /// Injections of the phase shifters: per bus (MW, in the balance) and per branch (MW, in the flow).
  const Eigen::VectorXd& shift_injection_bus() const { return pbus_shift_; }
  const Eigen::VectorXd& shift_injection_branch() const { return pf_shift_; }

  /// Net injection per bus (MW): C_g pg - pd - Gs.
  Eigen::VectorXd injections(const Eigen::VectorXd& pd, const Eigen::VectorXd& pg) const;
  /// Bus angles (rad) of a dispatch: the reference bus absorbs any total imbalance.
  Eigen::VectorXd angles(const Eigen::VectorXd& pd, const Eigen::VectorXd& pg) const;
  /// Branch flows from -> to (MW) of bus angles.
  Eigen::VectorXd flows_from_angles(const Eigen::VectorXd& theta) const;
  /// Branch flows (MW) of a dispatch.
  Eigen::VectorXd flows(const Eigen::VectorXd& pd, const Eigen::VectorXd& pg) const {
    return flows_from_angles(angles(pd, pg));
  }
  /// PTDF [nl, nb]: MW of branch flow per MW injected at each bus and withdrawn at the
  /// reference bus (the reference column is zero). Dense; nl * nb doubles.
  Eigen::MatrixXd ptdf() const;

  /// Generation cost of a dispatch, $/h.
  double cost(const Eigen::VectorXd& pg) const;
  /// Feasibility of a dispatch pg (MW per generator) for loads pd (MW per bus).
  FeasibilityReport check(const Eigen::VectorXd& pd, const Eigen::VectorXd& pg) const;

  /// UsageError naming `what` unless v has n entries, all finite.
  void check_vector(const char* fn, const std::string& what, const Eigen::VectorXd& v, int64_t n) const;

 private:
  DcConvention convention_;
  std::string name_, source_;
  double base_mva_ = 100.0;
  std::vector<int> bus_ids_, gen_rows_, branch_rows_;
  std::vector<int64_t> gen_bus_, from_, to_;
  int64_t ref_ = 0;
  double va_ref_ = 0.0;
  Eigen::VectorXd pd_, gs_, pmin_, pmax_, b_, shift_, rate_, angmin_, angmax_, pbus_shift_, pf_shift_;
  std::vector<GenCost> costs_;
  Eigen::SparseMatrix<double> bbus_, bf_;
  // LU of B without the reference row and column; shared so DcNetwork stays copyable.
  std::shared_ptr<Eigen::SparseLU<Eigen::SparseMatrix<double>>> lu_;
};

/// Rows (0-based, of mpc.branch) of in-service branches whose outage keeps the grid
/// connected: the N-1 outages a DC study can run.
std::vector<int> connected_branch_outages(const PowerCase& pc);
/// A copy of pc with branch `row` (0-based) out of service (UsageError if out of range).
PowerCase with_branch_outage(const PowerCase& pc, int row);

/// Load scenarios, MW per bus [count, nb] over the network's buses.
///   uniform:  pd = s * base, s on the grid lo..hi (count points; count 1 gives lo).
///   perturbed: pd_i = s * base_i * max(0, 1 + sigma * ε_i), ε ~ N(0, 1) iid, seeded
///              (std::mt19937_64; the factor is clipped at 0 so a load never changes sign).
Eigen::MatrixXd uniform_load_scenarios(const DcNetwork& net, double lo, double hi, int64_t count);
Eigen::MatrixXd perturbed_load_scenarios(const DcNetwork& net, double scale, double sigma, int64_t count,
                                         uint64_t seed);

}  // namespace nfkit
