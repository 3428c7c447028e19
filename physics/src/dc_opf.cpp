#include "nfkit/physics/dc_opf.h"

#include <IpIpoptApplication.hpp>
#include <IpSolveStatistics.hpp>
#include <IpTNLP.hpp>

#include <chrono>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "nfkit/core/error.h"

namespace nfkit {

std::string to_string(OpfStatus s) {
  switch (s) {
    case OpfStatus::kOptimal: return "optimal";
    case OpfStatus::kInfeasible: return "infeasible";
    default: return "failed";
  }
}

namespace {

using Ipopt::Index;
using Ipopt::Number;
constexpr double kIpoptInf = 1e19;

// The DC-OPF (or the projection) as an Ipopt TNLP with linear constraints A x in [lo, hi].
class DcOpfNlp : public Ipopt::TNLP {
 public:
  // p0 == nullptr: minimise cost; otherwise ½ |pg - p0|^2.
  DcOpfNlp(const DcNetwork& net, const Eigen::VectorXd& pd, const Eigen::VectorXd* p0) : net_(net), p0_(p0) {
    ng_ = net.num_generators();
    nb_ = net.num_buses();
    const double base = net.base_mva();
    // epigraph variables for piecewise-linear costs
    if (p0_ == nullptr)
      for (int64_t g = 0; g < ng_; ++g)
        if (net.costs()[g].model == GenCost::Model::kPiecewiseLinear) pwl_.push_back(g);
    n_ = ng_ + nb_ + static_cast<int64_t>(pwl_.size());

    // nodal balance: base (B θ)_i - Σ_{g at i} P_g = -pd_i - Gs_i - P_shift,i
    const auto& B = net.bbus();
    std::vector<std::vector<std::pair<int64_t, double>>> rows(nb_);
    for (int k = 0; k < B.outerSize(); ++k)
      for (Eigen::SparseMatrix<double>::InnerIterator it(B, k); it; ++it)
        rows[it.row()].emplace_back(ng_ + it.col(), base * it.value());
    for (int64_t g = 0; g < ng_; ++g) rows[net.generator_bus()[g]].emplace_back(g, -1.0);
    for (int64_t i = 0; i < nb_; ++i) {
      const double rhs = -pd[i] - net.shunt_load()[i] - net.shift_injection_bus()[i];
      add_row(rows[i], rhs, rhs);
    }
    // branch limits and angle differences
    for (int64_t k = 0; k < net.num_branches(); ++k) {
      const int64_t f = ng_ + net.branch_from()[k], t = ng_ + net.branch_to()[k];
      const double rate = net.flow_limit()[k], bk = base * net.susceptance()[k];
      const double sh = net.shift_injection_branch()[k];
      if (std::isfinite(rate)) add_row({{f, bk}, {t, -bk}}, -rate - sh, rate - sh);
      const double lo = net.angle_min()[k], hi = net.angle_max()[k];
      if (std::isfinite(lo) || std::isfinite(hi))
        add_row({{f, 1.0}, {t, -1.0}}, std::isfinite(lo) ? lo : -kIpoptInf, std::isfinite(hi) ? hi : kIpoptInf);
    }
    // epigraph: m_j P_g - t_g <= m_j x_j - y_j for each segment j
    for (size_t e = 0; e < pwl_.size(); ++e) {
      const auto& c = net.costs()[pwl_[e]].coeffs;
      const int np = static_cast<int>(c.size() / 2);
      for (int j = 0; j + 1 < np; ++j) {
        const double m = (c[2 * j + 3] - c[2 * j + 1]) / (c[2 * j + 2] - c[2 * j]);
        add_row({{pwl_[e], m}, {ng_ + nb_ + static_cast<int64_t>(e), -1.0}}, -kIpoptInf, m * c[2 * j] - c[2 * j + 1]);
      }
    }
    x_ = Eigen::VectorXd::Zero(n_);
    lambda_ = Eigen::VectorXd::Zero(static_cast<int64_t>(lo_.size()));
  }

  bool hessian_constant() const {
    if (p0_ != nullptr) return true;
    for (const auto& c : net_.costs())
      if (c.model == GenCost::Model::kPolynomial && c.order() > 2) return false;
    return true;
  }

