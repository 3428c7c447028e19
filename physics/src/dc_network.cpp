#include "nfkit/physics/dc_network.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <queue>
#include <random>
#include <sstream>

#include "nfkit/core/error.h"

namespace nfkit {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kDeg = M_PI / 180.0;

std::string fmt(double v, int prec = 6) {
  std::ostringstream s;
  s.precision(prec);
  s << v;
  return s.str();
}

bool bus_active(const Bus& b) { return b.type != BusType::kIsolated; }

// Buses reachable from the reference bus over in-service branches (skip_row excluded).
std::vector<char> reachable(const PowerCase& pc, int skip_row) {
  const size_t nb = pc.buses.size();
  std::vector<std::vector<int>> adj(nb);
  for (size_t k = 0; k < pc.branches.size(); ++k) {
    const Branch& br = pc.branches[k];
    if (!br.in_service || static_cast<int>(k) == skip_row) continue;
    const int f = pc.bus_index(br.from), t = pc.bus_index(br.to);
    if (!bus_active(pc.buses[f]) || !bus_active(pc.buses[t])) continue;
    adj[f].push_back(t);
    adj[t].push_back(f);
  }
  std::vector<char> seen(nb, 0);
  std::queue<int> q;
  for (size_t i = 0; i < nb; ++i)
    if (pc.buses[i].type == BusType::kReference) {
      seen[i] = 1;
      q.push(static_cast<int>(i));
      break;
    }
  while (!q.empty()) {
    const int i = q.front();
    q.pop();
    for (int j : adj[i])
      if (!seen[j]) seen[j] = 1, q.push(j);
  }
  return seen;
}

}  // namespace

DcConvention parse_dc_convention(const std::string& name, const std::string& option) {
  if (name == "matpower") return DcConvention::kMatpower;
  if (name == "powermodels") return DcConvention::kPowerModels;
  usage_error("dc model", option + " is '" + name + "', but must be matpower or powermodels");
}

std::string to_string(DcConvention c) { return c == DcConvention::kMatpower ? "matpower" : "powermodels"; }

std::string FeasibilityReport::summary() const {
  if (worst.empty()) return "feasible";
  return worst;
}

nlohmann::json FeasibilityReport::to_json() const {
  return {{"balance_mw", balance_mw}, {"generator_mw", generator_mw}, {"line_mw", line_mw},
          {"angle_deg", angle_deg},   {"worst_mw", worst_mw},         {"worst", worst}};
}

