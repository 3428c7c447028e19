#include "nfkit/viz/figure.h"

#include <plplot.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "nfkit/core/error.h"

namespace nfkit::viz {
namespace {

namespace fs = std::filesystem;

// cmap0: 0 background, 1 black (axes, text), 2.. tab10, then the same at 45% opacity (fills),
// then light grey (grid lines).
constexpr int kTab10[10][3] = {{31, 119, 180}, {255, 127, 14},  {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
                               {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
constexpr int kFirstColour = 2;
constexpr int kFirstFill = kFirstColour + 11;
constexpr int kLightGrey = kFirstFill + 11;
constexpr int kScratch = kLightGrey + 1;  // pixel colours of pictures

int colour_index(Colour c, size_t auto_index) {
  const int i = c == Colour::kAuto ? static_cast<int>(auto_index % 10) : static_cast<int>(c);
  return kFirstColour + i;
}

void set_palette() {
  plscmap0n(kScratch + 1);
  plscol0a(0, 255, 255, 255, 1.0);
  plscol0a(1, 0, 0, 0, 1.0);
  for (int i = 0; i < 10; ++i) {
    plscol0a(kFirstColour + i, kTab10[i][0], kTab10[i][1], kTab10[i][2], 1.0);
    plscol0a(kFirstFill + i, kTab10[i][0], kTab10[i][1], kTab10[i][2], 0.45);
  }
  plscol0a(kFirstColour + 10, 0, 0, 0, 1.0);
  plscol0a(kFirstFill + 10, 0, 0, 0, 0.45);
  plscol0a(kLightGrey, 190, 190, 190, 1.0);
  // viridis (matplotlib's default colour map) through five of its control points
  const PLFLT pos[5] = {0.0, 0.25, 0.5, 0.75, 1.0};
  const PLFLT r[5] = {68 / 255.0, 59 / 255.0, 33 / 255.0, 94 / 255.0, 253 / 255.0};
  const PLFLT g[5] = {1 / 255.0, 82 / 255.0, 145 / 255.0, 201 / 255.0, 231 / 255.0};
  const PLFLT b[5] = {84 / 255.0, 139 / 255.0, 140 / 255.0, 98 / 255.0, 37 / 255.0};
  plscmap1n(256);
  plscmap1l(1, 5, pos, r, g, b, nullptr);
}

/// PLplot's escape character is '#'; a literal one is written twice.
std::string esc(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    o += c;
    if (c == '#') o += '#';
  }
  return o;
}

double tr(double v, bool log) { return log ? std::log10(v) : v; }

struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  void add(double v, bool log) {
    if (!std::isfinite(v) || (log && v <= 0)) return;
    v = tr(v, log);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return !(lo <= hi); }
};

/// The axis limits (in plotted, i.e. log10 where log, coordinates).
std::array<double, 2> limits(const std::array<double, 2>& given, Range data, bool log, bool from_zero, bool pad) {
  if (data.empty()) data = {0.0, 1.0};
  double lo = data.lo, hi = data.hi;
  if (from_zero && !log && lo >= 0) lo = 0;
  if (hi - lo <= 0) {
    const double d = std::max(1e-12, std::abs(hi) * 0.05 + (hi == 0 ? 1 : 0));
    lo -= d;
    hi += d;
  }
  if (pad) {
    const double p = 0.04 * (hi - lo);
    if (!(from_zero && !log && lo == 0)) lo -= p;
    hi += p;
  }
  if (std::isfinite(given[0])) lo = tr(given[0], log);
  if (std::isfinite(given[1])) hi = tr(given[1], log);
  // A log axis labels only powers of ten: widen the ends taken from the data to whole decades
  // until two of them are on the axis, so that every log axis has readable tick values (a
  // training curve from 0.011 to 0.1 showed a single "10^-1").
  if (log) {
    auto labelled = [&] { return std::floor(hi + 1e-9) - std::ceil(lo - 1e-9) + 1; };
    if (labelled() < 2 && !std::isfinite(given[0])) lo = std::floor(lo + 1e-9);
    if (labelled() < 2 && !std::isfinite(given[1])) hi = std::ceil(hi - 1e-9);
    if (labelled() < 2 && !std::isfinite(given[0])) lo -= 1;
  }
  if (!(hi > lo)) usage_error("viz::save", "an axis range is empty or reversed");
  return {lo, hi};
}

void check_series(const Series& s) {
  const size_t n = s.y.size();
  const size_t nx = s.style == Series::Style::kStep ? n + 1 : n;
  if (s.x.size() != nx)
    usage_error("viz::save", "series '" + s.label + "' has " + std::to_string(s.x.size()) + " x values, expected " +
                                 std::to_string(nx));
  if (!s.x_err.empty() && s.x_err.size() != s.x.size())
    usage_error("viz::save", "series '" + s.label + "': x_err must match x");
  if (!s.y_err.empty() && s.y_err.size() != n) usage_error("viz::save", "series '" + s.label + "': y_err must match y");
}

void data_range(const Panel& p, Range& rx, Range& ry, bool& from_zero) {
  from_zero = false;
  for (const auto& s : p.series) {
    const bool step = s.style == Series::Style::kStep;
    const bool bars = s.style == Series::Style::kBarsH;
    if (step) from_zero = true;
    for (size_t i = 0; i < s.x.size(); ++i) {
      const double e = s.x_err.empty() ? 0.0 : s.x_err[i];
      rx.add(s.x[i] - e, p.x_log);
      rx.add(s.x[i] + e, p.x_log);
      if (bars) rx.add(0.0, p.x_log);
    }
    for (size_t i = 0; i < s.y.size(); ++i) {
      const double e = s.y_err.empty() ? 0.0 : s.y_err[i];
      ry.add(s.y[i] - e, p.y_log);
      ry.add(s.y[i] + e, p.y_log);
    }
  }
  if (p.heat) {
    rx.add(p.heat->x_lo, p.x_log), rx.add(p.heat->x_hi, p.x_log);
    ry.add(p.heat->y_lo, p.y_log), ry.add(p.heat->y_hi, p.y_log);
  }
  for (const auto& l : p.labels) rx.add(l.x, p.x_log), ry.add(l.y, p.y_log);
  if (std::isfinite(p.zero_line)) rx.add(p.zero_line, p.x_log);
}

/// Polyline with log transforms; non-finite or non-positive (on log axes) points break it.
void polyline(const std::vector<double>& x, const std::vector<double>& y, bool xl, bool yl) {
  std::vector<PLFLT> px, py;
  auto flush = [&] {
    if (px.size() >= 2) plline(static_cast<PLINT>(px.size()), px.data(), py.data());
    px.clear(), py.clear();
  };
  for (size_t i = 0; i < x.size(); ++i) {
    const bool ok = std::isfinite(x[i]) && std::isfinite(y[i]) && (!xl || x[i] > 0) && (!yl || y[i] > 0);
    if (!ok) {
      flush();
      continue;
    }
    px.push_back(tr(x[i], xl));
    py.push_back(tr(y[i], yl));
  }
  flush();
}

void draw_series(const Series& s, size_t index, const Panel& p) {
  const int col = colour_index(s.colour, index);
  plcol0(col);
  plwidth(s.width);
  pllsty(s.dashed ? 3 : 1);
  const bool xl = p.x_log, yl = p.y_log;
  using St = Series::Style;
  switch (s.style) {
    case St::kLine:
    case St::kLineMarkers:
      polyline(s.x, s.y, xl, yl);
      break;
    case St::kStep: {
      std::vector<double> x, y;
      const double base = yl ? std::nan("") : 0.0;
      x.push_back(s.x.front()), y.push_back(base);
      for (size_t i = 0; i < s.y.size(); ++i) {
        x.push_back(s.x[i]), y.push_back(s.y[i]);
        x.push_back(s.x[i + 1]), y.push_back(s.y[i]);
      }
      x.push_back(s.x.back()), y.push_back(base);
      polyline(x, y, xl, yl);
      break;
    }
    case St::kBarsH:
      for (size_t i = 0; i < s.y.size(); ++i) {
        if (!std::isfinite(s.x[i])) continue;
        const double x0 = tr(xl ? std::min(1.0, s.x[i]) : 0.0, xl), x1 = tr(s.x[i], xl);
        PLFLT bx[4] = {x0, x1, x1, x0}, by[4] = {s.y[i] - 0.32, s.y[i] - 0.32, s.y[i] + 0.32, s.y[i] + 0.32};
        plcol0(kFirstFill + (col - kFirstColour));
        plfill(4, bx, by);
        plcol0(col);
        PLFLT ox[5] = {x0, x1, x1, x0, x0}, oy[5] = {by[0], by[1], by[2], by[3], by[0]};
        plline(5, ox, oy);
      }
      break;
    case St::kMarkers:
      break;
  }
  pllsty(1);
  if (s.style == St::kMarkers || s.style == St::kLineMarkers) {
    plssym(0.0, 0.9);
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i]) || (xl && s.x[i] <= 0) || (yl && s.y[i] <= 0)) continue;
      PLFLT px = tr(s.x[i], xl), py = tr(s.y[i], yl);
      plpoin(1, &px, &py, 17);
    }
  }
  plcol0(s.style == St::kBarsH ? 1 : col);
  plwidth(1.2);
  if (!s.x_err.empty()) {
    std::vector<PLFLT> lo, hi, y;
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (!std::isfinite(s.x_err[i]) || s.x_err[i] <= 0) continue;
      lo.push_back(tr(s.x[i] - s.x_err[i], xl)), hi.push_back(tr(s.x[i] + s.x_err[i], xl)), y.push_back(tr(s.y[i], yl));
    }
    if (!y.empty()) plerrx(static_cast<PLINT>(y.size()), lo.data(), hi.data(), y.data());
  }
  if (!s.y_err.empty()) {
    std::vector<PLFLT> lo, hi, x;
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (!std::isfinite(s.y_err[i]) || s.y_err[i] <= 0) continue;
      lo.push_back(tr(s.y[i] - s.y_err[i], yl)), hi.push_back(tr(s.y[i] + s.y_err[i], yl)), x.push_back(tr(s.x[i], xl));
    }
    if (!x.empty()) plerry(static_cast<PLINT>(x.size()), x.data(), lo.data(), hi.data());
  }
  plwidth(1.0);
}