  bool get_nlp_info(Index& n, Index& m, Index& nnz_jac_g, Index& nnz_h_lag, IndexStyleEnum& style) override {
    n = static_cast<Index>(n_);
    m = static_cast<Index>(lo_.size());
    nnz_jac_g = static_cast<Index>(vals_.size());
    nnz_h_lag = static_cast<Index>(ng_);
    style = C_STYLE;
    return true;
  }

  bool get_bounds_info(Index, Number* xl, Number* xu, Index m, Number* gl, Number* gu) override {
    for (int64_t g = 0; g < ng_; ++g) xl[g] = net_.pmin()[g], xu[g] = net_.pmax()[g];
    for (int64_t i = 0; i < nb_; ++i) xl[ng_ + i] = -kIpoptInf, xu[ng_ + i] = kIpoptInf;
    xl[ng_ + net_.reference_bus()] = xu[ng_ + net_.reference_bus()] = net_.reference_angle();
    for (int64_t e = ng_ + nb_; e < n_; ++e) xl[e] = -kIpoptInf, xu[e] = kIpoptInf;
    for (Index r = 0; r < m; ++r) gl[r] = lo_[r], gu[r] = hi_[r];
    return true;
  }

  bool get_starting_point(Index, bool, Number* x, bool, Number*, Number*, Index, bool, Number*) override {
    for (int64_t g = 0; g < ng_; ++g) {
      const double mid = 0.5 * (net_.pmin()[g] + net_.pmax()[g]);
      x[g] = p0_ != nullptr ? std::min(std::max((*p0_)[g], net_.pmin()[g]), net_.pmax()[g]) : mid;
    }
    for (int64_t i = 0; i < nb_; ++i) x[ng_ + i] = net_.reference_angle();
    for (size_t e = 0; e < pwl_.size(); ++e) x[ng_ + nb_ + e] = net_.costs()[pwl_[e]].cost(x[pwl_[e]]);
    return true;
  }

  bool eval_f(Index, const Number* x, bool, Number& f) override {
    f = 0.0;
    if (p0_ != nullptr) {
      for (int64_t g = 0; g < ng_; ++g) f += 0.5 * (x[g] - (*p0_)[g]) * (x[g] - (*p0_)[g]);
      return true;
    }
    for (int64_t g = 0; g < ng_; ++g)
      if (net_.costs()[g].model == GenCost::Model::kPolynomial) f += net_.costs()[g].cost(x[g]);
    for (int64_t e = ng_ + nb_; e < n_; ++e) f += x[e];
    return true;
  }

  bool eval_grad_f(Index, const Number* x, bool, Number* grad) override {
    for (int64_t j = 0; j < n_; ++j) grad[j] = 0.0;
    if (p0_ != nullptr) {
      for (int64_t g = 0; g < ng_; ++g) grad[g] = x[g] - (*p0_)[g];
      return true;
    }
    for (int64_t g = 0; g < ng_; ++g)
      if (net_.costs()[g].model == GenCost::Model::kPolynomial) grad[g] = net_.costs()[g].marginal(x[g]);
    for (int64_t e = ng_ + nb_; e < n_; ++e) grad[e] = 1.0;
    return true;
  }

  bool eval_g(Index, const Number* x, bool, Index m, Number* g) override {
    for (Index r = 0; r < m; ++r) g[r] = 0.0;
    for (size_t e = 0; e < vals_.size(); ++e) g[rows_[e]] += vals_[e] * x[cols_[e]];
    return true;
  }

  bool eval_jac_g(Index, const Number*, bool, Index, Index nele, Index* irow, Index* jcol, Number* values) override {
    if (values == nullptr) {
      for (Index e = 0; e < nele; ++e) irow[e] = rows_[e], jcol[e] = cols_[e];
    } else {
      for (Index e = 0; e < nele; ++e) values[e] = vals_[e];
    }
    return true;
  }

  bool eval_h(Index, const Number* x, bool, Number obj_factor, Index, const Number*, bool, Index, Index* irow,
              Index* jcol, Number* values) override {
    if (values == nullptr) {
      for (int64_t g = 0; g < ng_; ++g) irow[g] = jcol[g] = static_cast<Index>(g);
      return true;
    }
    for (int64_t g = 0; g < ng_; ++g) {
      double h = 0.0;
      if (p0_ != nullptr) {
        h = 1.0;
      } else if (net_.costs()[g].model == GenCost::Model::kPolynomial) {
        const auto& c = net_.costs()[g].coeffs;  // highest order first
        const int n = static_cast<int>(c.size());
        for (int i = 0; i + 2 < n; ++i) {
          const int k = n - 1 - i;  // power of c[i]
          h += c[i] * k * (k - 1) * std::pow(x[g], k - 2);
        }
      }
      values[g] = obj_factor * h;
    }
    return true;
  }