DcNetwork::DcNetwork(const PowerCase& pc, DcConvention convention)
    : convention_(convention), name_(pc.name), source_(pc.source), base_mva_(pc.base_mva) {
  const char* fn = "DcNetwork";
  // buses
  std::vector<int64_t> index(pc.buses.size(), -1);
  std::vector<double> pd, gs;
  const auto seen = reachable(pc, -1);
  std::vector<int> islanded;
  int64_t ref = -1;
  for (size_t i = 0; i < pc.buses.size(); ++i) {
    const Bus& b = pc.buses[i];
    if (!bus_active(b)) continue;
    if (!seen[i]) islanded.push_back(b.id);
    index[i] = static_cast<int64_t>(bus_ids_.size());
    bus_ids_.push_back(b.id);
    pd.push_back(b.pd);
    gs.push_back(b.gs);
    if (b.type == BusType::kReference && ref < 0) {
      ref = index[i];
      va_ref_ = convention == DcConvention::kMatpower ? b.va * kDeg : 0.0;
    }
  }
  if (!islanded.empty())
    runtime_error(fn, source_ + ": the grid is islanded: bus " + std::to_string(islanded[0]) +
                          (islanded.size() > 1 ? " and " + std::to_string(islanded.size() - 1) + " other buses" : "") +
                          " not connected to the reference bus by in-service branches");
  ref_ = ref;
  const int64_t nb = num_buses();
  pd_ = Eigen::Map<Eigen::VectorXd>(pd.data(), nb);
  gs_ = Eigen::Map<Eigen::VectorXd>(gs.data(), nb);

  // generators
  std::vector<double> pmin, pmax;
  for (size_t g = 0; g < pc.generators.size(); ++g) {
    const Generator& gen = pc.generators[g];
    const int bi = pc.bus_index(gen.bus);
    if (!gen.in_service || index[bi] < 0) continue;
    gen_rows_.push_back(static_cast<int>(g));
    gen_bus_.push_back(index[bi]);
    pmin.push_back(gen.pmin);
    pmax.push_back(gen.pmax);
    costs_.push_back(pc.gencosts[g]);
  }
  if (gen_rows_.empty()) runtime_error(fn, source_ + ": no in-service generator");
  pmin_ = Eigen::Map<Eigen::VectorXd>(pmin.data(), num_generators());
  pmax_ = Eigen::Map<Eigen::VectorXd>(pmax.data(), num_generators());

  // branches
  std::vector<double> b, shift, rate, amin, amax;
  for (size_t k = 0; k < pc.branches.size(); ++k) {
    const Branch& br = pc.branches[k];
    const int64_t f = index[pc.bus_index(br.from)], t = index[pc.bus_index(br.to)];
    if (!br.in_service || f < 0 || t < 0) continue;
    double bk = 0.0, sk = 0.0;
    if (convention == DcConvention::kMatpower) {
      const double tap = br.ratio == 0.0 ? 1.0 : br.ratio;
      if (br.x == 0.0) runtime_error(fn, source_ + ": mpc.branch row " + std::to_string(k + 1) + " has BR_X = 0 (the DC model needs a reactance)");
      bk = 1.0 / (br.x * tap);
      sk = br.angle * kDeg;
    } else {
      const double z2 = br.r * br.r + br.x * br.x;
      if (z2 == 0.0) runtime_error(fn, source_ + ": mpc.branch row " + std::to_string(k + 1) + " has BR_R = BR_X = 0");
      bk = br.x / z2;  // -imag(1 / (r + jx))
    }
    double lo = -kInf, hi = kInf;
    if (convention == DcConvention::kMatpower) {
      if (br.angmin != 0.0 && br.angmin > -360.0) lo = br.angmin * kDeg;
      if (br.angmax != 0.0 && br.angmax < 360.0) hi = br.angmax * kDeg;
    } else {
      double a = br.angmin * kDeg, c = br.angmax * kDeg;
      if (a <= -M_PI / 2) a = -1.0472;
      if (c >= M_PI / 2) c = 1.0472;
      if (a == 0.0 && c == 0.0) a = -1.0472, c = 1.0472;
      lo = a, hi = c;
    }
    branch_rows_.push_back(static_cast<int>(k));
    from_.push_back(f);
    to_.push_back(t);
    b.push_back(bk);
    shift.push_back(sk);
    rate.push_back(br.rate_a > 0.0 ? br.rate_a : kInf);
    amin.push_back(lo);
    amax.push_back(hi);
  }
  const int64_t nl = num_branches();
  b_ = Eigen::Map<Eigen::VectorXd>(b.data(), nl);
  shift_ = Eigen::Map<Eigen::VectorXd>(shift.data(), nl);
  rate_ = Eigen::Map<Eigen::VectorXd>(rate.data(), nl);
  angmin_ = Eigen::Map<Eigen::VectorXd>(amin.data(), nl);
  angmax_ = Eigen::Map<Eigen::VectorXd>(amax.data(), nl);

  // B and B_f (p.u.), shift injections (MW)
  std::vector<Eigen::Triplet<double>> tb, tf;
  pf_shift_ = Eigen::VectorXd::Zero(nl);
  pbus_shift_ = Eigen::VectorXd::Zero(nb);
  for (int64_t k = 0; k < nl; ++k) {
    const int64_t f = from_[k], t = to_[k];
    tf.emplace_back(k, f, b_[k]);
    tf.emplace_back(k, t, -b_[k]);
    tb.emplace_back(f, f, b_[k]);
    tb.emplace_back(t, t, b_[k]);
    tb.emplace_back(f, t, -b_[k]);
    tb.emplace_back(t, f, -b_[k]);
    pf_shift_[k] = -b_[k] * shift_[k] * base_mva_;
    pbus_shift_[f] += pf_shift_[k];
    pbus_shift_[t] -= pf_shift_[k];
  }
  bbus_.resize(nb, nb);
  bbus_.setFromTriplets(tb.begin(), tb.end());
  bf_.resize(nl, nb);
  bf_.setFromTriplets(tf.begin(), tf.end());

  // LU of B without the reference bus
  std::vector<Eigen::Triplet<double>> tr;
  auto red = [this](int64_t i) { return i < ref_ ? i : i - 1; };
  for (int k = 0; k < bbus_.outerSize(); ++k)
    for (Eigen::SparseMatrix<double>::InnerIterator it(bbus_, k); it; ++it)
      if (it.row() != ref_ && it.col() != ref_) tr.emplace_back(red(it.row()), red(it.col()), it.value());
  Eigen::SparseMatrix<double> br(nb - 1, nb - 1);
  br.setFromTriplets(tr.begin(), tr.end());
  br.makeCompressed();
  lu_ = std::make_shared<Eigen::SparseLU<Eigen::SparseMatrix<double>>>();
  if (nb > 1) {
    lu_->compute(br);
    if (lu_->info() != Eigen::Success)
      runtime_error(fn, source_ + ": the reduced B matrix is singular (zero-susceptance branches?)");
  }
}