void draw_legend(const Panel& p) {
  std::vector<size_t> idx;
  for (size_t i = 0; i < p.series.size(); ++i)
    if (!p.series[i].label.empty()) idx.push_back(i);
  if (idx.empty() || p.legend == Panel::Legend::kNone) return;
  const auto n = static_cast<PLINT>(idx.size());
  std::vector<PLINT> opt(n), text_col(n, 1), box_col(n), box_pat(n, 0), line_col(n), line_sty(n), sym_col(n),
      sym_num(n, 1);
  std::vector<PLFLT> box_scale(n, 0.8), box_width(n, 1.0), line_width(n), sym_scale(n, 0.9);
  std::vector<std::string> texts(n);
  std::vector<const char*> text_ptr(n), sym_ptr(n, "•");
  using St = Series::Style;
  for (PLINT k = 0; k < n; ++k) {
    const Series& s = p.series[idx[k]];
    const int col = colour_index(s.colour, idx[k]);
    opt[k] = s.style == St::kBarsH         ? PL_LEGEND_COLOR_BOX
             : s.style == St::kMarkers     ? PL_LEGEND_SYMBOL
             : s.style == St::kLineMarkers ? (PL_LEGEND_LINE | PL_LEGEND_SYMBOL)
                                           : PL_LEGEND_LINE;
    box_col[k] = kFirstFill + (col - kFirstColour);
    line_col[k] = sym_col[k] = col;
    line_sty[k] = s.dashed ? 3 : 1;
    line_width[k] = s.width;
    texts[k] = esc(s.label);
    text_ptr[k] = texts[k].c_str();
  }
  PLINT pos = PL_POSITION_INSIDE | PL_POSITION_VIEWPORT;
  switch (p.legend) {
    case Panel::Legend::kTopLeft:
      pos |= PL_POSITION_TOP | PL_POSITION_LEFT;
      break;
    case Panel::Legend::kBottomRight:
      pos |= PL_POSITION_BOTTOM | PL_POSITION_RIGHT;
      break;
    case Panel::Legend::kBottomLeft:
      pos |= PL_POSITION_BOTTOM | PL_POSITION_LEFT;
      break;
    default:
      pos |= PL_POSITION_TOP | PL_POSITION_RIGHT;
      break;
  }
  PLFLT w = 0, h = 0;
  pllegend(&w, &h, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX, pos, 0.02, 0.03, 0.07, 0, 1, 1, 0, 0, n, opt.data(),
           0.8, 0.85, 1.8, 0.0, text_col.data(), text_ptr.data(), box_col.data(), box_pat.data(), box_scale.data(),
           box_width.data(), line_col.data(), line_sty.data(), line_width.data(), sym_col.data(), sym_scale.data(),
           sym_num.data(), sym_ptr.data());
}

