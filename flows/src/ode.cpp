#include "nfkit/flows/ode.h"

#include <torch/torch.h>

#include <cmath>
#include <sstream>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"

namespace nfkit {

OdeMethod parse_ode_method(const std::string& name, const std::string& option) {
  if (name == "euler") return OdeMethod::kEuler;
  if (name == "midpoint") return OdeMethod::kMidpoint;
  if (name == "heun") return OdeMethod::kHeun;
  if (name == "rk4") return OdeMethod::kRK4;
  if (name == "dopri5") return OdeMethod::kDopri5;
  usage_error(option, "'" + name + "' is not a solver, expected euler, midpoint, heun, rk4 or dopri5");
}

std::string ode_method_name(OdeMethod m) {
  switch (m) {
    case OdeMethod::kEuler: return "euler";
    case OdeMethod::kMidpoint: return "midpoint";
    case OdeMethod::kHeun: return "heun";
    case OdeMethod::kRK4: return "rk4";
    case OdeMethod::kDopri5: return "dopri5";
  }
  return "?";
}

int64_t ode_evals_per_step(OdeMethod m) {
  switch (m) {
    case OdeMethod::kEuler: return 1;
    case OdeMethod::kMidpoint:
    case OdeMethod::kHeun: return 2;
    case OdeMethod::kRK4: return 4;
    case OdeMethod::kDopri5: return 6;
  }
  return 1;
}

nlohmann::json OdeOptions::to_json() const {
  nlohmann::json j = {{"method", ode_method_name(method_)}, {"steps", steps_}, {"rtol", rtol_},
                      {"atol", atol_}, {"max_steps", max_steps_}};
  if (!grid_.empty()) j["grid"] = grid_;
  return j;
}

OdeOptions OdeOptions::from_json(const nlohmann::json& j) {
  OdeOptions o;
  o.method(parse_ode_method(j.at("method").get<std::string>(), "solver"))
      .steps(j.at("steps").get<int64_t>())
      .rtol(j.at("rtol").get<double>())
      .atol(j.at("atol").get<double>())
      .max_steps(j.at("max_steps").get<int64_t>());
  if (j.contains("grid")) o.grid(j.at("grid").get<std::vector<double>>());
  return o;
}

void OdeOptions::validate() const {
  check_positive_int("--steps", "value", steps_);
  check_positive("--rtol", "value", rtol_);
  check_positive("--atol", "value", atol_);
  check_positive_int("--max-steps", "value", max_steps_);
  if (!grid_.empty()) {
    if (grid_.size() < 2 || grid_.front() != 0.0 || grid_.back() != 1.0)
      usage_error("--grid", "must run from 0 to 1 (at least two times)");
    for (size_t i = 1; i < grid_.size(); ++i)
      if (!(grid_[i] > grid_[i - 1])) usage_error("--grid", "must be strictly increasing");
  }
}

std::string OdeOptions::summary() const {
  std::ostringstream os;
  os << ode_method_name(method_);
  if (method_ == OdeMethod::kDopri5)
    os << " (rtol " << rtol_ << ", atol " << atol_ << ")";
  else if (!grid_.empty())
    os << ", " << grid_.size() - 1 << " steps on a user grid";
  else
    os << ", " << steps_ << (steps_ == 1 ? " step" : " steps");
  return os.str();
}

std::vector<double> ode_time_grid(const OdeOptions& o, double t0, double t1) {
  std::vector<double> g;
  if (!o.grid().empty()) {
    for (double s : o.grid()) g.push_back(t0 + s * (t1 - t0));
  } else {
    const int64_t K = o.steps();
    for (int64_t k = 0; k <= K; ++k) g.push_back(t0 + (t1 - t0) * static_cast<double>(k) / K);
  }
  g.back() = t1;
  return g;
}

namespace {

void check_state(const torch::Tensor& y, const std::string& method, double t, double t0, double t1) {
  if (!torch::isfinite(y).all().item<bool>()) {
    std::ostringstream os;
    os << "the state became non-finite by t = " << t << " (integrating from " << t0 << " to " << t1
       << "); try more steps or the adaptive solver";
    runtime_error(method, os.str());
  }
}

torch::Tensor fixed_grid(const OdeFn& f, torch::Tensor y, const std::vector<double>& g,
                         OdeMethod m, OdeStats& st) {
  for (size_t k = 0; k + 1 < g.size(); ++k) {
    const double t = g[k], h = g[k + 1] - g[k];
    switch (m) {
      case OdeMethod::kEuler:
        y = y.add(f(t, y), h);  // one kernel: y + h f
        break;
      case OdeMethod::kMidpoint: {
        const auto k1 = f(t, y);
        y = y + h * f(t + 0.5 * h, y + (0.5 * h) * k1);
        break;
      }
      case OdeMethod::kHeun: {
        const auto k1 = f(t, y);
        const auto k2 = f(t + h, y + h * k1);
        y = y + (0.5 * h) * (k1 + k2);
        break;
      }
      case OdeMethod::kRK4: {
        const auto k1 = f(t, y);
        const auto k2 = f(t + 0.5 * h, y + (0.5 * h) * k1);
        const auto k3 = f(t + 0.5 * h, y + (0.5 * h) * k2);
        const auto k4 = f(t + h, y + h * k3);
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4);
        break;
      }
      case OdeMethod::kDopri5:
        NFKIT_ASSERT(false, "dopri5 is not a fixed-grid method");
    }
    st.nfe += ode_evals_per_step(m);
    st.steps += 1;
  }
  return y;
}

double rms(const torch::Tensor& t) { return t.pow(2).mean().sqrt().item<double>(); }

// Dormand-Prince 5(4) tableau.
constexpr double c2 = 1.0 / 5, c3 = 3.0 / 10, c4 = 4.0 / 5, c5 = 8.0 / 9;
constexpr double a21 = 1.0 / 5;
constexpr double a31 = 3.0 / 40, a32 = 9.0 / 40;
constexpr double a41 = 44.0 / 45, a42 = -56.0 / 15, a43 = 32.0 / 9;
constexpr double a51 = 19372.0 / 6561, a52 = -25360.0 / 2187, a53 = 64448.0 / 6561, a54 = -212.0 / 729;
constexpr double a61 = 9017.0 / 3168, a62 = -355.0 / 33, a63 = 46732.0 / 5247, a64 = 49.0 / 176,
                 a65 = -5103.0 / 18656;
constexpr double b1 = 35.0 / 384, b3 = 500.0 / 1113, b4 = 125.0 / 192, b5 = -2187.0 / 6784, b6 = 11.0 / 84;
// b (5th order) minus b* (4th order): the embedded error estimate.
constexpr double e1 = b1 - 5179.0 / 57600, e3 = b3 - 7571.0 / 16695, e4 = b4 - 393.0 / 640,
                 e5 = b5 - (-92097.0 / 339200), e6 = b6 - 187.0 / 2100, e7 = -1.0 / 40;

torch::Tensor dopri5(const OdeFn& f, torch::Tensor y, double t0, double t1, const OdeOptions& o,
                     OdeStats& st) {
  const double dir = t1 > t0 ? 1.0 : -1.0, span = std::abs(t1 - t0);
  const double rtol = o.rtol(), atol = o.atol();
  auto scale = [&](const torch::Tensor& a, const torch::Tensor& b) {
    return atol + rtol * torch::max(a.abs(), b.abs());
  };
  auto k1 = f(t0, y);
  st.nfe += 1;
  // Initial step (Hairer, Norsett & Wanner, sec. II.4).
  double h;
  {
    const auto sc = atol + rtol * y.abs();
    const double d0 = rms(y / sc), d1 = rms(k1 / sc);
    double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
    h0 = std::min(h0, span);
    const auto k = f(t0 + dir * h0, y + (dir * h0) * k1);
    st.nfe += 1;
    const double d2 = rms((k - k1) / sc) / h0;
    const double m = std::max(d1, d2);
    const double h1 = m <= 1e-15 ? std::max(1e-6, h0 * 1e-3) : std::pow(0.01 / m, 1.0 / 5.0);
    h = std::min(100 * h0, h1);
  }
  double t = t0;
  int64_t accepted = 0;
  bool last_rejected = false;
  while (dir * (t1 - t) > 1e-12 * std::max(1.0, span)) {
    if (accepted >= o.max_steps()) {
      std::ostringstream os;
      os << "reached the step cap of " << o.max_steps() << " steps at t = " << t
         << " (integrating from " << t0 << " to " << t1 << ", " << st.nfe
         << " evaluations); raise --max-steps or loosen --rtol/--atol";
      runtime_error("dopri5", os.str());
    }
    h = std::min(h, std::abs(t1 - t));
    const double hs = dir * h;
    const auto k2 = f(t + c2 * hs, y + hs * (a21 * k1));
    const auto k3 = f(t + c3 * hs, y + hs * (a31 * k1 + a32 * k2));
    const auto k4 = f(t + c4 * hs, y + hs * (a41 * k1 + a42 * k2 + a43 * k3));
    const auto k5 = f(t + c5 * hs, y + hs * (a51 * k1 + a52 * k2 + a53 * k3 + a54 * k4));
    const auto k6 = f(t + hs, y + hs * (a61 * k1 + a62 * k2 + a63 * k3 + a64 * k4 + a65 * k5));
    const auto y_new = y + hs * (b1 * k1 + b3 * k3 + b4 * k4 + b5 * k5 + b6 * k6);
    const auto k7 = f(t + hs, y_new);
    st.nfe += 6;
    const auto err = hs * (e1 * k1 + e3 * k3 + e4 * k4 + e5 * k5 + e6 * k6 + e7 * k7);
    const double en = rms(err / scale(y, y_new));
    if (std::isfinite(en) && en <= 1.0) {
      t += hs;
      y = y_new;
      k1 = k7;
      ++accepted;
      st.steps += 1;
      double fac = en == 0.0 ? 10.0 : 0.9 * std::pow(en, -0.2);
      fac = std::clamp(fac, 0.2, last_rejected ? 1.0 : 10.0);
      h *= fac;
      last_rejected = false;
    } else {
      st.rejected += 1;
      const double fac = std::isfinite(en) ? std::clamp(0.9 * std::pow(en, -0.2), 0.2, 1.0) : 0.2;
      h *= fac;
      last_rejected = true;
      if (h < 1e-14 * std::max(1.0, span)) {
        std::ostringstream os;
        os << "the step size underflowed at t = " << t << " (integrating from " << t0 << " to "
           << t1 << "); the vector field is not finite or too stiff there";
        runtime_error("dopri5", os.str());
      }
    }
  }
  return y;
}

}  // namespace

torch::Tensor odeint(const OdeFn& f, const torch::Tensor& y0, double t0, double t1,
                     const OdeOptions& opts, OdeStats* stats) {
  OdeStats local;
  OdeStats& st = stats ? *stats : local;
  if (t0 == t1) return y0;
  torch::Tensor y;
  if (opts.method() == OdeMethod::kDopri5) {
    y = dopri5(f, y0, t0, t1, opts, st);
  } else {
    y = fixed_grid(f, y0, ode_time_grid(opts, t0, t1), opts.method(), st);
  }
  check_state(y, ode_method_name(opts.method()), t1, t0, t1);
  return y;
}

}  // namespace nfkit
