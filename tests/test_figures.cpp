// The figure layer (nfkit::viz over PLplot) and every figure kind the commands draw: rendered to
// PNG, PDF and SVG on small inputs, then the files are read back and checked (valid format,
// the size asked for, a plot area that is not blank, the colours of heat maps and series).
#include <png.h>
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include "figures.h"
#include "helpers.h"
#include "nfkit/core/files.h"
#include "nfkit/flows/trainer.h"
#include "nfkit/opf/pipeline.h"
#include "nfkit/viz/figure.h"

using namespace nfkit;
using nfkit::test::temp_path;

namespace {

struct Png {
  int w = 0, h = 0;
  std::vector<unsigned char> rgb;  // [h][w][3]
  const unsigned char* at(int x, int y) const { return &rgb[(static_cast<size_t>(y) * w + x) * 3]; }
};

Png read_png(const std::string& path) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  REQUIRE(png_image_begin_read_from_file(&img, path.c_str()) != 0);
  img.format = PNG_FORMAT_RGB;
  Png p;
  p.w = static_cast<int>(img.width), p.h = static_cast<int>(img.height);
  p.rgb.resize(PNG_IMAGE_SIZE(img));
  REQUIRE(png_image_finish_read(&img, nullptr, p.rgb.data(), 0, nullptr) != 0);
  return p;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Fraction of non-white pixels in the central [25%, 75%]^2 of the image.
double inked(const Png& p) {
  int64_t n = 0, ink = 0;
  for (int y = p.h / 4; y < 3 * p.h / 4; ++y)
    for (int x = p.w / 4; x < 3 * p.w / 4; ++x, ++n) {
      const auto* c = p.at(x, y);
      if (c[0] < 245 || c[1] < 245 || c[2] < 245) ++ink;
    }
  return static_cast<double>(ink) / static_cast<double>(n);
}

/// Pixels close (within 30 per channel) to an RGB colour, anywhere in the image.
int64_t count_colour(const Png& p, int r, int g, int b) {
  int64_t n = 0;
  for (int y = 0; y < p.h; ++y)
    for (int x = 0; x < p.w; ++x) {
      const auto* c = p.at(x, y);
      if (std::abs(c[0] - r) < 30 && std::abs(c[1] - g) < 30 && std::abs(c[2] - b) < 30) ++n;
    }
  return n;
}

/// The file is a PDF of the page size asked for (points) or an SVG of that size.
void check_vector(const std::string& path, viz::Format fmt, int w_pt, int h_pt) {
  const std::string s = slurp(path);
  REQUIRE(s.size() > 1000);
  if (fmt == viz::Format::kPdf) {
    CHECK(s.compare(0, 5, "%PDF-") == 0);
    CHECK(s.find("%%EOF") != std::string::npos);
    CHECK(s.find("/MediaBox [ 0 0 " + std::to_string(w_pt) + " " + std::to_string(h_pt) + " ]") != std::string::npos);
  } else {
    CHECK(s.compare(0, 5, "<?xml") == 0);
    CHECK(s.find("width=\"" + std::to_string(w_pt) + "pt\" height=\"" + std::to_string(h_pt) + "pt\"") !=
          std::string::npos);
    CHECK(s.find("</svg>") != std::string::npos);
  }
}

viz::Figure line_figure() {
  viz::Figure f;
  f.title = "two series";
  f.caption = "a caption with # and φ";
  viz::Panel& p = f.panel();
  p.x_label = "x (nm)";
  p.y_label = "y (kJ/mol)";
  viz::Series a, b;
  a.label = "sin";
  b.label = "cos";
  b.dashed = true;
  for (int i = 0; i <= 100; ++i) {
    a.x.push_back(0.1 * i), a.y.push_back(std::sin(0.1 * i));
    b.x.push_back(0.1 * i), b.y.push_back(std::cos(0.1 * i));
  }
  p.series = {a, b};
  return f;
}

}  // namespace