void draw_heat(const HeatMap& h, const Panel& p, double zlo, double zhi) {
  // plimagefr wants idata[x][y]; blank cells sit below the plotted range.
  std::vector<PLFLT> data(static_cast<size_t>(h.nx) * h.ny);
  std::vector<PLFLT*> cols(h.nx);
  const double blank = zlo - 1.0 - std::abs(zhi - zlo);
  for (int i = 0; i < h.nx; ++i) {
    cols[i] = data.data() + static_cast<size_t>(i) * h.ny;
    for (int j = 0; j < h.ny; ++j) {
      const double v = h.values[static_cast<size_t>(j) * h.nx + i];
      cols[i][j] = std::isfinite(v) ? std::clamp(v, zlo, zhi) : blank;
    }
  }
  plimagefr(cols.data(), h.nx, h.ny, tr(h.x_lo, p.x_log), tr(h.x_hi, p.x_log), tr(h.y_lo, p.y_log), tr(h.y_hi, p.y_log),
            zlo, zhi, zlo, zhi, nullptr, nullptr);
}

struct Layout {
  double char_x, char_y;  // one character height as a fraction of page width / height
};

/// Space around a panel's plot area, in character heights: left, right, bottom, top.
struct Margins {
  double left = 0, right = 0, bottom = 0, top = 0;
};

