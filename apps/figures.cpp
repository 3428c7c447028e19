#include "figures.h"

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "nfkit/boltzmann/analysis.h"
#include "nfkit/boltzmann/reweight.h"
#include "nfkit/flows/trainer.h"
#include "nfkit/opf/pipeline.h"

namespace nfkit::cli {

std::vector<double> to_vector(const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kCPU, torch::kFloat64).contiguous().reshape({-1});
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

std::string figure_path(const std::string& stem, viz::Format fmt) { return viz::with_extension(stem, fmt); }

torch::Tensor density_grid(const std::function<torch::Tensor(const torch::Tensor&)>& log_prob, double L, int64_t n) {
  torch::NoGradGuard ng;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const double h = 2.0 * L / n;
  const auto g = -L + h * (torch::arange(n, f64) + 0.5);
  auto grid = torch::meshgrid({g.flip(0), g}, "ij");  // rows: y from top to bottom
  const auto pts = torch::stack({grid[1].reshape({-1}), grid[0].reshape({-1})}, 1);
  return torch::exp(log_prob(pts).to(torch::kFloat64)).nan_to_num(0.0).reshape({n, n});
}

namespace {

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

/// A one-panel figure of the usual report size; the panel is f.panels[0].
viz::Figure single_panel(const std::string& title, const std::string& x_label, const std::string& y_label) {
  viz::Figure f;
  f.title = title;
  f.width_px = 1100;
  f.height_px = 720;
  viz::Panel& p = f.panel();
  p.x_label = x_label;
  p.y_label = y_label;
  return f;
}

viz::Series polyline(std::vector<double> x, std::vector<double> y) {
  viz::Series s;
  s.x = std::move(x);
  s.y = std::move(y);
  s.colour = viz::Colour::kBlack;
  s.width = 1.0;
  s.dashed = true;
  return s;
}

}  // namespace

namespace {

// Three side-by-side ln-density heat maps (reference, raw, reweighted) with one colour bar of
// ln density over its maximum, floor -8.
viz::Figure log_density_panels(const std::string& title, const std::string& caption) {
  viz::Figure f;
  f.title = title;
  f.cols = 3;
  f.width_px = 1560;
  f.height_px = 600;
  f.colour_bar_label = "ln density / its maximum";
  f.colour_range = {-8.0, 0.0};
  f.caption = caption;
  return f;
}

}  // namespace

void ramachandran_figure(const std::string& path, viz::Format fmt, const torch::Tensor& md, const torch::Tensor& bg,
                         const torch::Tensor& log_w) {
  constexpr int kBins = 90;
  viz::Figure f = log_density_panels(
      "Ramachandran plots of alanine dipeptide",
      "90 x 90 bins of 4 degrees; white: no sample (or below e^-8 of the maximum); dashed: basin boundaries");
  const std::vector<std::pair<std::string, torch::Tensor>> panels = {
      {"MD (" + std::to_string(md.size(0)) + " frames)", torch::Tensor()},
      {"BG raw (" + std::to_string(bg.size(0)) + " samples)", torch::Tensor()},
      {"BG reweighted", log_w}};
  for (size_t k = 0; k < panels.size(); ++k) {
    const auto& x = k == 0 ? md : bg;
    auto h = ramachandran_histogram(x, kBins, panels[k].second);  // [phi bin][psi bin]
    h = h / h.max();
    auto lh = torch::log(h);
    lh = torch::where(lh < -8.0, torch::full_like(lh, NAN), lh);
    viz::Panel& p = f.panel();
    p.title = panels[k].first;
    p.x_label = "φ (degrees)";
    p.y_label = k == 0 ? "ψ (degrees)" : "";
    p.y_numbers = k == 0;
    p.x_tick = p.y_tick = 90;
    p.legend = viz::Panel::Legend::kNone;
    viz::HeatMap m;
    m.nx = m.ny = kBins;
    m.x_lo = m.y_lo = -180;
    m.x_hi = m.y_hi = 180;
    m.values = to_vector(lh.t());  // rows: psi bins, columns: phi bins
    p.heat = std::move(m);
    // nfkit::basin_index: alpha_L/C7ax phi >= 0; alpha_R phi < 0, -120 <= psi < 50; C7eq/beta the rest
    p.series.push_back(polyline({0, 0}, {-180, 180}));
    p.series.push_back(polyline({-180, 0}, {50, 50}));
    p.series.push_back(polyline({-180, 0}, {-120, -120}));
    p.labels.push_back({-90, 115, "C7eq/β"});
    p.labels.push_back({-90, -150, "C7eq/β"});
    p.labels.push_back({-90, -35, "αR"});
    p.labels.push_back({90, 20, "αL/C7ax"});
  }
  viz::save(f, path, fmt);
}

void tica_figure(const std::string& path, viz::Format fmt, const torch::Tensor& md, const torch::Tensor& raw,
                 const torch::Tensor& resampled, int64_t lag, const std::vector<double>& autocorrelations) {
  constexpr int kBins = 80;
  const auto ref = md.to(torch::kFloat64);
  std::array<double, 2> lo{}, hi{};
  for (int64_t c = 0; c < 2; ++c) {
    const double a = torch::quantile(ref.select(1, c), 0.005).item<double>();
    const double b = torch::quantile(ref.select(1, c), 0.995).item<double>();
    lo[c] = a - 0.25 * (b - a);
    hi[c] = b + 0.25 * (b - a);
  }
  std::string ac;
  for (size_t k = 0; k < autocorrelations.size(); ++k) ac += (k ? ", " : "") + fixed(autocorrelations[k], 2);
  viz::Figure f = log_density_panels(
      "Alanine dipeptide in the two slowest TICA components of the reference",
      "lag " + std::to_string(lag) + " frames, TIC autocorrelations " + ac + "; " + std::to_string(kBins) + " x " +
          std::to_string(kBins) + " bins; white: no sample (< e^-8 of the maximum)");
  const std::vector<std::pair<std::string, const torch::Tensor*>> panels = {
      {"MD (" + std::to_string(md.size(0)) + " frames)", &md},
      {"BG raw (" + std::to_string(raw.size(0)) + " samples)", &raw},
      {"BG reweighted (resampled)", &resampled}};
  for (size_t k = 0; k < panels.size(); ++k) {
    const auto x = panels[k].second->to(torch::kFloat64).contiguous();
    auto m = viz::histogram2d(to_vector(x.select(1, 0).contiguous()), to_vector(x.select(1, 1).contiguous()), kBins,
                              lo[0], hi[0], lo[1], hi[1]);
    for (auto& v : m.values) v = std::isfinite(v) && std::log(v) >= -8.0 ? std::log(v) : NAN;
    viz::Panel& p = f.panel();
    p.title = panels[k].first;
    p.x_label = "TIC 1";
    p.y_label = k == 0 ? "TIC 2" : "";
    p.y_numbers = k == 0;
    p.legend = viz::Panel::Legend::kNone;
    p.heat = std::move(m);
  }
  viz::save(f, path, fmt);
}

void energy_figure(const std::string& path, viz::Format fmt, const torch::Tensor& u_md, const torch::Tensor& u_raw,
                   const torch::Tensor& u_reweighted, double lo, double hi) {
  viz::Figure f = single_panel("Reduced energies: MD reference and Boltzmann generator", "reduced energy u = E / k_B T",
                               "probability density (1 / k_B T)");
  viz::Panel& p = f.panels[0];
  int64_t out_md = 0, out_raw = 0, out_rw = 0;
  p.series.push_back(viz::histogram(to_vector(u_md), lo, hi, 80, "MD reference", &out_md));
  p.series.push_back(viz::histogram(to_vector(u_raw), lo, hi, 80, "BG raw", &out_raw));
  p.series.push_back(viz::histogram(to_vector(u_reweighted), lo, hi, 80, "BG reweighted", &out_rw));
  p.series[0].colour = viz::Colour::kBlack, p.series[0].width = 2.0;
  p.series[1].colour = viz::Colour::kOrange, p.series[1].dashed = true;
  p.series[2].colour = viz::Colour::kBlue;
  f.caption = "range [" + fixed(lo, 1) + ", " + fixed(hi, 1) + "]; outside it (the raw tail's cut): BG raw " +
              std::to_string(out_raw) + " of " + std::to_string(u_raw.numel()) + ", reweighted " +
              std::to_string(out_rw) + ", MD " + std::to_string(out_md);
  viz::save(f, path, fmt);
}

void log_weight_figure(const std::string& path, viz::Format fmt, const torch::Tensor& log_w, double ess_fraction,
                       const std::string& note) {
  const auto finite = log_w.masked_select(torch::isfinite(log_w));
  viz::Figure f = single_panel("Importance log-weights (Kish ESS " + fixed(100.0 * ess_fraction, 2) + "% of " +
                                   std::to_string(log_w.numel()) + " samples)",
                               "ln w - max ln w", "samples per bin");
  viz::Panel& p = f.panels[0];
  p.legend = viz::Panel::Legend::kNone;
  p.y_log = true;
  if (finite.numel() > 0) {
    const auto v = finite - finite.max();
    const double lo = std::max(-60.0, v.min().item<double>());
    auto s = viz::histogram(to_vector(v), lo - 1e-9, 1e-9, 60, "");
    const double width = (s.x[1] - s.x[0]);
    for (auto& y : s.y) y *= static_cast<double>(v.numel()) * width;  // density -> counts
    s.colour = viz::Colour::kBlue;
    p.series.push_back(std::move(s));
  }
  f.caption = note;
  viz::save(f, path, fmt);
}

void density_figure(const std::string& path, viz::Format fmt, const std::vector<torch::Tensor>& grids,
                    const std::vector<std::string>& titles, double L) {
  viz::Figure f;
  f.title = "Density on [-" + fixed(L, 1) + ", " + fixed(L, 1) + "]²";
  f.cols = static_cast<int>(grids.size());
  f.width_px = 540 * f.cols + 160;
  f.height_px = 620;
  f.colour_bar_label = "probability density";
  for (size_t k = 0; k < grids.size(); ++k) {
    viz::Panel& p = f.panel();
    p.title = titles[k];
    p.x_label = "x₁";
    p.y_label = k == 0 ? "x₂" : "";
    p.y_numbers = k == 0;
    viz::HeatMap m;
    m.nx = static_cast<int>(grids[k].size(1));
    m.ny = static_cast<int>(grids[k].size(0));
    m.x_lo = m.y_lo = -L;
    m.x_hi = m.y_hi = L;
    m.values = to_vector(grids[k].flip(0));  // row 0 at y = -L
    p.heat = std::move(m);
  }
  viz::save(f, path, fmt);
}

void bayes_factor_figure(const std::string& path, viz::Format fmt, const std::string& title,
                         const std::vector<std::string>& models, const std::vector<double>& ln_bf,
                         const std::vector<double>& errors) {
  viz::Figure f;
  f.title = title;
  f.width_px = 1100;
  f.height_px = std::max(360, 110 + 70 * static_cast<int>(models.size()));
  viz::Panel& p = f.panel();
  p.x_label = "ln Bayes factor (1 = e times more evidence)";
  p.y_categories = models;
  p.legend = viz::Panel::Legend::kNone;
  p.zero_line = 0.0;
  viz::Series s;
  s.style = viz::Series::Style::kBarsH;
  s.x = ln_bf;
  s.x_err = errors;
  for (size_t i = 0; i < models.size(); ++i) s.y.push_back(static_cast<double>(i));
  p.series.push_back(std::move(s));
  f.caption = "error bars: ±1 standard error of ln z (learned harmonic mean), added in quadrature";
  viz::save(f, path, fmt);
}

std::string pta_parameter_label(const std::string& name) {
  if (name == "log10_A") return "log10 A (strain at f = 1/yr)";
  if (name == "gamma") return "γ (spectral index)";
  if (name == "log10_omega") return "log10 Ω_GW h² (peak)";
  if (name.rfind("log10_f", 0) == 0) return "log10 f_" + name.substr(7) + " (Hz)";
  std::string s = name;
  std::replace(s.begin(), s.end(), '_', ' ');
  return s + " (dimensionless)";
}

void pta_corner_figure(const std::string& path, viz::Format fmt, const std::string& title, const torch::Tensor& samples,
                       const std::vector<std::string>& names, const std::vector<std::pair<double, double>>& support) {
  const int64_t d = samples.size(1);
  std::vector<std::vector<double>> cols;
  std::vector<viz::CornerAxis> axes;
  for (int64_t k = 0; k < d; ++k) {
    const auto c = samples.select(1, k).to(torch::kFloat64);
    cols.push_back(to_vector(c));
    double lo = support.size() > static_cast<size_t>(k) ? support[k].first : -INFINITY;
    double hi = support.size() > static_cast<size_t>(k) ? support[k].second : INFINITY;
    if (!std::isfinite(lo)) lo = c.min().item<double>();
    if (!std::isfinite(hi)) hi = c.max().item<double>();
    if (!(hi > lo)) hi = lo + 1.0;
    axes.push_back({pta_parameter_label(names[k]), lo, hi});
  }
  auto f = viz::corner(cols, axes, title);
  f.caption = std::to_string(samples.size(0)) + " posterior samples; axes span the prior's range";
  viz::save(f, path, fmt);
}

void opf_gap_figure(const std::string& path, viz::Format fmt, const OpfEvalReport& rep, const std::string& title) {
  viz::Figure f = single_panel(title, "load level (% of the case's loads)", "mean |cost gap| against Ipopt (%)");
  viz::Panel& p = f.panels[0];
  p.y_log = true;
  struct Col {
    const char* label;
    double OpfLevelResult::*gap;
    viz::Colour colour;
    bool dashed;
  };
  const Col cols[] = {{"GNN", &OpfLevelResult::gap_gnn, viz::Colour::kRed, false},
                      {"GNN + CFM", &OpfLevelResult::gap_cfm, viz::Colour::kOrange, false},
                      {"GNN + projection", &OpfLevelResult::gap_gnn_projected, viz::Colour::kGrey, true},
                      {"GNN + CFM + projection (returned)", &OpfLevelResult::gap_final, viz::Colour::kBlue, false}};
  double lo = 100, hi = 100;
  for (const auto& l : rep.levels) lo = std::min(lo, 100 * l.level), hi = std::max(hi, 100 * l.level);
  for (const auto& c : cols) {
    viz::Series s;
    s.label = c.label;
    s.style = viz::Series::Style::kLineMarkers;
    s.colour = c.colour;
    s.dashed = c.dashed;
    for (const auto& l : rep.levels) {
      if (l.returned == 0) continue;
      s.x.push_back(100.0 * l.level);
      s.y.push_back(l.*(c.gap));
    }
    p.series.push_back(std::move(s));
  }
  viz::Series target;
  target.label = "target 0.1%";
  target.x = {lo - 5, hi + 5};
  target.y = {0.1, 0.1};
  target.colour = viz::Colour::kBlack;
  target.dashed = true;
  target.width = 1.0;
  p.series.push_back(std::move(target));
  p.x_range = {lo - 5, hi + 5};
  // Headroom above the data for the legend (five entries, ~35% of the height), so that it
  // never hides a curve: on the log axis, 0.6 of the data's decades above the largest value.
  {
    double ymin = 0.1, ymax = 0.1;
    for (const auto& s : p.series)
      for (double y : s.y)
        if (y > 0 && std::isfinite(y)) ymin = std::min(ymin, y), ymax = std::max(ymax, y);
    const double decades = std::log10(ymax / ymin) + 0.3;
    p.y_range = {ymin / 1.5, ymax * std::pow(10.0, 0.6 * decades + 0.1)};
  }
  p.legend = viz::Panel::Legend::kTopRight;
  std::ostringstream cap;
  cap << "feasible after projection: " << rep.all.feasible << " of " << rep.all.returned
      << " returned (worst violation " << std::scientific << std::setprecision(1) << rep.all.worst_after
      << " MW); infeasible scenarios refused: " << rep.all.refused << "; GNN and GNN + CFM are before projection";
  // coinciding curves hide each other: say so
  const bool identity = std::all_of(rep.levels.begin(), rep.levels.end(),
                                    [](const OpfLevelResult& l) { return l.gap_cfm == l.gap_gnn; });
  if (identity && !rep.levels.empty()) cap << " (here GNN + CFM = GNN: the refinement kept the identity)";
  f.caption = cap.str();
  viz::save(f, path, fmt);
}

void opf_training_figure(const std::string& path, viz::Format fmt, const OpfTrainReport& rep,
                         const std::string& title) {
  viz::Figure f =
      single_panel(title, "epoch (GNN stage, then CFM stage)", "validation RMSE of the dispatch (unit coordinates)");
  viz::Panel& p = f.panels[0];
  p.y_log = true;
  viz::Series g, c;
  g.label = "GNN";
  g.colour = viz::Colour::kRed;
  c.label = "GNN + CFM (refined)";
  c.colour = viz::Colour::kBlue;
  int64_t last = 0;
  for (const auto& [e, v] : rep.gnn_curve) g.x.push_back(static_cast<double>(e)), g.y.push_back(v), last = e;
  for (const auto& [e, v] : rep.cfm_curve) c.x.push_back(static_cast<double>(last + e)), c.y.push_back(v);
  p.series.push_back(std::move(g));
  if (!c.x.empty()) p.series.push_back(std::move(c));
  std::ostringstream cap;
  cap << "best: GNN " << std::setprecision(4) << rep.gnn_val_rmse << " at epoch " << rep.gnn_best_epoch;
  if (!rep.cfm_curve.empty()) cap << ", GNN + CFM " << rep.cfm_val_rmse << " at CFM epoch " << rep.cfm_best_epoch;
  f.caption = cap.str();
  viz::save(f, path, fmt);
}

void training_curve_figure(const std::string& path, viz::Format fmt, const TrainingCurve& c) {
  viz::Figure f = single_panel(c.title, "step", c.loss_label);
  viz::Panel& p = f.panels[0];
  viz::Series tr;
  tr.label = "training";
  tr.x = c.step;
  tr.y = c.loss;
  tr.colour = viz::Colour::kBlue;
  tr.width = 1.0;
  p.series.push_back(std::move(tr));
  if (!c.val_step.empty()) {
    viz::Series va;
    va.label = "validation";
    va.x = c.val_step;
    va.y = c.val_loss;
    va.style = viz::Series::Style::kLineMarkers;
    va.colour = viz::Colour::kOrange;
    va.width = 2.0;
    if (c.val_label.empty()) {
      p.series.push_back(std::move(va));
    } else {
      p.title = "training loss";
      f.cols = 2;
      f.width_px = 1600;
      viz::Panel& q = f.panel();
      q.title = "validation";
      q.x_label = "step";
      q.y_label = c.val_label;
      q.series.push_back(std::move(va));
    }
  }
  viz::save(f, path, fmt);
}

TrainingCurve training_curve(const TrainReport& rep, const std::string& title, const std::string& loss_label) {
  TrainingCurve c;
  c.title = title;
  c.loss_label = loss_label;
  for (const auto& [st, v] : rep.training) c.step.push_back(static_cast<double>(st)), c.loss.push_back(v);
  for (const auto& [st, v] : rep.validation)
    if (std::isfinite(v)) c.val_step.push_back(static_cast<double>(st)), c.val_loss.push_back(v);
  return c;
}

std::string training_figure_path(const std::string& model_path, viz::Format fmt) {
  std::string stem = model_path;
  if (stem.size() > 3 && stem.compare(stem.size() - 3, 3, ".h5") == 0) stem.resize(stem.size() - 3);
  return figure_path(stem + ".training", fmt);
}

}  // namespace nfkit::cli