TEST_CASE("viz: a line figure in PNG, PDF and SVG has the size asked for and ink in its plot area", "[viz]") {
  const auto f = line_figure();
  const auto png = temp_path("lines.png"), pdf = temp_path("lines.pdf"), svg = temp_path("lines.svg");
  viz::save(f, png, viz::Format::kPng);
  viz::save(f, pdf, viz::Format::kPdf);
  viz::save(f, svg, viz::Format::kSvg);
  const Png p = read_png(png);
  CHECK(p.w == f.width_px);
  CHECK(p.h == f.height_px);
  const double ink = inked(p);
  CHECK(ink > 0.002);
  CHECK(ink < 0.5);
  // the series in tab10 blue and orange
  CHECK(count_colour(p, 31, 119, 180) > 200);
  CHECK(count_colour(p, 255, 127, 14) > 100);
  check_vector(pdf, viz::Format::kPdf, 720, 480);  // 1200 x 800 px at 120 dpi = 10 x 6.67 in
  check_vector(svg, viz::Format::kSvg, 720, 480);
  CHECK_FALSE(file_exists(png + ".partial"));
}

TEST_CASE("viz: heat maps share one viridis colour bar, bars, categories and a corner plot render", "[viz]") {
  viz::Figure f;
  f.cols = 2;
  f.colour_bar_label = "density";
  for (int k = 0; k < 2; ++k) {
    viz::Panel& p = f.panel();
    p.title = k ? "right" : "left";
    viz::HeatMap h;
    h.nx = 20, h.ny = 10;
    for (int j = 0; j < h.ny; ++j)
      for (int i = 0; i < h.nx; ++i) h.values.push_back(k ? i : (i < 5 ? NAN : j));
    p.heat = h;
  }
  const auto png = temp_path("heat.png");
  viz::save(f, png, viz::Format::kPng);
  const Png p = read_png(png);
  // viridis' ends: dark purple (68, 1, 84) and yellow (253, 231, 37), in the maps and the bar
  CHECK(count_colour(p, 68, 1, 84) > 1000);
  CHECK(count_colour(p, 253, 231, 37) > 300);
  const auto pdf = temp_path("heat.pdf");
  viz::save(f, pdf, viz::Format::kPdf);
  check_vector(pdf, viz::Format::kPdf, 720, 480);

  viz::Figure b;
  viz::Panel& q = b.panel();
  q.y_categories = {"first model", "second"};
  q.zero_line = 0;
  viz::Series s;
  s.style = viz::Series::Style::kBarsH;
  s.x = {1.5, -0.5};
  s.x_err = {0.2, 0.1};
  s.y = {0, 1};
  q.series.push_back(s);
  const auto bars = temp_path("bars.png");
  viz::save(b, bars, viz::Format::kPng);
  CHECK(inked(read_png(bars)) > 0.05);

  std::vector<std::vector<double>> cols(3);
  torch::manual_seed(1);
  const auto x = torch::randn({2000, 3}, torch::kFloat64);
  for (int k = 0; k < 3; ++k) cols[k] = nfkit::cli::to_vector(x.select(1, k));
  auto c = viz::corner(cols, {{"a (m)", -4, 4}, {"b (s)", -4, 4}, {"c", -4, 4}}, "corner");
  CHECK(c.rows == 3);
  CHECK(c.panels.size() == 9);
  CHECK_FALSE(c.panels[1].visible);  // upper triangle
  CHECK(c.panels[3].heat.has_value());
  const auto corner = temp_path("corner.png");
  viz::save(c, corner, viz::Format::kPng);
  CHECK(read_png(corner).w == c.width_px);
  // a long title widens the figure instead of running off its edges
  const std::string long_title = "sigw: scalar-induced GWs, delta-peaked curvature spectrum";
  std::vector<std::vector<double>> two(cols.begin(), cols.begin() + 2);
  const auto w = viz::corner(two, {{"a (m)", -4, 4}, {"b (s)", -4, 4}}, long_title);
  CHECK(w.width_px >= static_cast<int>(12 * long_title.size()));
  CHECK(viz::corner(two, {{"a (m)", -4, 4}, {"b (s)", -4, 4}}, "pl").width_px == 640);
}

