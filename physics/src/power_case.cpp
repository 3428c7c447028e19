#include "nfkit/physics/power_case.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "nfkit/core/error.h"

namespace nfkit {

double GenCost::cost(double p) const {
  if (model == Model::kPolynomial) {
    double c = 0.0;
    for (double a : coeffs) c = c * p + a;  // Horner, highest order first
    return c;
  }
  const int n = num_points();
  int k = 0;  // segment [k, k+1]
  while (k + 2 < n && p > coeffs[2 * (k + 1)]) ++k;
  const double x0 = coeffs[2 * k], y0 = coeffs[2 * k + 1];
  const double x1 = coeffs[2 * k + 2], y1 = coeffs[2 * k + 3];
  return y0 + (y1 - y0) / (x1 - x0) * (p - x0);
}

double GenCost::marginal(double p) const {
  if (model == Model::kPolynomial) {
    const int n = static_cast<int>(coeffs.size());
    double d = 0.0;
    for (int i = 0; i + 1 < n; ++i) d = d * p + coeffs[i] * (n - 1 - i);
    return d;
  }
  const int np = num_points();
  int k = 0;
  while (k + 2 < np && p > coeffs[2 * (k + 1)]) ++k;
  return (coeffs[2 * k + 3] - coeffs[2 * k + 1]) / (coeffs[2 * k + 2] - coeffs[2 * k]);
}

int GenCost::order() const {
  return model == Model::kPolynomial ? std::max(0, static_cast<int>(coeffs.size()) - 1) : 1;
}

int PowerCase::bus_index(int id) const {
  for (size_t i = 0; i < buses.size(); ++i)
    if (buses[i].id == id) return static_cast<int>(i);
  return -1;
}

double PowerCase::total_demand() const {
  double s = 0.0;
  for (const auto& b : buses)
    if (b.type != BusType::kIsolated) s += b.pd;
  return s;
}

namespace {

// One row of a matrix field: its tokens and the line it starts on.
struct Row {
  std::vector<std::string> tokens;
  int line = 0;
};

struct Field {
  int line = 0;            // line of the assignment
  bool matrix = false;
  std::string scalar;      // for `mpc.x = value;`
  std::vector<Row> rows;
};

class CaseText {
 public:
  CaseText(const std::string& text, std::string source) : text_(text), source_(std::move(source)) {}

  [[noreturn]] void fail(int line, const std::string& msg) const {
    runtime_error("read_matpower_case", source_ + ":" + std::to_string(line) + ": " + msg);
  }

