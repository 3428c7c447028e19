#include "data_source.h"

#include <torch/torch.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"

namespace nfkit::cli {
namespace {

std::vector<std::string> split_fields(const std::string& line) {
  std::vector<std::string> out;
  std::string field;
  std::istringstream is(line);
  while (std::getline(is, field, ',')) {
    const auto b = field.find_first_not_of(" \t\r");
    const auto e = field.find_last_not_of(" \t\r");
    out.push_back(b == std::string::npos ? "" : field.substr(b, e - b + 1));
  }
  if (!line.empty() && line.back() == ',') out.emplace_back("");
  return out;
}

bool parse_number(const std::string& s, double& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  v = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

}  // namespace

torch::Tensor parse_csv(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  std::vector<double> values;
  int64_t cols = -1, rows = 0, lineno = 0, first_data_line = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto fields = split_fields(line);
    std::vector<double> row(fields.size());
    bool numeric = true;
    size_t bad = 0;
    for (size_t i = 0; i < fields.size() && numeric; ++i)
      if (!parse_number(fields[i], row[i])) numeric = false, bad = i;
    if (!numeric) {
      if (rows == 0 && cols < 0) {  // a header line
        cols = static_cast<int64_t>(fields.size());
        first_data_line = lineno;
        continue;
      }
      runtime_error(name, "line " + std::to_string(lineno) + " column " + std::to_string(bad + 1) +
                              " is '" + fields[bad] + "', but must be a number");
    }
    if (cols < 0) cols = static_cast<int64_t>(fields.size()), first_data_line = lineno;
    if (static_cast<int64_t>(fields.size()) != cols)
      runtime_error(name, "line " + std::to_string(lineno) + " has " + std::to_string(fields.size()) +
                              " columns, but line " + std::to_string(first_data_line) + " has " +
                              std::to_string(cols));
    values.insert(values.end(), row.begin(), row.end());
    ++rows;
  }
  if (rows == 0) runtime_error(name, "has no data rows");
  auto x = torch::tensor(values, torch::kFloat64).view({rows, cols});
  // Name the row and column of a non-finite value (1-based, as in a spreadsheet).
  auto bad = torch::logical_not(torch::isfinite(x)).nonzero();
  if (bad.size(0) > 0) {
    const int64_t r = bad[0][0].item<int64_t>(), c = bad[0][1].item<int64_t>();
    runtime_error(name, "data row " + std::to_string(r + 1) + " column " + std::to_string(c + 1) +
                            " is " + std::to_string(x[r][c].item<double>()) + ", but must be finite");
  }
  return x;
}

DataSource load_data(const std::string& src, int64_t n, const std::string& option) {
  DataSource ds;
  const auto h5 = src.find(".h5:");
  if (h5 != std::string::npos || src.find(".hdf5:") != std::string::npos) {
    const auto colon = src.find(':', h5 != std::string::npos ? h5 : src.find(".hdf5:"));
    const std::string file = src.substr(0, colon), dataset = src.substr(colon + 1);
    H5Reader r(file);
    auto x = r.read(dataset).to(torch::kFloat64);
    if (x.dim() == 1) x = x.unsqueeze(1);
    if (x.dim() != 2 || x.size(0) == 0)
      runtime_error(src, "has shape " + shape_string(x) + ", but [N, D] samples are expected");
    check_finite(src, "data", x);
    ds.x = x;
    ds.description = src;
    return ds;
  }
  if (file_extension(src) == "csv") {
    std::ifstream in(src, std::ios::binary);
    if (!in) runtime_error(src, "cannot be read (missing file?)");
    std::stringstream ss;
    ss << in.rdbuf();
    ds.x = parse_csv(ss.str(), src);
    ds.description = src;
    return ds;
  }
  if (!is_toy_density(src))
    usage_error(option, "'" + src + "' is not a built-in dataset (gmm, rings, spirals, checkerboard, "
                        "banana[:D], mixture:D:K, funnel[:D], 8gaussians, moons, scurve), a .csv file or "
                        "file.h5:/dataset");
  check_positive_int(option, "sample count", n);
  ds.truth = make_toy_density(src);
  ds.x = ds.truth->sample(n);
  ds.description = ds.truth->name();
  return ds;
}

}  // namespace nfkit::cli