TEST_CASE("viz: every log axis carries at least two labelled powers of ten", "[viz]") {
  const double nan = std::nan("");
  // a training curve from 0.011 to 0.1: widened to [10^-2, 10^-1] (was [0.0105, 0.104], one label)
  auto l = viz::axis_limits({nan, nan}, 0.011, 0.1, true);
  CHECK(l[0] == Approx(-2.0));
  CHECK(l[1] >= -1.0);
  // inside one decade: widened to both neighbouring powers of ten
  l = viz::axis_limits({nan, nan}, 0.3, 0.6, true);
  CHECK(l[0] == Approx(-1.0));
  CHECK(l[1] == Approx(0.0));
  // several decades: only the 4% padding
  l = viz::axis_limits({nan, nan}, 1e-4, 1.0, true);
  CHECK(l[0] == Approx(-4.16));
  CHECK(l[1] == Approx(0.16));
  // a given end is kept; the other is widened
  l = viz::axis_limits({0.2, nan}, 0.3, 0.6, true);
  CHECK(l[0] == Approx(std::log10(0.2)));
  CHECK(l[1] == Approx(0.0));
  // linear axes are only padded
  l = viz::axis_limits({nan, nan}, 0.0, 1.0, false);
  CHECK(l[0] == Approx(-0.04));
  CHECK(l[1] == Approx(1.04));
}

TEST_CASE("viz: histograms are normalised densities, 2-D histograms peak at 1", "[viz]") {
  std::vector<double> v;
  for (int i = 0; i < 1000; ++i) v.push_back((i + 0.5) / 1000.0 * 2.0 - 1.0);  // uniform on [-1, 1)
  v.push_back(5.0);                                                            // outside the range
  int64_t dropped = -1;
  const auto h = viz::histogram(v, -1.0, 1.0, 20, "u", &dropped);
  CHECK(dropped == 1);
  REQUIRE(h.x.size() == 21);
  double integral = 0;
  for (size_t i = 0; i < h.y.size(); ++i) integral += h.y[i] * (h.x[i + 1] - h.x[i]);
  CHECK(integral == Approx(1000.0 / 1001.0).epsilon(1e-12));  // the outlier keeps its share
  CHECK(h.y[3] == Approx(0.5 * 1000.0 / 1001.0));
  const auto m = viz::histogram2d({0.1, 0.1, 0.9}, {0.1, 0.1, 0.9}, 2, 0, 1, 0, 1);
  CHECK(m.values[0] == 1.0);
  CHECK(m.values[3] == 0.5);
  CHECK(std::isnan(m.values[1]));
}

TEST_CASE("viz: bad figures and unwritable paths fail with one line and leave no file", "[viz]") {
  viz::Figure f = line_figure();
  f.panels[0].series[0].y.pop_back();
  CHECK_THROWS_WITH(viz::save(f, temp_path("bad.png"), viz::Format::kPng),
                    Catch::Contains("series 'sin' has 101 x values, expected 100"));
  CHECK_FALSE(file_exists(temp_path("bad.png")));
  viz::Figure h;
  h.panel().heat = viz::HeatMap{{1, 2, 3, 4}, 2, 2};
  CHECK_THROWS_AS(viz::save(h, temp_path("h.png"), viz::Format::kPng), UsageError);  // no colour bar label
  const std::string missing = temp_path("no-such-dir") + "/x.png";
  CHECK_THROWS_WITH(viz::save(line_figure(), missing, viz::Format::kPng), Catch::Contains("does not exist"));
  CHECK_THROWS_AS(viz::parse_format("jpg"), UsageError);
  CHECK_THROWS_WITH(viz::parse_format("jpg"), Catch::Contains("--figure-format: 'jpg' is not a figure format"));
  CHECK(viz::parse_format("svg") == viz::Format::kSvg);
  auto r = nfkit::test::run_nfkit({"flow", "demo", "--figure-format", "jpg", "--out-dir", temp_path("demo")});
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::Contains("--figure-format"));
  CHECK_FALSE(file_exists(temp_path("demo") + "/model.h5"));
}