  void finalize_solution(Ipopt::SolverReturn, Index n, const Number* x, const Number*, const Number*, Index m,
                         const Number*, const Number* lambda, Number obj, const Ipopt::IpoptData*,
                         Ipopt::IpoptCalculatedQuantities*) override {
    for (Index j = 0; j < n; ++j) x_[j] = x[j];
    for (Index r = 0; r < m; ++r) lambda_[r] = lambda[r];
    obj_ = obj;
  }

  const Eigen::VectorXd& x() const { return x_; }
  const Eigen::VectorXd& lambda() const { return lambda_; }
  double objective() const { return obj_; }
  int64_t ng() const { return ng_; }
  int64_t nb() const { return nb_; }

 private:
  void add_row(const std::vector<std::pair<int64_t, double>>& entries, double lo, double hi) {
    const Index r = static_cast<Index>(lo_.size());
    for (const auto& [c, v] : entries) {
      rows_.push_back(r);
      cols_.push_back(static_cast<Index>(c));
      vals_.push_back(v);
    }
    lo_.push_back(lo);
    hi_.push_back(hi);
  }

  const DcNetwork& net_;
  const Eigen::VectorXd* p0_;
  int64_t ng_ = 0, nb_ = 0, n_ = 0;
  std::vector<int64_t> pwl_;
  std::vector<Index> rows_, cols_;
  std::vector<double> vals_, lo_, hi_;
  Eigen::VectorXd x_, lambda_;
  double obj_ = 0.0;
};

std::string fmt(double v) {
  std::ostringstream s;
  s.precision(8);
  s << v;
  return s.str();
}

DcOpfSolution solve(const DcNetwork& net, const Eigen::VectorXd& pd, const Eigen::VectorXd* p0,
                    const DcOpfOptions& opts) {
  DcOpfSolution sol;
  const double demand = pd.sum() + net.shunt_load().sum();
  if (demand > net.pmax().sum() + 1e-9 * std::max(1.0, std::abs(demand))) {
    sol.status = OpfStatus::kInfeasible;
    sol.message = "total demand " + fmt(demand) + " MW exceeds the in-service generation capacity " +
                  fmt(net.pmax().sum()) + " MW";
    return sol;
  }
  if (demand < net.pmin().sum() - 1e-9 * std::max(1.0, std::abs(demand))) {
    sol.status = OpfStatus::kInfeasible;
    sol.message = "total demand " + fmt(demand) + " MW is below the generators' minimum output " +
                  fmt(net.pmin().sum()) + " MW";
    return sol;
  }

  Ipopt::SmartPtr<DcOpfNlp> nlp = new DcOpfNlp(net, pd, p0);
  Ipopt::SmartPtr<Ipopt::IpoptApplication> app = IpoptApplicationFactory();
  auto o = app->Options();
  o->SetNumericValue("tol", opts.tol);
  o->SetNumericValue("constr_viol_tol", opts.constr_viol_tol);
  o->SetNumericValue("bound_relax_factor", 0.0);
  o->SetIntegerValue("max_iter", opts.max_iter);
  o->SetIntegerValue("print_level", opts.print_level);
  o->SetStringValue("sb", "yes");
  o->SetStringValue("jac_c_constant", "yes");
  o->SetStringValue("jac_d_constant", "yes");
  if (nlp->hessian_constant()) o->SetStringValue("hessian_constant", "yes");
  o->SetStringValue("mu_strategy", "adaptive");
  // "" : no ipopt.opt from the working directory (it would silently change the solver)
  if (app->Initialize("") != Ipopt::Solve_Succeeded) {
    sol.message = "Ipopt failed to initialise";
    return sol;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const Ipopt::ApplicationReturnStatus st = app->OptimizeTNLP(Ipopt::SmartPtr<Ipopt::TNLP>(GetRawPtr(nlp)));
  sol.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (Ipopt::SmartPtr<Ipopt::SolveStatistics> stats = app->Statistics(); Ipopt::IsValid(stats))
    sol.iterations = stats->IterationCount();

  switch (st) {
    case Ipopt::Solve_Succeeded:
      sol.status = OpfStatus::kOptimal;
      sol.message = "optimal";
      break;
    case Ipopt::Solved_To_Acceptable_Level:
      sol.status = OpfStatus::kOptimal;
      sol.message = "optimal to Ipopt's acceptable tolerance";
      break;
    case Ipopt::Infeasible_Problem_Detected:
      sol.status = OpfStatus::kInfeasible;
      sol.message = "Ipopt detected infeasibility: no dispatch serves these loads within the line and angle limits";
      return sol;
    case Ipopt::Maximum_Iterations_Exceeded:
      sol.message = "Ipopt stopped at max_iter = " + std::to_string(opts.max_iter);
      return sol;
    default:
      sol.message = "Ipopt failed with status " + std::to_string(static_cast<int>(st));
      return sol;
  }
  const int64_t ng = nlp->ng(), nb = nlp->nb();
  sol.pg = nlp->x().head(ng);
  sol.theta = nlp->x().segment(ng, nb);
  sol.flows = net.flows_from_angles(sol.theta);
  sol.lmp = nlp->lambda().head(nb);
  sol.objective = nlp->objective();
  sol.cost = net.cost(sol.pg);
  sol.feasibility = net.check(pd, sol.pg);
  return sol;
}

}  // namespace

DcOpfSolution solve_dc_opf(const DcNetwork& net, const Eigen::VectorXd& pd, const DcOpfOptions& opts) {
  net.check_vector("solve_dc_opf", "pd", pd, net.num_buses());
  return solve(net, pd, nullptr, opts);
}

DcOpfSolution project_dispatch(const DcNetwork& net, const Eigen::VectorXd& pd, const Eigen::VectorXd& p0,
                               const DcOpfOptions& opts) {
  net.check_vector("project_dispatch", "pd", pd, net.num_buses());
  net.check_vector("project_dispatch", "p0", p0, net.num_generators());
  // A feasible p0 is its own projection. Ipopt would only approach it to about sqrt(tol):
  // there every multiplier is zero and the active constraints are degenerate.
  const FeasibilityReport rep = net.check(pd, p0);
  if (rep.feasible(1e-9, 1e-9)) {
    DcOpfSolution sol;
    sol.status = OpfStatus::kOptimal;
    sol.message = "feasible as given";
    sol.pg = p0;
    sol.theta = net.angles(pd, p0);
    sol.flows = net.flows_from_angles(sol.theta);
    sol.lmp = Eigen::VectorXd::Zero(net.num_buses());
    sol.cost = net.cost(p0);
    sol.feasibility = rep;
    return sol;
  }
  return solve(net, pd, &p0, opts);
}

nlohmann::json DcOpfSolution::to_json(const DcNetwork& net) const {
  nlohmann::json j;
  j["case"] = net.name();
  j["dc_model"] = nfkit::to_string(net.convention());
  j["status"] = nfkit::to_string(status);
  j["message"] = message;
  if (status != OpfStatus::kOptimal) return j;
  j["cost"] = cost;
  j["iterations"] = iterations;
  j["seconds"] = seconds;
  auto gens = nlohmann::json::array();
  for (int64_t g = 0; g < net.num_generators(); ++g)
    gens.push_back({{"row", net.generator_rows()[g] + 1},
                    {"bus", net.bus_ids()[net.generator_bus()[g]]},
                    {"pg_mw", pg[g]}});
  j["generators"] = gens;
  auto buses = nlohmann::json::array();
  for (int64_t i = 0; i < net.num_buses(); ++i)
    buses.push_back({{"bus", net.bus_ids()[i]}, {"lmp", lmp[i]}, {"theta_deg", theta[i] * 180.0 / M_PI}});
  j["buses"] = buses;
  auto branches = nlohmann::json::array();
  for (int64_t k = 0; k < net.num_branches(); ++k) {
    nlohmann::json b = {{"row", net.branch_rows()[k] + 1},
                        {"from", net.bus_ids()[net.branch_from()[k]]},
                        {"to", net.bus_ids()[net.branch_to()[k]]},
                        {"flow_mw", flows[k]}};
    if (std::isfinite(net.flow_limit()[k])) b["limit_mw"] = net.flow_limit()[k];
    branches.push_back(b);
  }
  j["branches"] = branches;
  j["feasibility"] = feasibility.to_json();
  return j;
}

}  // namespace nfkit
