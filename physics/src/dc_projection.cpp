#include "nfkit/physics/dc_projection.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "nfkit/core/error.h"

namespace nfkit {

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kDeg = M_PI / 180.0;
constexpr double kZeroRow = 1e-12;  // a sensitivity row below this norm moves with no generator
}  // namespace

DcProjector::DcProjector(const DcNetwork& net, ProjectionOptions opts) : net_(net), opts_(opts) {
  const int64_t ng = net.num_generators(), nb = net.num_buses(), nl = net.num_branches();
  if (!(opts_.tol > 0.0) || !(opts_.feasible_tol_mw > 0.0))
    usage_error("DcProjector", "tol and feasible_tol_mw must be > 0");
  // The DC model is affine in P_g: columns of H and A are the responses to 1 MW at each unit.
  const Eigen::VectorXd zb = Eigen::VectorXd::Zero(nb);
  Eigen::VectorXd zg = Eigen::VectorXd::Zero(ng);
  const Eigen::VectorXd th0 = net.angles(zb, zg);
  const Eigen::VectorXd f0 = net.flows_from_angles(th0);
  for (int64_t k = 0; k < nl; ++k)
    if (std::isfinite(net.angle_min()[k]) || std::isfinite(net.angle_max()[k])) angle_rows_.push_back(k);
  hflow_.resize(nl, ng);
  hangle_.resize(static_cast<int64_t>(angle_rows_.size()), ng);
  for (int64_t g = 0; g < ng; ++g) {
    zg.setZero();
    zg[g] = 1.0;
    const Eigen::VectorXd th = net.angles(zb, zg) - th0;
    hflow_.col(g) = net.flows_from_angles(net.angles(zb, zg)) - f0;
    for (size_t a = 0; a < angle_rows_.size(); ++a) {
      const int64_t k = angle_rows_[a];
      hangle_(static_cast<int64_t>(a), g) = th[net.branch_from()[k]] - th[net.branch_to()[k]];
    }
  }
  // Inequality rows n^T x >= b, each scaled to unit norm.
  std::vector<Eigen::VectorXd> rows;
  auto add = [&](const Eigen::VectorXd& n, int kind, int index) {
    rows.push_back(n);
    kind_.push_back(kind);
    index_.push_back(index);
  };
  for (int64_t g = 0; g < ng; ++g) {
    Eigen::VectorXd e = Eigen::VectorXd::Zero(ng);
    e[g] = 1.0;
    add(e, 0, static_cast<int>(g));
    add(-e, 1, static_cast<int>(g));
  }
  for (int64_t k = 0; k < nl; ++k) {
    if (!std::isfinite(net.flow_limit()[k])) continue;
    const Eigen::VectorXd h = hflow_.row(k).transpose();
    if (h.norm() <= kZeroRow) {
      fixed_flows_.push_back(k);
      continue;
    }
    add(h, 2, static_cast<int>(k));
    add(-h, 3, static_cast<int>(k));
  }
  for (size_t a = 0; a < angle_rows_.size(); ++a) {
    const Eigen::VectorXd h = hangle_.row(static_cast<int64_t>(a)).transpose();
    if (h.norm() <= kZeroRow * 1e-3) {
      fixed_angles_.push_back(static_cast<int64_t>(a));
      continue;
    }
    const int64_t k = angle_rows_[a];
    if (std::isfinite(net.angle_min()[k])) add(h, 4, static_cast<int>(a));
    if (std::isfinite(net.angle_max()[k])) add(-h, 5, static_cast<int>(a));
  }
  c_.resize(static_cast<int64_t>(rows.size()), ng);
  cnorm_.resize(static_cast<int64_t>(rows.size()));
  for (size_t i = 0; i < rows.size(); ++i) {
    cnorm_[static_cast<int64_t>(i)] = rows[i].norm();
    c_.row(static_cast<int64_t>(i)) = rows[i].transpose() / cnorm_[static_cast<int64_t>(i)];
  }
  if (opts_.max_iter <= 0) opts_.max_iter = static_cast<int>(10 * (c_.rows() + ng));
}

Eigen::VectorXd DcProjector::base_flows(const Eigen::VectorXd& pd) const {
  return net_.flows(pd, Eigen::VectorXd::Zero(net_.num_generators()));
}