TEST_CASE("figures: every kind the commands draw renders to PNG and PDF", "[viz]") {
  using namespace nfkit::cli;
  torch::manual_seed(3);
  for (auto fmt : {viz::Format::kPng, viz::Format::kPdf}) {
    const std::string ext = viz::extension(fmt);
    std::vector<std::string> made;
    auto path = [&](const std::string& name) {
      made.push_back(temp_path(name + "." + ext));
      return made.back();
    };
    // Ramachandran: (phi, psi) in radians around the C7eq and alpha_R basins
    const auto md =
        torch::cat({torch::randn({500, 2}, torch::kFloat64) * 0.3 + torch::tensor({-1.4, 2.6}, torch::kFloat64),
                    torch::randn({300, 2}, torch::kFloat64) * 0.2 + torch::tensor({-1.4, -0.7}, torch::kFloat64)});
    const auto bg = md + 0.1 * torch::randn_like(md);
    const auto log_w = 0.5 * torch::randn({bg.size(0)}, torch::kFloat64);
    ramachandran_figure(path("rama"), fmt, md.clamp(-M_PI, M_PI - 1e-9), bg.clamp(-M_PI, M_PI - 1e-9), log_w);
    const auto u = torch::randn({800}, torch::kFloat64) * 5 - 40;
    energy_figure(path("energy"), fmt, u, torch::cat({u + 1, torch::full({3}, 1e9, torch::kFloat64)}), u, -60, -10);
    log_weight_figure(path("logw"), fmt, log_w, 0.8, "unclipped");
    tica_figure(path("tica"), fmt, md, bg, bg.flip(0), 100, {0.63, 0.04});
    density_figure(path("density"), fmt,
                   {torch::rand({32, 32}, torch::kFloat64), torch::rand({32, 32}, torch::kFloat64)}, {"truth", "flow"},
                   4.0);
    bayes_factor_figure(path("bf"), fmt, "ln BF", {"pl", "turnover", "strings"}, {0.0, 1.2, -0.4}, {0.0, 0.1, 0.2});
    pta_corner_figure(path("pta_corner"), fmt, "pl", torch::randn({1000, 2}, torch::kFloat64) * 0.3 + 3,
                      {"log10_A", "gamma"}, {{-18, -14}, {0, 7}});
    TrainReport rep;
    for (int s = 10; s <= 200; s += 10) rep.training.emplace_back(s, 5.0 / s), rep.validation.emplace_back(s, 5.5 / s);
    training_curve_figure(path("curve"), fmt, training_curve(rep, "flow train", "NLL (nats)"));
    OpfEvalReport opf;
    for (double l : {0.7, 1.0, 1.3}) {
      OpfLevelResult r;
      r.level = l, r.returned = 10, r.gap_gnn = 1.0, r.gap_cfm = 0.3, r.gap_final = 0.01 * l,
      r.gap_gnn_projected = 0.05;
      opf.levels.push_back(r);
    }
    opf.all.returned = opf.all.feasible = 30;
    opf_gap_figure(path("opf"), fmt, opf, "case30");
    viz::Figure grid;  // image sample grids: pixels as they are, a caption strip above
    viz::Picture pic;
    pic.width = 30, pic.height = 20;
    for (int i = 0; i < 600; ++i) pic.rgb.insert(pic.rgb.end(), {static_cast<unsigned char>(i % 200), 0, 0});
    grid.panel().picture = pic;
    grid.panels[0].title = "model.h5 · jacobi sampler · T = 1";
    viz::save(grid, path("grid"), fmt);
    for (const auto& m : made) {
      INFO(m);
      if (fmt == viz::Format::kPng) {
        const Png p = read_png(m);
        CHECK(p.w >= 500);
        CHECK(inked(p) > 0.001);
      } else {
        const std::string s = slurp(m);
        CHECK(s.compare(0, 5, "%PDF-") == 0);
        CHECK(s.size() > 2000);
      }
    }
  }
  CHECK(nfkit::cli::pta_parameter_label("log10_fbend") == "log10 f_bend (Hz)");
  CHECK(nfkit::cli::training_figure_path("runs/m.h5", viz::Format::kSvg) == "runs/m.training.svg");
}