void DcNetwork::check_vector(const char* fn, const std::string& what, const Eigen::VectorXd& v, int64_t n) const {
  if (v.size() != n)
    usage_error(fn, what + " has " + std::to_string(v.size()) + " entries, but " + name_ + " needs " + std::to_string(n));
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) usage_error(fn, what + "[" + std::to_string(i) + "] is " + fmt(v[i]) + ", but must be finite");
}

Eigen::VectorXd DcNetwork::injections(const Eigen::VectorXd& pd, const Eigen::VectorXd& pg) const {
  check_vector("DcNetwork::injections", "pd", pd, num_buses());
  check_vector("DcNetwork::injections", "pg", pg, num_generators());
  Eigen::VectorXd p = -pd - gs_;
  for (int64_t g = 0; g < num_generators(); ++g) p[gen_bus_[g]] += pg[g];
  return p;
}

Eigen::VectorXd DcNetwork::angles(const Eigen::VectorXd& pd, const Eigen::VectorXd& pg) const {
  const int64_t nb = num_buses();
  // B θ = (p - P_shift) / base; fix θ_ref and solve the rest
  const Eigen::VectorXd rhs = (injections(pd, pg) - pbus_shift_) / base_mva_ - bbus_.col(ref_) * va_ref_;
  Eigen::VectorXd r(nb - 1);
  for (int64_t i = 0, j = 0; i < nb; ++i)
    if (i != ref_) r[j++] = rhs[i];
  Eigen::VectorXd theta(nb);
  theta[ref_] = va_ref_;
  if (nb > 1) {
    const Eigen::VectorXd x = lu_->solve(r);
    for (int64_t i = 0, j = 0; i < nb; ++i)
      if (i != ref_) theta[i] = x[j++];
  }
  return theta;
}

Eigen::VectorXd DcNetwork::flows_from_angles(const Eigen::VectorXd& theta) const {
  check_vector("DcNetwork::flows_from_angles", "theta", theta, num_buses());
  return base_mva_ * (bf_ * theta) + pf_shift_;
}

Eigen::MatrixXd DcNetwork::ptdf() const {
  const int64_t nb = num_buses(), nl = num_branches();
  Eigen::MatrixXd out = Eigen::MatrixXd::Zero(nl, nb);
  if (nb == 1) return out;
  // column j: flows for a unit (1 MW) injection at j withdrawn at the reference
  Eigen::MatrixXd rhs = Eigen::MatrixXd::Identity(nb - 1, nb - 1) / base_mva_;
  const Eigen::MatrixXd x = lu_->solve(rhs);  // θ (reduced) per unit injection
  Eigen::MatrixXd theta = Eigen::MatrixXd::Zero(nb, nb - 1);
  for (int64_t i = 0, j = 0; i < nb; ++i)
    if (i != ref_) theta.row(i) = x.row(j++);
  const Eigen::MatrixXd f = base_mva_ * (bf_ * theta);  // [nl, nb-1]
  for (int64_t i = 0, j = 0; i < nb; ++i)
    if (i != ref_) out.col(i) = f.col(j++);
  return out;
}

double DcNetwork::cost(const Eigen::VectorXd& pg) const {
  check_vector("DcNetwork::cost", "pg", pg, num_generators());
  double c = 0.0;
  for (int64_t g = 0; g < num_generators(); ++g) c += costs_[g].cost(pg[g]);
  return c;
}

