#include "nfkit/inference/chains.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"

namespace nfkit {
namespace {

constexpr const char* kKind = "chains";
constexpr int64_t kVersion = 1;

std::string at_index(int64_t c, int64_t s) {
  return "[chain " + std::to_string(c) + ", step " + std::to_string(s) + "]";
}

std::vector<std::string> default_names(int64_t d) {
  std::vector<std::string> n;
  for (int64_t i = 0; i < d; ++i) n.push_back("x" + std::to_string(i));
  return n;
}

Chains read_h5(const std::string& path) {
  H5Reader r(path);
  if (r.has_attr("/", "nfkit_format")) r.expect_format(kKind, kVersion);
  for (const char* ds : {"/samples", "/ln_posterior"})
    if (!r.exists(ds)) runtime_error(path, std::string("missing dataset ") + ds);
  Chains ch;
  ch.samples = r.read("/samples").to(torch::kFloat64);
  ch.ln_posterior = r.read("/ln_posterior").to(torch::kFloat64);
  if (ch.samples.dim() != 3)
    runtime_error(path, "/samples has shape " + shape_string(ch.samples) + ", expected [chains, steps, dim]");
  if (r.has_attr("/", "names")) {
    try {
      ch.names = nlohmann::json::parse(r.attr_string("/", "names")).get<std::vector<std::string>>();
    } catch (const nlohmann::json::exception&) {
      runtime_error(path, "root attribute 'names' is not a JSON array of strings");
    }
  } else {
    ch.names = default_names(ch.samples.size(2));
  }
  return ch;
}

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> out;
  std::string cell;
  std::istringstream s(line);
  while (std::getline(s, cell, ',')) {
    auto b = cell.find_first_not_of(" \t\r"), e = cell.find_last_not_of(" \t\r");
    out.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
  }
  if (!line.empty() && line.back() == ',') out.emplace_back();
  return out;
}

Chains read_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) runtime_error(path, "cannot open the file");
  std::string line;
  if (!std::getline(in, line)) runtime_error(path, "empty file, expected a header line");
  auto header = split_csv_line(line);
  if (header.size() < 3 || header.front() != "chain" || header.back() != "ln_posterior")
    runtime_error(path + ":1", "header must be 'chain,<parameter names>,ln_posterior'");
  const int64_t d = static_cast<int64_t>(header.size()) - 2;
  std::vector<double> values;
  std::vector<int64_t> chain_of_row;
  int64_t lineno = 1;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto cells = split_csv_line(line);
    if (static_cast<int64_t>(cells.size()) != d + 2)
      runtime_error(path + ":" + std::to_string(lineno),
                    std::to_string(cells.size()) + " fields, expected " + std::to_string(d + 2));
    for (size_t i = 0; i < cells.size(); ++i) {
      char* end = nullptr;
      double v = std::strtod(cells[i].c_str(), &end);
      if (cells[i].empty() || *end != '\0')
        runtime_error(path + ":" + std::to_string(lineno),
                      "field '" + header[i] + "' is '" + cells[i] + "', expected a number");
      if (i == 0) {
        if (v != std::floor(v) || v < 0)
          runtime_error(path + ":" + std::to_string(lineno), "chain id must be a non-negative integer");
        // Ids run 0, 1, 2, ... in order: checked before the cast, so that a huge id is an
        // error here rather than an out-of-range conversion or a huge allocation.
        const double next = chain_of_row.empty() ? 0.0 : static_cast<double>(chain_of_row.back()) + 1.0;
        if (v > next)
          runtime_error(path + ":" + std::to_string(lineno), "chain id " + cells[0] + " skips ids: expected " +
                        std::to_string(static_cast<int64_t>(next)) + " at most (ids run 0..C-1, rows ordered by chain)");
        chain_of_row.push_back(static_cast<int64_t>(v));
      } else {
        values.push_back(v);
      }
    }
  }
  if (chain_of_row.empty()) runtime_error(path, "no samples after the header");
  // Chain ids must be 0..C-1 in non-decreasing order with equal lengths.
  int64_t C = chain_of_row.back() + 1;
  std::vector<int64_t> count(C, 0);
  for (size_t i = 0; i < chain_of_row.size(); ++i) {
    if (i > 0 && chain_of_row[i] < chain_of_row[i - 1])
      runtime_error(path, "rows must be ordered by chain id");
    if (chain_of_row[i] >= C) runtime_error(path, "chain ids must be 0..C-1");
    ++count[chain_of_row[i]];
  }
  for (int64_t c = 0; c < C; ++c)
    if (count[c] != count[0])
      runtime_error(path, "chain " + std::to_string(c) + " has " + std::to_string(count[c]) +
                              " samples but chain 0 has " + std::to_string(count[0]) +
                              "; chains must have equal lengths");
  auto all = torch::tensor(values, torch::kFloat64).view({C, count[0], d + 1});
  Chains ch;
  ch.samples = all.narrow(2, 0, d).contiguous();
  ch.ln_posterior = all.select(2, d).contiguous();
  ch.names.assign(header.begin() + 1, header.end() - 1);
  return ch;
}

}  // namespace