Margins margins(const Panel& p) {
  Margins m;
  if (!p.visible) return m;
  if (p.picture) {
    m.top = p.title.empty() ? 0.3 : 2.2;
    m.left = m.right = m.bottom = 0.3;
    return m;
  }
  size_t longest_category = 0;
  for (const auto& c : p.y_categories) longest_category = std::max(longest_category, c.size());
  m.left = !p.y_categories.empty() ? 2.0 + 0.62 * static_cast<double>(longest_category)
                                   : (p.y_label.empty() ? 4.5 : 6.8) - (p.y_numbers ? 0.0 : 3.0);
  m.right = p.x_numbers ? 2.2 : 1.0;  // keeps the last tick value clear of the next panel's first
  m.bottom = (p.x_label.empty() ? 2.5 : 4.4) - (p.x_numbers ? 0.0 : 1.8);
  m.top = p.title.empty() ? 0.8 : 2.2;
  return m;
}

void draw_panel(const Panel& p, double cx0, double cx1, double cy0, double cy1, const Margins& m, const Layout& L,
                double zlo, double zhi) {
  const double vx0 = cx0 + m.left * L.char_x, vx1 = cx1 - m.right * L.char_x;
  const double vy0 = cy0 + m.bottom * L.char_y, vy1 = cy1 - m.top * L.char_y;
  if (!(vx1 > vx0 && vy1 > vy0)) usage_error("viz::save", "the figure is too small for its panels and text");
  if (p.picture) {
    // square pixels: the largest viewport of the picture's aspect inside the cell
    const auto& pic = *p.picture;
    PLFLT xmin, xmax, ymin, ymax;
    plgspa(&xmin, &xmax, &ymin, &ymax);
    const double cw_mm = (vx1 - vx0) * (xmax - xmin), ch_mm = (vy1 - vy0) * (ymax - ymin);
    const double s = std::min(cw_mm / pic.width, ch_mm / pic.height);
    const double w = s * pic.width / (xmax - xmin), h = s * pic.height / (ymax - ymin);
    const double x0 = 0.5 * (vx0 + vx1 - w), y0 = 0.5 * (vy0 + vy1 - h);
    plvpor(x0, x0 + w, y0, y0 + h);
    plwind(0, pic.width, 0, pic.height);
    for (int y = 0; y < pic.height; ++y)
      for (int x = 0; x < pic.width; ++x) {
        const unsigned char* c = &pic.rgb[(static_cast<size_t>(y) * pic.width + x) * 3];
        if (c[0] == 255 && c[1] == 255 && c[2] == 255) continue;  // the background already
        plscol0a(kScratch, c[0], c[1], c[2], 1.0);
        plcol0(kScratch);
        const PLFLT yt = pic.height - y;
        PLFLT bx[4] = {static_cast<PLFLT>(x), x + 1.0, x + 1.0, static_cast<PLFLT>(x)},
              by[4] = {yt - 1.0, yt - 1.0, yt, yt};
        plfill(4, bx, by);
      }
    plcol0(1);
    if (!p.title.empty()) plmtex("t", 0.8, 0.5, 0.5, esc(p.title).c_str());
    return;
  }
  plvpor(vx0, vx1, vy0, vy1);

  Range rx, ry;
  bool from_zero = false;
  data_range(p, rx, ry, from_zero);
  const bool bars =
      std::any_of(p.series.begin(), p.series.end(), [](const Series& s) { return s.style == Series::Style::kBarsH; });
  const auto xl = limits(p.x_range, rx, p.x_log, bars && rx.lo >= 0, !p.heat);
  auto yl = limits(p.y_range, ry, p.y_log, from_zero, !p.heat);
  if (!p.y_categories.empty() && !std::isfinite(p.y_range[0]))  // category 0 at the top
    yl = {static_cast<double>(p.y_categories.size()) - 0.4, -0.6};
  plwind(xl[0], xl[1], yl[0], yl[1]);

  if (p.heat) draw_heat(*p.heat, p, zlo, zhi);
  if (std::isfinite(p.zero_line)) {
    plcol0(kLightGrey);
    pllsty(2);
    PLFLT zx[2] = {tr(p.zero_line, p.x_log), tr(p.zero_line, p.x_log)}, zy[2] = {yl[0], yl[1]};
    plline(2, zx, zy);
    pllsty(1);
  }
  for (size_t i = 0; i < p.series.size(); ++i) draw_series(p.series[i], i, p);
  for (const auto& l : p.labels) {
    plcol0(l.colour == Colour::kBlack ? 1 : colour_index(l.colour, 0));
    plptex(tr(l.x, p.x_log), tr(l.y, p.y_log), 1.0, 0.0, l.justify, esc(l.text).c_str());
  }

  plcol0(1);
  plwidth(1.0);
  std::string xo = "bcst", yo = "bcstv";
  if (p.x_numbers) xo += "n";
  if (p.y_numbers && p.y_categories.empty()) yo += "n";
  if (p.x_log) xo += "l";
  if (p.y_log) yo += "l";
  if (!p.y_categories.empty()) yo = "bc";
  plbox(xo.c_str(), p.x_tick, 0, yo.c_str(), p.y_tick, 0);
  for (size_t i = 0; i < p.y_categories.size(); ++i) {
    const double pos = (static_cast<double>(i) - yl[0]) / (yl[1] - yl[0]);  // reversed axis: works as is
    plmtex("lv", 0.6, pos, 1.0, esc(p.y_categories[i]).c_str());
  }
  if (!p.x_label.empty()) plmtex("b", p.x_numbers ? 3.0 : 1.2, 0.5, 0.5, esc(p.x_label).c_str());
  if (!p.y_label.empty()) plmtex("l", p.y_numbers ? 5.0 : 1.2, 0.5, 0.5, esc(p.y_label).c_str());
  if (!p.title.empty()) plmtex("t", 0.8, 0.5, 0.5, esc(p.title).c_str());
  draw_legend(p);
}