  // Parses the whole text into fields (mpc.NAME -> Field) and the function name.
  void parse(std::map<std::string, Field>& fields, std::string& name) {
    while (pos_ < text_.size()) {
      skip_space_and_comments();
      if (pos_ >= text_.size()) break;
      if (starts_with("function")) {
        // function mpc = NAME
        const size_t eol = text_.find('\n', pos_);
        const std::string l = text_.substr(pos_, eol == std::string::npos ? std::string::npos : eol - pos_);
        const size_t eq = l.find('=');
        if (eq != std::string::npos) {
          std::string n = trim(l.substr(eq + 1));
          const size_t cut = n.find_first_of(" \t%;(");
          name = n.substr(0, cut);
        }
        advance_to(eol);
        continue;
      }
      if (starts_with("mpc.")) {
        const int line = line_;
        pos_ += 4;
        std::string key;
        while (pos_ < text_.size() && (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_'))
          key += text_[pos_++];
        skip_blanks();
        if (pos_ >= text_.size() || text_[pos_] != '=') fail(line, "mpc." + key + ": expected '='");
        ++pos_;
        skip_blanks();
        Field f;
        f.line = line;
        if (pos_ < text_.size() && text_[pos_] == '[') {
          ++pos_;
          f.matrix = true;
          read_matrix(key, f);
        } else if (pos_ < text_.size() && text_[pos_] == '{') {
          skip_cell(key, line);
          continue;  // cell arrays (bus_name, ...) are not used
        } else {
          const size_t semi = text_.find_first_of(";\n%", pos_);
          f.scalar = trim(text_.substr(pos_, semi == std::string::npos ? std::string::npos : semi - pos_));
          advance_to(semi);
        }
        fields[key] = std::move(f);
        continue;
      }
      // anything else (MATLAB statements we do not use): skip the line
      advance_to(text_.find('\n', pos_));
    }
  }

 private:
  static std::string trim(const std::string& s) {
    const size_t a = s.find_first_not_of(" \t\r");
    if (a == std::string::npos) return "";
    const size_t b = s.find_last_not_of(" \t\r");
    return s.substr(a, b - a + 1);
  }
  bool starts_with(const char* w) const { return text_.compare(pos_, std::char_traits<char>::length(w), w) == 0; }
  void advance_to(size_t p) {
    const size_t end = std::min(p, text_.size());
    for (; pos_ < end; ++pos_)
      if (text_[pos_] == '\n') ++line_;
  }
  void skip_blanks() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\r')) ++pos_;
  }
  void skip_space_and_comments() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == '%') {
        advance_to(text_.find('\n', pos_));
      } else if (std::isspace(static_cast<unsigned char>(c))) {
        if (c == '\n') ++line_;
        ++pos_;
      } else {
        break;
      }
    }
  }
  void skip_cell(const std::string& key, int line) {
    int depth = 0;
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == '\n') ++line_;
      if (c == '{') ++depth;
      if (c == '}' && --depth == 0) {
        ++pos_;
        return;
      }
      ++pos_;
    }
    fail(line, "mpc." + key + ": '{' without a closing '}' (truncated file?)");
  }
  void read_matrix(const std::string& key, Field& f) {
    Row row;
    row.line = line_;
    std::string tok;
    auto end_token = [&] {
      if (!tok.empty()) row.tokens.push_back(tok), tok.clear();
    };
    auto end_row = [&] {
      end_token();
      if (!row.tokens.empty()) f.rows.push_back(std::move(row));
      row = Row{};
      row.line = line_;
    };
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == ']') {
        ++pos_;
        end_row();
        return;
      }
      if (c == '%') {
        end_token();
        advance_to(text_.find('\n', pos_));
        continue;
      }
      if (c == '\n') {
        end_row();
        ++line_;
        ++pos_;
        row.line = line_;
        continue;
      }
      if (c == ';') {
        end_row();
        ++pos_;
        continue;
      }
      if (c == ' ' || c == '\t' || c == '\r' || c == ',') {
        end_token();
        ++pos_;
        continue;
      }
      tok += c;
      ++pos_;
    }
    fail(f.line, "mpc." + key + ": '[' without a closing ']' (truncated file?)");
  }

  const std::string& text_;
  std::string source_;
  size_t pos_ = 0;
  int line_ = 1;
};

double parse_number(const CaseText& ct, const std::string& field, size_t row, const char* column,
                    const Row& r, size_t col) {
  if (col >= r.tokens.size())
    ct.fail(r.line, field + " row " + std::to_string(row + 1) + ": column " + column +
                        " is missing (" + std::to_string(r.tokens.size()) + " values)");
  const std::string& t = r.tokens[col];
  const char* s = t.c_str();
  char* end = nullptr;
  double v = std::strtod(s, &end);
  if (end == s || *end != '\0') {
    std::string lower = t;
    std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
    if (lower == "inf" || lower == "+inf") return HUGE_VAL;
    if (lower == "-inf") return -HUGE_VAL;
    ct.fail(r.line, field + " row " + std::to_string(row + 1) + ", column " + column + ": '" + t +
                        "' is not a number");
  }
  if (std::isnan(v))
    ct.fail(r.line, field + " row " + std::to_string(row + 1) + ", column " + column + " is NaN");
  return v;
}