Chains Chains::slice(int64_t first, int64_t count) const {
  NFKIT_ASSERT(first >= 0 && count >= 0 && first + count <= chains(), "chain slice out of range");
  return Chains{samples.narrow(0, first, count), ln_posterior.narrow(0, first, count), names};
}

void Chains::validate(const std::string& source) const {
  if (!samples.defined() || samples.dim() != 3)
    runtime_error(source, "samples must have shape [chains, steps, dim]");
  if (!ln_posterior.defined() || ln_posterior.dim() != 2 || ln_posterior.size(0) != chains() ||
      ln_posterior.size(1) != steps())
    runtime_error(source, "ln_posterior has shape " + shape_string(ln_posterior) + ", expected [" +
                              std::to_string(chains()) + ", " + std::to_string(steps()) + "]");
  if (static_cast<int64_t>(names.size()) != dim())
    runtime_error(source, std::to_string(names.size()) + " parameter names for " +
                              std::to_string(dim()) + " parameters");
  if (chains() < 1 || steps() < 1) runtime_error(source, "no samples");
  auto bad = (~torch::isfinite(samples)).any(2).nonzero();
  if (bad.size(0) > 0) {
    int64_t c = bad[0][0].item<int64_t>(), s = bad[0][1].item<int64_t>();
    double v = 0;
    for (int64_t k = 0; k < dim(); ++k)
      if (!std::isfinite(v = samples[c][s][k].item<double>())) {
        std::ostringstream m;
        m << "samples" << at_index(c, s) << " parameter '" << names[k] << "' is " << v
          << ", but must be finite";
        runtime_error(source, m.str());
      }
  }
  bad = (~torch::isfinite(ln_posterior)).nonzero();
  if (bad.size(0) > 0) {
    int64_t c = bad[0][0].item<int64_t>(), s = bad[0][1].item<int64_t>();
    std::ostringstream m;
    m << "ln_posterior" << at_index(c, s) << " is " << ln_posterior[c][s].item<double>()
      << ", but must be finite (a sample outside the prior's support?)";
    runtime_error(source, m.str());
  }
}

Chains read_chains(const std::string& path) {
  auto ext = file_extension(path);
  Chains ch;
  if (ext == "h5" || ext == "hdf5") {
    ch = read_h5(path);
  } else if (ext == "csv") {
    ch = read_csv(path);
  } else {
    usage_error("--chains", "'" + path + "' must end in .h5 or .csv");
  }
  ch.validate(path);
  return ch;
}

