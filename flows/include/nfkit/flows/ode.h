#pragma once
// ODE solvers over LibTorch tensors, for continuous flows: dy/dt = f(t, y), y a tensor of
// any shape (the whole batch is one state and shares the step, as in torchdiffeq).
//
//   fixed grid:  euler, midpoint (explicit midpoint), heun (explicit trapezoid, RK2), rk4
//                (classical Runge-Kutta) on t_0, ..., t_K: a uniform grid of `steps`
//                intervals, or a user grid (e.g. the one BOSS chooses) given on [0, 1] and
//                mapped linearly onto [t0, t1].
//   adaptive:    dopri5, the Dormand-Prince 5(4) pair (Dormand & Prince, J. Comput. Appl.
//                Math. 6, 1980), first-same-as-last, with the error per element
//                e / (atol + rtol max(|y_n|, |y_n+1|)) in the root-mean-square norm over all
//                elements, the step factor 0.9 err^(-1/5) clamped to [0.2, 10] (1 after a
//                rejection), and the initial step of Hairer, Norsett & Wanner (Solving ODEs I,
//                sec. II.4). At most max_steps accepted steps: a solve that reaches the cap
//                throws RuntimeError saying where (t) it got to.
// t1 < t0 integrates backwards in time. NFE (evaluations of f) and steps are added to the
// caller's OdeStats. A state that turns non-finite throws RuntimeError: never a silent NaN.
//
//   nfkit::OdeStats st;
//   auto y1 = nfkit::odeint(f, y0, 0.0, 1.0, nfkit::OdeOptions().method(nfkit::OdeMethod::kRK4).steps(8), &st);
#include <torch/arg.h>
#include <torch/types.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace nfkit {

enum class OdeMethod { kEuler, kMidpoint, kHeun, kRK4, kDopri5 };

/// "euler", "midpoint", "heun", "rk4", "dopri5"; UsageError naming `option` otherwise.
OdeMethod parse_ode_method(const std::string& name, const std::string& option = "--solver");
std::string ode_method_name(OdeMethod m);
/// Function evaluations per step of a fixed-grid method (1, 2, 2, 4).
int64_t ode_evals_per_step(OdeMethod m);

struct OdeOptions {
  TORCH_ARG(OdeMethod, method) = OdeMethod::kDopri5;
  /// Intervals of the uniform grid (fixed-grid methods).
  TORCH_ARG(int64_t, steps) = 100;
  /// A user grid on [0, 1] (strictly increasing, from 0 to 1), used instead of the uniform
  /// one by the fixed-grid methods.
  TORCH_ARG(std::vector<double>, grid) = {};
  TORCH_ARG(double, rtol) = 1e-5;
  TORCH_ARG(double, atol) = 1e-5;
  /// Accepted-step cap of dopri5.
  TORCH_ARG(int64_t, max_steps) = 10000;

 public:
  nlohmann::json to_json() const;
  static OdeOptions from_json(const nlohmann::json& j);
  /// Checks the values (UsageError naming the option: --solver, --steps, --rtol, ...).
  void validate() const;
  /// "dopri5 (rtol 1e-05, atol 1e-05)" or "euler, 8 steps".
  std::string summary() const;
};

struct OdeStats {
  int64_t nfe = 0;       ///< evaluations of f
  int64_t steps = 0;     ///< accepted steps
  int64_t rejected = 0;  ///< rejected steps (dopri5)
};

using OdeFn = std::function<torch::Tensor(double t, const torch::Tensor& y)>;

/// y(t1) for dy/dt = f(t, y), y(t0) = y0.
torch::Tensor odeint(const OdeFn& f, const torch::Tensor& y0, double t0, double t1,
                     const OdeOptions& opts, OdeStats* stats = nullptr);

/// The times of a fixed-grid solve from t0 to t1 (K + 1 values, t0 first, t1 last).
std::vector<double> ode_time_grid(const OdeOptions& opts, double t0, double t1);

}  // namespace nfkit