Projection DcProjector::solve(const Eigen::VectorXd& pd, const Eigen::VectorXd& p0) const {
  const int64_t ng = net_.num_generators(), m = c_.rows();
  Projection r;
  const Eigen::VectorXd th0 = net_.angles(pd, Eigen::VectorXd::Zero(ng));
  const Eigen::VectorXd f0 = net_.flows_from_angles(th0);
  auto a0 = [&](int64_t a) {
    const int64_t k = angle_rows_[static_cast<size_t>(a)];
    return th0[net_.branch_from()[k]] - th0[net_.branch_to()[k]];
  };
  for (int64_t k : fixed_flows_)
    if (std::abs(f0[k]) - net_.flow_limit()[k] > opts_.feasible_tol_mw) {
      r.status = OpfStatus::kInfeasible;
      r.message = "branch row " + std::to_string(net_.branch_rows()[k] + 1) +
                  " carries a flow above its limit that no generator can change";
      r.pg = p0;
      return r;
    }
  for (int64_t a : fixed_angles_) {
    const int64_t k = angle_rows_[static_cast<size_t>(a)];
    if (a0(a) < net_.angle_min()[k] - opts_.feasible_tol_mw * kDeg ||
        a0(a) > net_.angle_max()[k] + opts_.feasible_tol_mw * kDeg) {
      r.status = OpfStatus::kInfeasible;
      r.message = "branch row " + std::to_string(net_.branch_rows()[k] + 1) +
                  " has an angle difference outside its limits that no generator can change";
      r.pg = p0;
      return r;
    }
  }
  Eigen::VectorXd b(m);
  for (int64_t i = 0; i < m; ++i) {
    const int j = index_[static_cast<size_t>(i)];
    double v = 0.0;
    switch (kind_[static_cast<size_t>(i)]) {
      case 0: v = net_.pmin()[j]; break;
      case 1: v = -net_.pmax()[j]; break;
      case 2: v = -net_.flow_limit()[j] - f0[j]; break;
      case 3: v = f0[j] - net_.flow_limit()[j]; break;
      case 4: v = net_.angle_min()[angle_rows_[static_cast<size_t>(j)]] - a0(j); break;
      default: v = a0(j) - net_.angle_max()[angle_rows_[static_cast<size_t>(j)]]; break;
    }
    b[i] = v / cnorm_[i];
  }
  const double sq = std::sqrt(static_cast<double>(ng));
  const Eigen::VectorXd ne = Eigen::VectorXd::Constant(ng, 1.0 / sq);
  const double be = (pd.sum() + net_.shunt_load().sum()) / sq;

  // Goldfarb-Idnani with G = I: the unconstrained minimum is p0; J = I, so the step directions
  // are z = (I - N (N^T N)^-1 N^T) n_p and r = (N^T N)^-1 N^T n_p for the active normals N.
  Eigen::VectorXd x = p0;
  std::vector<int> act;      // active rows; -1 is the balance
  std::vector<double> sgn;   // the sign the balance row was added with (1 for inequalities)
  std::vector<double> u;     // multipliers of the active rows
  std::vector<char> in_act(static_cast<size_t>(m), 0);
  auto normal = [&](int j, double s) -> Eigen::VectorXd {
    return j < 0 ? Eigen::VectorXd(s * ne) : Eigen::VectorXd(c_.row(j).transpose());
  };
  bool balance_done = false;
  Eigen::MatrixXd nmat;
  while (true) {
    int p = -1;
    double ps = 1.0;  // sign of the chosen row (the balance may enter from either side)
    if (!balance_done) {
      ps = ne.dot(x) - be > 0.0 ? -1.0 : 1.0;
      balance_done = true;
    } else {
      const Eigen::VectorXd s = c_ * x - b;
      double worst = -opts_.tol;
      for (int64_t i = 0; i < m; ++i)
        if (!in_act[static_cast<size_t>(i)] && s[i] < worst) {
          worst = s[i];
          p = static_cast<int>(i);
        }
      if (p < 0) break;  // nothing violated: x is the projection
    }
    const Eigen::VectorXd np = normal(p, ps);
    const double bp = p < 0 ? ps * be : b[p];
    double up = 0.0;
    while (true) {
      if (++r.iterations > opts_.max_iter) {
        r.status = OpfStatus::kFailed;
        r.message = "the active-set method did not finish in " + std::to_string(opts_.max_iter) + " steps";
        r.pg = x;
        return r;
      }
      const int64_t q = static_cast<int64_t>(act.size());
      Eigen::VectorXd z = np, rr;
      if (q > 0) {
        nmat.resize(ng, q);
        for (int64_t a = 0; a < q; ++a) nmat.col(a) = normal(act[static_cast<size_t>(a)], sgn[static_cast<size_t>(a)]);
        // least squares by column-pivoting QR (stable when active normals are nearly dependent)
        rr = nmat.colPivHouseholderQr().solve(np);
        z -= nmat * rr;
      }
      // The largest step that keeps the multipliers of active inequalities >= 0.
      double t1 = kInf;
      int64_t k = -1;
      for (int64_t a = 0; a < q; ++a)
        if (act[static_cast<size_t>(a)] >= 0 && rr[a] > 1e-12) {
          const double t = u[static_cast<size_t>(a)] / rr[a];
          if (t < t1) {
            t1 = t;
            k = a;
          }
        }
      const double zz = z.dot(np);
      auto move_multipliers = [&](double t) {
        for (int64_t a = 0; a < q; ++a) u[static_cast<size_t>(a)] -= t * rr[a];
        up += t;
      };
      auto drop = [&](int64_t a) {
        if (act[static_cast<size_t>(a)] >= 0) in_act[static_cast<size_t>(act[static_cast<size_t>(a)])] = 0;
        act.erase(act.begin() + a);
        sgn.erase(sgn.begin() + a);
        u.erase(u.begin() + a);
      };
      if (zz <= 1e-12) {  // n_p depends on the active normals (|z| <= 1e-6 for unit rows)
        if (k < 0) {
          r.status = OpfStatus::kInfeasible;
          r.message = "the loads cannot be served within the generator, line and angle limits";
          r.pg = x;
          return r;
        }
        move_multipliers(t1);
        drop(k);
        continue;
      }
      const double t2 = std::max(0.0, -(np.dot(x) - bp) / zz);
      if (t2 <= t1) {
        x += t2 * z;
        move_multipliers(t2);
        act.push_back(p);
        sgn.push_back(ps);
        u.push_back(up);
        if (p >= 0) in_act[static_cast<size_t>(p)] = 1;
        break;
      }
      x += t1 * z;
      move_multipliers(t1);
      drop(k);
    }
  }
  r.status = OpfStatus::kOptimal;
  r.pg = x;
  r.active = static_cast<int>(act.size());
  r.distance = (x - p0).norm();
  r.feasibility = net_.check(pd, x);
  if (!r.feasibility.feasible(opts_.feasible_tol_mw, opts_.feasible_tol_mw)) {
    r.status = OpfStatus::kFailed;
    r.message = "the active-set result fails the feasibility check: " + r.feasibility.worst;
  }
  return r;
}

