#pragma once
// Density images through libpng: panels side by side, each an [n, n] grid of density values
// (row 0 at the top), colour-mapped with viridis on one shared linear scale from 0 to the
// largest value, separated by a white gap. Written atomically (temporary name, rename).
#include <torch/types.h>

#include <string>
#include <vector>

namespace nfkit::cli {

void write_density_png(const std::string& path, const std::vector<torch::Tensor>& panels);
/// Normalised histograms of several samples on [lo, hi) with `bins` bins drawn as step lines
/// on one white canvas (colours in order: black, blue, orange, green, red).
void write_histogram_png(const std::string& path, const std::vector<torch::Tensor>& series,
                         double lo, double hi, int64_t bins = 60);
/// An RGB image [height][width][3] written atomically.
void write_rgb_png(const std::string& path, int64_t width, int64_t height,
                   const std::vector<unsigned char>& img);

/// Density of a 2-D log-density function on an n x n grid over [-L, L]^2, row 0 = top (y = L).
torch::Tensor density_grid(const std::function<torch::Tensor(const torch::Tensor&)>& log_prob,
                           double L, int64_t n);

}  // namespace nfkit::cli