void write_chains(const std::string& path, const Chains& ch) {
  ch.validate("write_chains");
  auto ext = file_extension(path);
  if (ext == "h5" || ext == "hdf5") {
    H5Writer w(path, kKind, kVersion);
    w.write("/samples", ch.samples);
    w.write("/ln_posterior", ch.ln_posterior);
    w.set_attr("/", "names", nlohmann::json(ch.names).dump());
    w.commit();
  } else if (ext == "csv") {
    std::ostringstream s;
    s << "chain";
    for (const auto& n : ch.names) s << ',' << n;
    s << ",ln_posterior\n" << std::setprecision(17);
    auto x = ch.samples.contiguous();
    auto lp = ch.ln_posterior.contiguous();
    const double* xp = x.data_ptr<double>();
    const double* lpp = lp.data_ptr<double>();
    for (int64_t c = 0; c < ch.chains(); ++c)
      for (int64_t t = 0; t < ch.steps(); ++t) {
        s << c;
        for (int64_t k = 0; k < ch.dim(); ++k) s << ',' << xp[(c * ch.steps() + t) * ch.dim() + k];
        s << ',' << lpp[c * ch.steps() + t] << '\n';
      }
    write_file_atomic(path, s.str());
  } else {
    usage_error("write_chains", "'" + path + "' must end in .h5 or .csv");
  }
}

ChainDiagnostics diagnose(const Chains& ch) {
  const char* fn = "diagnose";
  const int64_t C = ch.chains(), S = ch.steps(), D = ch.dim();
  if (S < 4) usage_error(fn, "chains have " + std::to_string(S) + " steps, but need at least 4");
  ChainDiagnostics out;
  // Split R-hat on 2C half chains.
  const int64_t n = S / 2;
  auto halves = torch::cat({ch.samples.narrow(1, 0, n), ch.samples.narrow(1, S - n, n)}, 0);  // [2C, n, D]
  auto means = halves.mean(1);                    // [2C, D]
  auto W = halves.var(1, /*unbiased=*/true).mean(0);  // [D]
  auto B_n = means.var(0, /*unbiased=*/true);         // B / n
  auto var_plus = (n - 1.0) / n * W + B_n;
  auto rhat = torch::sqrt(var_plus / W);
  // ESS on the full chains: autocovariances by FFT.
  auto x = ch.samples - ch.samples.mean(1, true);  // [C, S, D]
  int64_t nfft = 1;
  while (nfft < 2 * S) nfft <<= 1;
  auto f = torch::fft::rfft(x, nfft, 1);
  auto acov = torch::fft::irfft(f * f.conj(), nfft, 1).narrow(1, 0, S) / S;  // [C, S, D] biased
  auto mean_acov = acov.mean(0);                                               // [S, D]
  auto W_full = (acov.select(1, 0) * S / (S - 1.0)).mean(0);                   // [D]
  auto chain_means = ch.samples.mean(1);
  auto var_plus_full = (S - 1.0) / S * W_full + (C > 1 ? chain_means.var(0, true) : torch::zeros_like(W_full));
  auto rho = 1.0 - (W_full - mean_acov) / var_plus_full;  // [S, D]
  auto rho_a = rho.contiguous();
  const double* r = rho_a.data_ptr<double>();
  for (int64_t k = 0; k < D; ++k) {
    double vp = var_plus_full[k].item<double>();
    double tau;
    if (!(vp > 0)) {
      tau = 1.0;  // a constant parameter: nothing to correlate
    } else {
      double sum = 0.0, prev = INFINITY;
      for (int64_t t = 0; t + 1 < S; t += 2) {
        double p = r[t * D + k] + r[(t + 1) * D + k];
        if (!(p > 0)) break;
        p = std::min(p, prev);  // initial monotone sequence
        sum += p;
        prev = p;
      }
      tau = std::max(-1.0 + 2.0 * sum, 1.0 / std::log10(static_cast<double>(C * S) + 10.0));
    }
    out.ess.push_back(C * S / tau);
    double rh = rhat[k].item<double>();
    out.rhat.push_back(std::isfinite(rh) ? rh : 1.0);
  }
  out.max_rhat = *std::max_element(out.rhat.begin(), out.rhat.end());
  out.min_ess = *std::min_element(out.ess.begin(), out.ess.end());
  return out;
}

nlohmann::json ChainDiagnostics::to_json(const std::vector<std::string>& names) const {
  nlohmann::json j = {{"max_rhat", max_rhat}, {"min_ess", min_ess}, {"parameters", nlohmann::json::object()}};
  for (size_t k = 0; k < rhat.size() && k < names.size(); ++k)
    j["parameters"][names[k]] = {{"rhat", rhat[k]}, {"ess", ess[k]}};
  return j;
}

}  // namespace nfkit