bool DcProjector::needs_fallback(const Projection& r) const {
  // kInfeasible is the method's certificate (a violated row that the active rows with
  // nonnegative multipliers exclude); only results that fail the check go to Ipopt
  return opts_.ipopt_fallback && r.status == OpfStatus::kFailed;
}

void DcProjector::fall_back(const Eigen::VectorXd& pd, const Eigen::VectorXd& p0, Projection& r) const {
  const DcOpfSolution s = project_dispatch(net_, pd, p0);
  if (s.status == OpfStatus::kOptimal && s.feasibility.feasible(opts_.feasible_tol_mw, opts_.feasible_tol_mw)) {
    r.status = OpfStatus::kOptimal;
    r.pg = s.pg;
    r.feasibility = s.feasibility;
    r.distance = (s.pg - p0).norm();
    r.fallback = true;
    r.message.clear();
  } else if (s.status == OpfStatus::kInfeasible) {
    r.status = OpfStatus::kInfeasible;
    r.message = s.message;
  }
}

Projection DcProjector::project(const Eigen::VectorXd& pd, const Eigen::VectorXd& p0) const {
  net_.check_vector("DcProjector::project", "pd", pd, net_.num_buses());
  net_.check_vector("DcProjector::project", "p0", p0, net_.num_generators());
  Projection r = solve(pd, p0);
  if (needs_fallback(r)) fall_back(pd, p0, r);
  return r;
}

std::vector<Projection> DcProjector::project_batch(const Eigen::MatrixXd& pd, const Eigen::MatrixXd& p0) const {
  if (pd.rows() != p0.rows() || pd.cols() != net_.num_buses() || p0.cols() != net_.num_generators())
    usage_error("DcProjector::project_batch", "pd must be [B, " + std::to_string(net_.num_buses()) + "] and p0 [B, " +
                                                  std::to_string(net_.num_generators()) + "], got [" +
                                                  std::to_string(pd.rows()) + ", " + std::to_string(pd.cols()) + "] and [" +
                                                  std::to_string(p0.rows()) + ", " + std::to_string(p0.cols()) + "]");
  if (!pd.allFinite() || !p0.allFinite()) usage_error("DcProjector::project_batch", "pd and p0 must be finite");
  const int64_t n = pd.rows();
  std::vector<Projection> out(static_cast<size_t>(n));
  at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[static_cast<size_t>(i)] = solve(pd.row(i).transpose(), p0.row(i).transpose());
  });
  for (int64_t i = 0; i < n; ++i)
    if (needs_fallback(out[static_cast<size_t>(i)]))
      fall_back(pd.row(i).transpose(), p0.row(i).transpose(), out[static_cast<size_t>(i)]);
  return out;
}

}  // namespace nfkit
