#pragma once
// Figures for reports: one small layer over PLplot (https://plplot.sourceforge.net) with its
// cairo drivers, so every command draws PNG, PDF or SVG with real fonts (DejaVu Sans through
// fontconfig), tick values, legends and colour bars.
//
// A Figure is a grid of Panels; a Panel holds series (lines, step histograms, markers, bars with
// error bars), at most one heat map, text labels and axis settings. Heat maps of one figure share
// one colour scale and one colour bar. Nothing here knows about torch: callers pass plain
// vectors, so physics codes can draw without the flows.
//
// Example (a two-series histogram with a legend):
//   viz::Figure f;
//   f.title = "Reduced energy";
//   viz::Panel& p = f.panel();
//   p.x_label = "u = E / k_B T"; p.y_label = "density";
//   p.series.push_back(viz::histogram(u_md, lo, hi, 80, "MD"));
//   p.series.push_back(viz::histogram(u_bg, lo, hi, 80, "BG reweighted"));
//   viz::save(f, "energy.pdf", viz::Format::kPdf);
//
// Text is UTF-8 and printed as written ('#', PLplot's escape character, is escaped), so
// "φ (°)" needs no markup. PLplot is not thread-safe: save() serialises calls in a process.
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace nfkit::viz {

enum class Format { kPng, kPdf, kSvg };

/// "png", "pdf" or "svg"; anything else is a UsageError naming `option` and the value.
Format parse_format(const std::string& value, const std::string& option = "--figure-format");
const char* extension(Format f);  ///< "png", "pdf", "svg"

/// Colours cycle through matplotlib's "tab10" in this order unless a series names one.
enum class Colour { kAuto = -1, kBlue, kOrange, kGreen, kRed, kPurple, kBrown, kPink, kGrey, kOlive, kCyan, kBlack };

struct Series {
  enum class Style {
    kLine,         ///< polyline through (x, y)
    kStep,         ///< histogram: x holds y.size() + 1 bin edges
    kMarkers,      ///< points
    kLineMarkers,  ///< both
    kBarsH,        ///< horizontal bars from 0 to x at heights y (bar charts; y = category index)
  };
  std::string label;  ///< legend entry; empty = not in the legend
  std::vector<double> x, y;
  std::vector<double> x_err;  ///< optional symmetric error bars (same length as x), drawn as bars
  std::vector<double> y_err;  ///< optional symmetric error bars (same length as y)
  Style style = Style::kLine;
  Colour colour = Colour::kAuto;
  bool dashed = false;
  double width = 1.5;  ///< line width in points
};

/// A normalised histogram (density: integrates to 1 over [lo, hi)) of `values` as a kStep
/// series. Values outside [lo, hi) and non-finite values are left out of the counts but not of
/// the normalisation (the density of the whole sample, as matplotlib's density=True on a range
/// that covers it). `dropped`, when given, receives how many fell outside.
Series histogram(const std::vector<double>& values, double lo, double hi, int bins, const std::string& label,
                 int64_t* dropped = nullptr);

/// A heat map on [x_lo, x_hi] x [y_lo, y_hi]: values row-major [ny][nx], row 0 at y_lo.
/// NaN cells are left blank (background).
struct HeatMap {
  std::vector<double> values;
  int nx = 0, ny = 0;
  double x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
};

/// A pixel image drawn as it is (each pixel a square, no smoothing): image sample grids.
struct Picture {
  int width = 0, height = 0;
  std::vector<unsigned char> rgb;  ///< [height][width][3], row 0 at the top
};

struct Label {
  double x = 0, y = 0;  ///< data coordinates
  std::string text;
  Colour colour = Colour::kBlack;
  double justify = 0.5;  ///< 0 left, 0.5 centre, 1 right
};

struct Panel {
  enum class Legend { kTopRight, kTopLeft, kBottomRight, kBottomLeft, kNone };
  std::string title, x_label, y_label;
  bool x_log = false, y_log = false;
  /// Axis ranges; NaN ends are taken from the data (with 4% padding; from 0 for histograms and
  /// bars when the data are non-negative).
  std::array<double, 2> x_range{std::nan(""), std::nan("")};
  std::array<double, 2> y_range{std::nan(""), std::nan("")};
  double x_tick = 0, y_tick = 0;  ///< major tick spacing (0 = PLplot chooses)
  std::vector<Series> series;
  std::optional<HeatMap> heat;
  std::optional<Picture> picture;  ///< drawn on [0, width] x [0, height] without axes
  std::vector<Label> labels;
  /// Tick labels at y = 0, 1, ... with category 0 at the top (bar charts: kBarsH with y = index).
  std::vector<std::string> y_categories;
  Legend legend = Legend::kTopRight;
  bool visible = true;                      ///< false: an empty cell (the upper triangle of a corner plot)
  bool x_numbers = true, y_numbers = true;  ///< tick values on the axis
  double zero_line = std::nan("");          ///< a dotted vertical line at this x (bar charts)
};

struct Figure {
  std::string title;    ///< over the whole figure
  std::string caption;  ///< one small line under the figure (cut-offs, counts, settings)
  int rows = 1, cols = 1;
  std::vector<Panel> panels;  ///< row-major, rows * cols at most
  /// Label of the colour bar drawn for the heat maps (required when any panel has one).
  std::string colour_bar_label;
  /// Colour scale of the heat maps; NaN ends are taken from the finite values of all of them.
  std::array<double, 2> colour_range{std::nan(""), std::nan("")};
  int width_px = 1200, height_px = 800;  ///< PNG size; PDF/SVG have the same size at `dpi`
  int dpi = 120;
  double text_scale = 1.0;  ///< all text, relative to PLplot's default height

  /// Appends a panel and returns it (the grid grows by rows of `cols`).
  Panel& panel();
};

/// A 2-D histogram of the pairs (x[i], y[i]) on [x_lo, x_hi] x [y_lo, y_hi] with bins x bins
/// cells, normalised to its largest cell (= 1); empty cells are NaN (blank).
HeatMap histogram2d(const std::vector<double>& x, const std::vector<double>& y, int bins, double x_lo, double x_hi,
                    double y_lo, double y_hi);

/// One parameter of a corner plot: its name with unit, and the range drawn (e.g. the prior's).
struct CornerAxis {
  std::string name;
  double lo = 0, hi = 1;
};

/// A corner plot (the layout of Foreman-Mackey's corner.py, JOSS 2016): 1-D marginal histograms
/// on the diagonal, 2-D marginals below it as heat maps normalised per panel, names and tick
/// values on the outer axes only. columns[k] holds the samples of parameter k.
Figure corner(const std::vector<std::vector<double>>& columns, const std::vector<CornerAxis>& axes,
              const std::string& title, int bins = 30);

/// Draws `fig` to `path` (its extension is not changed) in format `fmt`, atomically: the file
/// appears complete or not at all. Throws UsageError for an inconsistent figure (sizes, empty
/// panels grid) and RuntimeError naming `path` when it cannot be written.
void save(const Figure& fig, const std::string& path, Format fmt);

/// The round tick spacing (1, 2 or 5 times a power of ten) nearest, on a log scale, to
/// `range / n`: about n major ticks over `range`.
double nice_step(double range, double n);

/// `stem` + "." + extension(fmt).
std::string with_extension(const std::string& stem, Format fmt);

/// The drawn range of an axis (in plotted coordinates: log10 of the values on a log axis) for
/// data from `data_lo` to `data_hi` and the panel's `given` ends (NaN: from the data, padded by
/// 4%). A log axis is widened to whole decades until two powers of ten, which carry its tick
/// values, lie on it.
std::array<double, 2> axis_limits(const std::array<double, 2>& given, double data_lo, double data_hi, bool log);

}  // namespace nfkit::viz