const char* device(Format f) {
  switch (f) {
    case Format::kPdf:
      return "pdfcairo";
    case Format::kSvg:
      return "svgcairo";
    default:
      return "pngcairo";
  }
}

std::mutex g_mutex;

}  // namespace

Format parse_format(const std::string& value, const std::string& option) {
  if (value == "png") return Format::kPng;
  if (value == "pdf") return Format::kPdf;
  if (value == "svg") return Format::kSvg;
  usage_error(option, "'" + value + "' is not a figure format (expected png, pdf or svg)");
}

const char* extension(Format f) {
  switch (f) {
    case Format::kPdf:
      return "pdf";
    case Format::kSvg:
      return "svg";
    default:
      return "png";
  }
}

std::array<double, 2> axis_limits(const std::array<double, 2>& given, double data_lo, double data_hi, bool log) {
  Range r;
  r.add(data_lo, log);
  r.add(data_hi, log);
  return limits(given, r, log, false, true);
}

std::string with_extension(const std::string& stem, Format fmt) { return stem + "." + extension(fmt); }

Panel& Figure::panel() {
  panels.emplace_back();
  rows = std::max(rows, static_cast<int>((panels.size() + cols - 1) / cols));
  return panels.back();
}

Series histogram(const std::vector<double>& values, double lo, double hi, int bins, const std::string& label,
                 int64_t* dropped) {
  if (!(hi > lo) || bins < 1) usage_error("viz::histogram", "needs hi > lo and bins >= 1");
  Series s;
  s.label = label;
  s.style = Series::Style::kStep;
  s.y.assign(bins, 0.0);
  s.x.resize(bins + 1);
  const double w = (hi - lo) / bins;
  for (int i = 0; i <= bins; ++i) s.x[i] = lo + w * i;
  int64_t out = 0;
  for (double v : values) {
    if (!(v >= lo && v < hi)) {
      ++out;
      continue;
    }
    s.y[std::min(bins - 1, static_cast<int>((v - lo) / w))] += 1.0;
  }
  const double n = static_cast<double>(values.size());
  if (n > 0)
    for (auto& c : s.y) c /= n * w;
  if (dropped) *dropped = out;
  return s;
}