int parse_int(const CaseText& ct, const std::string& field, size_t row, const char* column, const Row& r,
              size_t col) {
  const double v = parse_number(ct, field, row, column, r, col);
  if (v != std::floor(v) || std::abs(v) > 2e9)
    ct.fail(r.line, field + " row " + std::to_string(row + 1) + ", column " + column + ": " +
                        r.tokens[col] + " is not an integer");
  return static_cast<int>(v);
}

const Field& require_matrix(const CaseText& ct, const std::map<std::string, Field>& fields, const std::string& key,
                            int last_line) {
  auto it = fields.find(key);
  if (it == fields.end()) ct.fail(last_line, "mpc." + key + " is missing");
  if (!it->second.matrix) ct.fail(it->second.line, "mpc." + key + " must be a matrix [ ... ]");
  if (it->second.rows.empty()) ct.fail(it->second.line, "mpc." + key + " has no rows");
  return it->second;
}

}  // namespace

PowerCase parse_matpower_case(const std::string& text, const std::string& source) {
  CaseText ct(text, source);
  std::map<std::string, Field> fields;
  PowerCase pc;
  pc.source = source;
  ct.parse(fields, pc.name);
  const int last_line = 1 + static_cast<int>(std::count(text.begin(), text.end(), '\n'));
  if (pc.name.empty()) {
    std::string stem = source.substr(source.find_last_of('/') + 1);
    pc.name = stem.substr(0, stem.rfind(".m") == std::string::npos ? stem.size() : stem.rfind(".m"));
  }

  if (auto it = fields.find("version"); it != fields.end()) {
    std::string v = it->second.scalar;
    v.erase(std::remove(v.begin(), v.end(), '\''), v.end());
    v.erase(std::remove(v.begin(), v.end(), '"'), v.end());
    if (v != "2") ct.fail(it->second.line, "mpc.version is '" + v + "', but only version 2 is supported");
  }
  {
    auto it = fields.find("baseMVA");
    if (it == fields.end()) ct.fail(last_line, "mpc.baseMVA is missing");
    char* end = nullptr;
    pc.base_mva = std::strtod(it->second.scalar.c_str(), &end);
    if (it->second.scalar.empty() || *end != '\0' || !(pc.base_mva > 0.0) || !std::isfinite(pc.base_mva))
      ct.fail(it->second.line, "mpc.baseMVA: '" + it->second.scalar + "' is not a positive number");
  }

  static const char* kBusCols[] = {"BUS_I", "BUS_TYPE", "PD", "QD", "GS", "BS", "BUS_AREA",
                                   "VM", "VA", "BASE_KV", "ZONE", "VMAX", "VMIN"};
  const Field& fb = require_matrix(ct, fields, "bus", last_line);
  for (size_t i = 0; i < fb.rows.size(); ++i) {
    const Row& r = fb.rows[i];
    Bus b;
    const std::string f = "mpc.bus";
    b.id = parse_int(ct, f, i, kBusCols[0], r, 0);
    const int type = parse_int(ct, f, i, kBusCols[1], r, 1);
    if (type < 1 || type > 4) ct.fail(r.line, f + " row " + std::to_string(i + 1) + ", column BUS_TYPE: " +
                                                  std::to_string(type) + " is not a bus type (1 PQ, 2 PV, 3 ref, 4 isolated)");
    b.type = static_cast<BusType>(type);
    b.pd = parse_number(ct, f, i, kBusCols[2], r, 2);
    b.qd = parse_number(ct, f, i, kBusCols[3], r, 3);
    b.gs = parse_number(ct, f, i, kBusCols[4], r, 4);
    b.bs = parse_number(ct, f, i, kBusCols[5], r, 5);
    b.area = parse_int(ct, f, i, kBusCols[6], r, 6);
    b.vm = parse_number(ct, f, i, kBusCols[7], r, 7);
    b.va = parse_number(ct, f, i, kBusCols[8], r, 8);
    b.base_kv = parse_number(ct, f, i, kBusCols[9], r, 9);
    b.zone = parse_int(ct, f, i, kBusCols[10], r, 10);
    b.vmax = parse_number(ct, f, i, kBusCols[11], r, 11);
    b.vmin = parse_number(ct, f, i, kBusCols[12], r, 12);
    if (b.id <= 0) ct.fail(r.line, f + " row " + std::to_string(i + 1) + ", column BUS_I: bus numbers must be positive");
    if (pc.bus_index(b.id) >= 0)
      ct.fail(r.line, f + " row " + std::to_string(i + 1) + ", column BUS_I: bus " + std::to_string(b.id) + " appears twice");
    for (double v : {b.pd, b.qd, b.gs, b.bs})
      if (!std::isfinite(v)) ct.fail(r.line, f + " row " + std::to_string(i + 1) + ": demand and shunts must be finite");
    pc.buses.push_back(b);
  }
  if (std::none_of(pc.buses.begin(), pc.buses.end(), [](const Bus& b) { return b.type == BusType::kReference; }))
    ct.fail(fb.line, "mpc.bus: no reference bus (BUS_TYPE 3)");

  static const char* kGenCols[] = {"GEN_BUS", "PG", "QG", "QMAX", "QMIN", "VG", "MBASE", "GEN_STATUS", "PMAX", "PMIN"};
  const Field& fg = require_matrix(ct, fields, "gen", last_line);
  for (size_t i = 0; i < fg.rows.size(); ++i) {
    const Row& r = fg.rows[i];
    const std::string f = "mpc.gen";
    Generator g;
    g.bus = parse_int(ct, f, i, kGenCols[0], r, 0);
    g.pg = parse_number(ct, f, i, kGenCols[1], r, 1);
    g.qg = parse_number(ct, f, i, kGenCols[2], r, 2);
    g.qmax = parse_number(ct, f, i, kGenCols[3], r, 3);
    g.qmin = parse_number(ct, f, i, kGenCols[4], r, 4);
    g.vg = parse_number(ct, f, i, kGenCols[5], r, 5);
    g.mbase = parse_number(ct, f, i, kGenCols[6], r, 6);
    g.in_service = parse_number(ct, f, i, kGenCols[7], r, 7) > 0.0;
    g.pmax = parse_number(ct, f, i, kGenCols[8], r, 8);
    g.pmin = parse_number(ct, f, i, kGenCols[9], r, 9);
    if (pc.bus_index(g.bus) < 0)
      ct.fail(r.line, f + " row " + std::to_string(i + 1) + ", column GEN_BUS: bus " + std::to_string(g.bus) + " is not in mpc.bus");
    if (g.in_service && !(g.pmin <= g.pmax))
      ct.fail(r.line, f + " row " + std::to_string(i + 1) + ": PMIN " + std::to_string(g.pmin) + " > PMAX " + std::to_string(g.pmax));
    pc.generators.push_back(g);
  }

  static const char* kBrCols[] = {"F_BUS", "T_BUS", "BR_R", "BR_X", "BR_B", "RATE_A", "RATE_B",
                                  "RATE_C", "TAP", "SHIFT", "BR_STATUS", "ANGMIN", "ANGMAX"};
  const Field& fl = require_matrix(ct, fields, "branch", last_line);
  for (size_t i = 0; i < fl.rows.size(); ++i) {
    const Row& r = fl.rows[i];
    const std::string f = "mpc.branch";
    Branch br;
    br.from = parse_int(ct, f, i, kBrCols[0], r, 0);
    br.to = parse_int(ct, f, i, kBrCols[1], r, 1);
    br.r = parse_number(ct, f, i, kBrCols[2], r, 2);
    br.x = parse_number(ct, f, i, kBrCols[3], r, 3);
    br.b = parse_number(ct, f, i, kBrCols[4], r, 4);
    br.rate_a = parse_number(ct, f, i, kBrCols[5], r, 5);
    br.rate_b = parse_number(ct, f, i, kBrCols[6], r, 6);
    br.rate_c = parse_number(ct, f, i, kBrCols[7], r, 7);
    br.ratio = parse_number(ct, f, i, kBrCols[8], r, 8);
    br.angle = parse_number(ct, f, i, kBrCols[9], r, 9);
    br.in_service = parse_number(ct, f, i, kBrCols[10], r, 10) > 0.0;
    // ANGMIN/ANGMAX are optional in version-2 files written before they existed
    br.angmin = r.tokens.size() > 11 ? parse_number(ct, f, i, kBrCols[11], r, 11) : -360.0;
    br.angmax = r.tokens.size() > 12 ? parse_number(ct, f, i, kBrCols[12], r, 12) : 360.0;
    for (int e : {br.from, br.to})
      if (pc.bus_index(e) < 0)
        ct.fail(r.line, f + " row " + std::to_string(i + 1) + ": bus " + std::to_string(e) + " is not in mpc.bus");
    if (br.rate_a < 0.0)
      ct.fail(r.line, f + " row " + std::to_string(i + 1) + ", column RATE_A: must be >= 0 (0 = unlimited)");
    pc.branches.push_back(br);
  }

  const Field& fc = require_matrix(ct, fields, "gencost", last_line);
  if (fc.rows.size() < pc.generators.size())
    ct.fail(fc.line, "mpc.gencost has " + std::to_string(fc.rows.size()) + " rows, but mpc.gen has " +
                         std::to_string(pc.generators.size()) + " generators");
  for (size_t i = 0; i < pc.generators.size(); ++i) {
    const Row& r = fc.rows[i];
    const std::string f = "mpc.gencost";
    GenCost c;
    const int model = parse_int(ct, f, i, "MODEL", r, 0);
    if (model != 1 && model != 2)
      ct.fail(r.line, f + " row " + std::to_string(i + 1) + ", column MODEL: " + std::to_string(model) +
                          " is not a cost model (1 piecewise linear, 2 polynomial)");
    c.model = static_cast<GenCost::Model>(model);
    c.startup = parse_number(ct, f, i, "STARTUP", r, 1);
    c.shutdown = parse_number(ct, f, i, "SHUTDOWN", r, 2);
    const int n = parse_int(ct, f, i, "NCOST", r, 3);
    const int need = c.model == GenCost::Model::kPolynomial ? n : 2 * n;
    if (n < (c.model == GenCost::Model::kPolynomial ? 1 : 2))
      ct.fail(r.line, f + " row " + std::to_string(i + 1) + ", column NCOST: " + std::to_string(n) + " is too small");
    if (static_cast<int>(r.tokens.size()) < 4 + need)
      ct.fail(r.line, f + " row " + std::to_string(i + 1) + ": NCOST " + std::to_string(n) + " needs " +
                          std::to_string(need) + " cost values, found " + std::to_string(r.tokens.size() - 4));
    for (int k = 0; k < need; ++k) {
      const std::string col = "COST[" + std::to_string(k + 1) + "]";
      c.coeffs.push_back(parse_number(ct, f, i, col.c_str(), r, 4 + k));
      if (!std::isfinite(c.coeffs.back()))
        ct.fail(r.line, f + " row " + std::to_string(i + 1) + ", column " + col + " must be finite");
    }
    if (c.model == GenCost::Model::kPiecewiseLinear)
      for (int k = 1; k < n; ++k)
        if (!(c.coeffs[2 * k] > c.coeffs[2 * k - 2]))
          ct.fail(r.line, f + " row " + std::to_string(i + 1) + ": piecewise-linear breakpoints must have increasing x");
    pc.gencosts.push_back(std::move(c));
  }
  return pc;
}

PowerCase read_matpower_case(const std::string& path) {
  std::ifstream in(path);
  if (!in) runtime_error("read_matpower_case", path + ": cannot open the case file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_matpower_case(ss.str(), path);
}

}  // namespace nfkit
