#pragma once
// Power-grid case data: the MATPOWER case format, version 2.
//
// Reads the `mpc.baseMVA`, `mpc.bus`, `mpc.gen`, `mpc.branch` and `mpc.gencost` fields of a
// MATPOWER case file (Zimmerman, Murillo-Sanchez & Thomas 2011, "MATPOWER: Steady-State
// Operations, Planning and Analysis Tools for Power Systems Research and Education", IEEE
// Trans. Power Syst. 26(1); the column layout of MATPOWER's `caseformat`). Other fields
// (`bus_name`, `gentype`, ...) are skipped. Values keep the file's units: powers in MW / MVAr,
// angles in degrees, impedances in per unit on baseMVA, costs in $/h with P in MW.
//
// Generator costs (gencost rows; rows beyond the number of generators are reactive-power
// costs and are ignored):
//   model 2, polynomial:        c(P) = Σ_k c_k P^k, coefficients stored highest order first
//                               (as in the file), any order;
//   model 1, piecewise linear:  breakpoints (x_1, y_1) ... (x_n, y_n), x increasing, convex
//                               for the DC-OPF; c(P) interpolates (and extrapolates the end
//                               segments).
//
// Errors name the file, the line and the field: "case30.m:33: mpc.bus row 4, column Pd: 'x'
// is not a number" (RuntimeError: a malformed file is a run-time failure, exit code 1).
//
//   auto pc = nfkit::read_matpower_case("data/matpower/case30.m");
//   std::cout << pc.buses.size() << " buses, " << pc.base_mva << " MVA base\n";
#include <string>
#include <vector>

namespace nfkit {

/// Bus types of the MATPOWER format.
enum class BusType { kPQ = 1, kPV = 2, kReference = 3, kIsolated = 4 };

struct Bus {
  int id = 0;                      ///< external bus number (BUS_I)
  BusType type = BusType::kPQ;
  double pd = 0.0, qd = 0.0;       ///< demand, MW / MVAr
  double gs = 0.0, bs = 0.0;       ///< shunt conductance / susceptance, MW / MVAr at V = 1 p.u.
  int area = 1;
  double vm = 1.0, va = 0.0;       ///< voltage magnitude (p.u.) and angle (degrees)
  double base_kv = 0.0;
  int zone = 1;
  double vmax = 1.1, vmin = 0.9;   ///< p.u.
};

struct Generator {
  int bus = 0;                     ///< external bus number
  double pg = 0.0, qg = 0.0;       ///< MW / MVAr (the file's operating point)
  double qmax = 0.0, qmin = 0.0;   ///< MVAr
  double vg = 1.0, mbase = 100.0;
  bool in_service = true;
  double pmax = 0.0, pmin = 0.0;   ///< MW
};

struct Branch {
  int from = 0, to = 0;            ///< external bus numbers
  double r = 0.0, x = 0.0, b = 0.0;  ///< p.u. on baseMVA
  double rate_a = 0.0, rate_b = 0.0, rate_c = 0.0;  ///< MVA, 0 = unlimited
  double ratio = 0.0;              ///< off-nominal tap ratio, 0 = a line (tap 1)
  double angle = 0.0;              ///< phase shift, degrees
  bool in_service = true;
  double angmin = -360.0, angmax = 360.0;  ///< angle-difference limits, degrees
};

struct GenCost {
  enum class Model { kPiecewiseLinear = 1, kPolynomial = 2 };
  Model model = Model::kPolynomial;
  double startup = 0.0, shutdown = 0.0;  ///< $
  /// Polynomial: coefficients highest order first ($/h per MW^k). Piecewise linear:
  /// x_1, y_1, ..., x_n, y_n (MW, $/h).
  std::vector<double> coeffs;

  /// Cost at P (MW), $/h.
  double cost(double p_mw) const;
  /// dc/dP at P (MW), $/MWh (the slope of the segment containing P for piecewise linear).
  double marginal(double p_mw) const;
  /// Polynomial order (number of coefficients - 1); 1 for piecewise linear.
  int order() const;
  /// Breakpoints of a piecewise-linear cost.
  int num_points() const { return static_cast<int>(coeffs.size() / 2); }
};

struct PowerCase {
  std::string name;     ///< the function name in the file (e.g. "case30"), else the file stem
  std::string source;   ///< the file it was read from
  double base_mva = 100.0;
  std::vector<Bus> buses;
  std::vector<Generator> generators;
  std::vector<Branch> branches;
  std::vector<GenCost> gencosts;  ///< one per generator (active power)

  /// Index of the bus with external number id in `buses`, or -1.
  int bus_index(int id) const;
  /// Total active demand of in-service buses, MW.
  double total_demand() const;
};

/// Reads a MATPOWER case file. RuntimeError naming the file, line and field for a missing or
/// unreadable file, a truncated matrix, a non-numeric or missing value, an unknown bus type or
/// cost model, a generator or branch at an unknown bus, a non-increasing piecewise-linear cost,
/// or no reference bus.
PowerCase read_matpower_case(const std::string& path);

/// The same from the file's text; `source` names it in errors.
PowerCase parse_matpower_case(const std::string& text, const std::string& source);

}  // namespace nfkit