HeatMap histogram2d(const std::vector<double>& x, const std::vector<double>& y, int bins, double x_lo, double x_hi,
                    double y_lo, double y_hi) {
  if (x.size() != y.size()) usage_error("viz::histogram2d", "x and y must have the same length");
  if (!(x_hi > x_lo) || !(y_hi > y_lo) || bins < 1) usage_error("viz::histogram2d", "needs hi > lo and bins >= 1");
  HeatMap h;
  h.nx = h.ny = bins;
  h.x_lo = x_lo, h.x_hi = x_hi, h.y_lo = y_lo, h.y_hi = y_hi;
  h.values.assign(static_cast<size_t>(bins) * bins, 0.0);
  for (size_t k = 0; k < x.size(); ++k) {
    if (!(x[k] >= x_lo && x[k] <= x_hi && y[k] >= y_lo && y[k] <= y_hi)) continue;
    const int i = std::min(bins - 1, static_cast<int>((x[k] - x_lo) / (x_hi - x_lo) * bins));
    const int j = std::min(bins - 1, static_cast<int>((y[k] - y_lo) / (y_hi - y_lo) * bins));
    h.values[static_cast<size_t>(j) * bins + i] += 1.0;
  }
  const double top = *std::max_element(h.values.begin(), h.values.end());
  for (auto& v : h.values) v = v > 0 ? v / top : std::nan("");
  return h;
}

double nice_step(double range, double n) {
  const double raw = range / n, p = std::pow(10.0, std::floor(std::log10(raw)));
  double best = p;
  for (double f : {2.0, 5.0, 10.0})
    if (std::abs(std::log(f * p / raw)) < std::abs(std::log(best / raw))) best = f * p;
  return best;
}

Figure corner(const std::vector<std::vector<double>>& columns, const std::vector<CornerAxis>& axes,
              const std::string& title, int bins) {
  const int d = static_cast<int>(columns.size());
  if (d < 1 || axes.size() != columns.size()) usage_error("viz::corner", "needs one axis per column");
  Figure f;
  f.title = title;
  f.rows = f.cols = d;
  f.width_px = f.height_px = std::max(500, std::min(2400, 260 * d + 120));
  f.colour_bar_label = "density / its maximum";
  f.colour_range = {0.0, 1.0};
  f.text_scale = d >= 3 ? 0.8 : 1.0;
  // Wide enough for the title (~12 px per character at text scale 1, measured on the PNGs):
  // "sigw: scalar-induced GWs, delta-peaked curvature spectrum" was cut off at 640 px.
  const int title_px = static_cast<int>(12.0 * f.text_scale * static_cast<double>(title.size())) + 100;
  f.width_px = std::min(2400, std::max(f.width_px, title_px));
  for (int r = 0; r < d; ++r) {
    for (int c = 0; c < d; ++c) {
      Panel& p = f.panel();
      if (c > r) {
        p.visible = false;
        continue;
      }
      p.legend = Panel::Legend::kNone;
      p.x_range = {axes[c].lo, axes[c].hi};
      p.x_tick = nice_step(axes[c].hi - axes[c].lo, 3.0);
      p.x_numbers = r == d - 1;
      if (r == d - 1) p.x_label = axes[c].name;
      if (c == r) {
        p.series.push_back(histogram(columns[c], axes[c].lo, axes[c].hi, bins, ""));
        p.series.back().colour = Colour::kBlack;
        p.y_numbers = false;
        if (r == 0 && d == 1) p.y_label = "density";
      } else {
        p.heat = histogram2d(columns[c], columns[r], bins, axes[c].lo, axes[c].hi, axes[r].lo, axes[r].hi);
        p.y_range = {axes[r].lo, axes[r].hi};
        p.y_tick = nice_step(axes[r].hi - axes[r].lo, 3.0);
        p.y_numbers = c == 0;
        if (c == 0) p.y_label = axes[r].name;
      }
    }
  }
  return f;
}