FeasibilityReport DcNetwork::check(const Eigen::VectorXd& pd, const Eigen::VectorXd& pg) const {
  FeasibilityReport r;
  const Eigen::VectorXd p = injections(pd, pg);
  r.balance_mw = std::abs(p.sum());  // the shift injections sum to zero
  std::string worst_balance = "total generation " + fmt(pg.sum(), 8) + " MW differs from total demand " +
                              fmt(pd.sum() + gs_.sum(), 8) + " MW by " + fmt(r.balance_mw) + " MW";
  std::string worst_gen, worst_line, worst_angle;
  for (int64_t g = 0; g < num_generators(); ++g) {
    const double v = std::max(pmin_[g] - pg[g], pg[g] - pmax_[g]);
    if (v > r.generator_mw) {
      r.generator_mw = v;
      worst_gen = "generator " + std::to_string(gen_rows_[g] + 1) + " (bus " + std::to_string(bus_ids_[gen_bus_[g]]) +
                  ") at " + fmt(pg[g]) + " MW is outside [" + fmt(pmin_[g]) + ", " + fmt(pmax_[g]) + "] MW by " + fmt(v) + " MW";
    }
  }
  const Eigen::VectorXd theta = angles(pd, pg);
  const Eigen::VectorXd f = flows_from_angles(theta);
  for (int64_t k = 0; k < num_branches(); ++k) {
    const std::string name = "branch " + std::to_string(branch_rows_[k] + 1) + " (" + std::to_string(bus_ids_[from_[k]]) +
                             "-" + std::to_string(bus_ids_[to_[k]]) + ")";
    const double v = std::abs(f[k]) - rate_[k];
    if (v > r.line_mw) {
      r.line_mw = v;
      worst_line = name + " flow " + fmt(f[k]) + " MW exceeds its limit " + fmt(rate_[k]) + " MW by " + fmt(v) + " MW";
    }
    const double d = theta[from_[k]] - theta[to_[k]];
    const double va = std::max(angmin_[k] - d, d - angmax_[k]) / kDeg;
    if (va > r.angle_deg) {
      r.angle_deg = va;
      worst_angle = name + " angle difference " + fmt(d / kDeg) + " deg is outside its limits by " + fmt(va) + " deg";
    }
  }
  r.worst_mw = std::max({r.balance_mw, r.generator_mw, r.line_mw});
  if (r.worst_mw > 0.0 || r.angle_deg > 0.0) {
    if (r.worst_mw == 0.0) r.worst = worst_angle;
    else if (r.worst_mw == r.line_mw) r.worst = worst_line;
    else if (r.worst_mw == r.generator_mw) r.worst = worst_gen;
    else r.worst = worst_balance;
  }
  return r;
}

std::vector<int> connected_branch_outages(const PowerCase& pc) {
  std::vector<int> out;
  for (size_t k = 0; k < pc.branches.size(); ++k) {
    if (!pc.branches[k].in_service) continue;
    const auto seen = reachable(pc, static_cast<int>(k));
    bool ok = true;
    for (size_t i = 0; i < pc.buses.size() && ok; ++i)
      if (bus_active(pc.buses[i]) && !seen[i]) ok = false;
    if (ok) out.push_back(static_cast<int>(k));
  }
  return out;
}

PowerCase with_branch_outage(const PowerCase& pc, int row) {
  if (row < 0 || row >= static_cast<int>(pc.branches.size()))
    usage_error("with_branch_outage", "branch row " + std::to_string(row + 1) + " is not in " + pc.source + " (" +
                                          std::to_string(pc.branches.size()) + " branches)");
  PowerCase out = pc;
  out.branches[row].in_service = false;
  return out;
}

Eigen::MatrixXd uniform_load_scenarios(const DcNetwork& net, double lo, double hi, int64_t count) {
  if (count < 1) usage_error("uniform_load_scenarios", "count must be >= 1");
  if (!(lo >= 0.0) || !(hi >= lo)) usage_error("uniform_load_scenarios", "need 0 <= lo <= hi, got " + fmt(lo) + ", " + fmt(hi));
  Eigen::MatrixXd out(count, net.num_buses());
  for (int64_t i = 0; i < count; ++i) {
    const double s = count == 1 ? lo : lo + (hi - lo) * static_cast<double>(i) / static_cast<double>(count - 1);
    out.row(i) = s * net.base_load().transpose();
  }
  return out;
}

Eigen::MatrixXd perturbed_load_scenarios(const DcNetwork& net, double scale, double sigma, int64_t count,
                                         uint64_t seed) {
  if (count < 1) usage_error("perturbed_load_scenarios", "count must be >= 1");
  if (!(scale >= 0.0) || !(sigma >= 0.0))
    usage_error("perturbed_load_scenarios", "scale and sigma must be >= 0, got " + fmt(scale) + ", " + fmt(sigma));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n01(0.0, 1.0);
  Eigen::MatrixXd out(count, net.num_buses());
  for (int64_t i = 0; i < count; ++i)
    for (int64_t j = 0; j < net.num_buses(); ++j)
      out(i, j) = scale * net.base_load()[j] * std::max(0.0, 1.0 + sigma * n01(rng));
  return out;
}

}  // namespace nfkit