void save(const Figure& fig, const std::string& path, Format fmt) {
  if (fig.panels.empty()) usage_error("viz::save", "a figure needs at least one panel");
  if (fig.rows < 1 || fig.cols < 1 || fig.panels.size() > static_cast<size_t>(fig.rows) * fig.cols)
    usage_error("viz::save", "the panels do not fit the figure's rows x cols grid");
  if (fig.width_px < 100 || fig.height_px < 100 || fig.dpi < 10) usage_error("viz::save", "figure size too small");
  bool any_heat = false;
  std::array<double, 2> z{std::isfinite(fig.colour_range[0]) ? fig.colour_range[0] : HUGE_VAL,
                          std::isfinite(fig.colour_range[1]) ? fig.colour_range[1] : -HUGE_VAL};
  for (const auto& p : fig.panels) {
    for (const auto& s : p.series) check_series(s);
    if (p.picture && p.picture->rgb.size() != static_cast<size_t>(p.picture->width) * p.picture->height * 3)
      usage_error("viz::save", "a picture's pixels do not match width * height * 3");
    if (p.picture && (p.picture->width < 1 || p.picture->height < 1)) usage_error("viz::save", "an empty picture");
    if (!p.heat) continue;
    any_heat = true;
    const auto& h = *p.heat;
    if (h.nx < 1 || h.ny < 1 || h.values.size() != static_cast<size_t>(h.nx) * h.ny)
      usage_error("viz::save", "a heat map's values do not match nx * ny");
    for (double v : h.values) {
      if (!std::isfinite(v)) continue;
      if (!std::isfinite(fig.colour_range[0])) z[0] = std::min(z[0], v);
      if (!std::isfinite(fig.colour_range[1])) z[1] = std::max(z[1], v);
    }
  }
  if (any_heat && fig.colour_bar_label.empty())
    usage_error("viz::save", "a figure with heat maps needs colour_bar_label");
  if (any_heat && !(z[1] > z[0])) z = {std::isfinite(z[0]) ? z[0] : 0.0, (std::isfinite(z[0]) ? z[0] : 0.0) + 1.0};

  const fs::path target(path);
  const fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    runtime_error(path, "cannot be written: directory " + dir.string() + " does not exist");
  const std::string tmp = path + ".partial";
  {
    std::ofstream probe(tmp, std::ios::binary);
    if (!probe) runtime_error(path, "cannot be written (permission denied?)");
  }

  std::lock_guard<std::mutex> lock(g_mutex);
  PLINT stream = 0;
  plmkstrm(&stream);
  if (stream < 0) runtime_error(path, "PLplot has no free stream");
  try {
    plsdev(device(fmt));
    plsfnam(tmp.c_str());
    // pixels for PNG; PDF and SVG get the same physical size (points at 72 per inch)
    if (fmt == Format::kPng) {
      plspage(fig.dpi, fig.dpi, fig.width_px, fig.height_px, 0, 0);
    } else {
      plspage(72, 72, fig.width_px * 72 / fig.dpi, fig.height_px * 72 / fig.dpi, 0, 0);
    }
    plscolbg(255, 255, 255);
    // pictures: no anti-aliasing, or seams show between the pixel squares
    if (std::any_of(fig.panels.begin(), fig.panels.end(), [](const Panel& p) { return p.picture.has_value(); }))
      plsetopt("drvopt", "graphics_anti_aliasing=1");
    plinit();
    set_palette();
    // tick values written out (0.02, 0.04, ...): PLplot's default moves a common factor to an
    // "(x10^-2)" label at the axis end, which collides with titles
    plsxax(8, 0);
    plsyax(8, 0);
    pladv(0);
    plschr(0.0, fig.text_scale);
    PLFLT xmin, xmax, ymin, ymax;
    plgspa(&xmin, &xmax, &ymin, &ymax);  // subpage in mm
    PLFLT def_ht, ht;
    plgchr(&def_ht, &ht);
    const Layout L{ht / (xmax - xmin), ht / (ymax - ymin)};

    // The caption, wrapped at spaces into lines that fit the page width (a character of the
    // caption's size is taken as 0.75 of its height wide, DejaVu Sans' average with margin).
    std::vector<std::string> caption_lines;
    if (!fig.caption.empty()) {
      const auto per_line = static_cast<size_t>(std::max(20.0, 0.96 / (0.75 * 0.85 * L.char_x)));
      std::istringstream words(fig.caption);
      std::string w, line;
      while (words >> w) {
        if (!line.empty() && line.size() + 1 + w.size() > per_line) {
          caption_lines.push_back(line);
          line.clear();
        }
        line += (line.empty() ? "" : " ") + w;
      }
      if (!line.empty()) caption_lines.push_back(line);
    }
    const double caption_step = 1.35 * 0.85 * L.char_y;  // baseline to baseline
    const double top = fig.title.empty() ? 0.01 : 2.6 * L.char_y;
    const double bottom = caption_lines.empty()
                              ? 0.0
                              : 2.0 * L.char_y + static_cast<double>(caption_lines.size() - 1) * caption_step;
    const double right = any_heat ? 8.5 * L.char_x : 0.0;
    const double gx0 = 0.005, gx1 = 1.0 - right - 0.005, gy0 = bottom, gy1 = 1.0 - top;
    const double cw = (gx1 - gx0) / fig.cols, ch = (gy1 - gy0) / fig.rows;
    // plot areas line up: one left/right margin per column, one bottom/top margin per row
    std::vector<Margins> col_m(fig.cols), row_m(fig.rows);
    for (size_t k = 0; k < fig.panels.size(); ++k) {
      const Margins m = margins(fig.panels[k]);
      const int r = static_cast<int>(k) / fig.cols, c = static_cast<int>(k) % fig.cols;
      col_m[c].left = std::max(col_m[c].left, m.left), col_m[c].right = std::max(col_m[c].right, m.right);
      row_m[r].bottom = std::max(row_m[r].bottom, m.bottom), row_m[r].top = std::max(row_m[r].top, m.top);
    }
    // and equal plot widths: every column gets the widest left and right margin
    double left = 0, right_m = 0;
    for (const auto& m : col_m) left = std::max(left, m.left), right_m = std::max(right_m, m.right);
    for (auto& m : col_m) m.left = left, m.right = right_m;
    for (size_t k = 0; k < fig.panels.size(); ++k) {
      const Panel& p = fig.panels[k];
      if (!p.visible) continue;
      const int r = static_cast<int>(k) / fig.cols, c = static_cast<int>(k) % fig.cols;
      const Margins m{col_m[c].left, col_m[c].right, row_m[r].bottom, row_m[r].top};
      draw_panel(p, gx0 + c * cw, gx0 + (c + 1) * cw, gy1 - (r + 1) * ch, gy1 - r * ch, m, L, z[0], z[1]);
    }

    plvpor(0.0, 1.0, 0.0, 1.0);
    plwind(0.0, 1.0, 0.0, 1.0);
    plcol0(1);
    if (!fig.title.empty()) {
      plschr(0.0, 1.25 * fig.text_scale);
      plptex(0.5, 1.0 - 1.6 * L.char_y, 1.0, 0.0, 0.5, esc(fig.title).c_str());
      plschr(0.0, fig.text_scale);
    }
    if (!caption_lines.empty()) {
      plschr(0.0, 0.85 * fig.text_scale);
      const size_t n = caption_lines.size();
      for (size_t i = 0; i < n; ++i)
        plptex(0.5, 0.7 * L.char_y + static_cast<double>(n - 1 - i) * caption_step, 1.0, 0.0, 0.5,
               esc(caption_lines[i]).c_str());
      plschr(0.0, fig.text_scale);
    }
    if (any_heat) {
      // one colour bar for all heat maps, right of the grid, as tall as the plot areas
      plvpor(gx1 + 1.0 * L.char_x, gx1 + 2.2 * L.char_x, gy0 + 4.4 * L.char_y, gy1 - 2.2 * L.char_y);
      plwind(0.0, 1.0, 0.0, 1.0);
      PLFLT w = 0, h = 0;
      const PLINT label_opt = PL_COLORBAR_LABEL_RIGHT;
      const std::string label = esc(fig.colour_bar_label);
      const char* labels[1] = {label.c_str()};
      const char* axis_opts[1] = {"bcvtm"};
      PLFLT ticks[1] = {0.0};
      PLINT sub_ticks[1] = {0};
      PLINT n_values[1] = {2};
      PLFLT vals[2] = {z[0], z[1]};
      const PLFLT* values[1] = {vals};
      plcolorbar(&w, &h, PL_COLORBAR_IMAGE | PL_COLORBAR_ORIENT_TOP,
                 PL_POSITION_LEFT | PL_POSITION_INSIDE | PL_POSITION_VIEWPORT, 0.0, 0.0, 1.0, 1.0, 0, 1, 1, 0.0, 0.0, 0,
                 0.0, 1, &label_opt, labels, 1, axis_opts, ticks, sub_ticks, n_values, values);
    }
    plend1();
  } catch (...) {
    plend1();
    std::remove(tmp.c_str());
    throw;
  }
  std::error_code rec;
  if (fs::file_size(tmp, rec) == 0 || rec) {
    std::remove(tmp.c_str());
    runtime_error(path, "PLplot wrote nothing (is plplot-driver-cairo installed?)");
  }
  fs::rename(tmp, target, rec);
  if (rec) {
    std::remove(tmp.c_str());
    runtime_error(path, "cannot be written: " + rec.message());
  }
}

}  // namespace nfkit::viz
