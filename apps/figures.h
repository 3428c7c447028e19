#pragma once
// The figures of the commands, drawn by nfkit::viz (PLplot). Each function builds one figure
// kind from the command's results and saves it as `path` in the format the global option
// --figure-format chose; the returned path is what reports and JSON name.
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "nfkit/viz/figure.h"

namespace nfkit::cli {

/// A float64 copy of a tensor's values (any shape, flattened).
std::vector<double> to_vector(const torch::Tensor& t);

/// `stem` + "." + the format's extension, e.g. figure_path("runs/ala2/energy", fmt).
std::string figure_path(const std::string& stem, viz::Format fmt);

/// Ramachandran plots of alanine dipeptide: MD, BG raw and BG reweighted panels (phi, psi in
/// degrees), a shared log-density colour bar (ln of the density over its maximum, floor -8),
/// the basin boundaries of nfkit::basin_index drawn and named. phi_psi in radians [B, 2];
/// log_w [B] weights the reweighted panel.
void ramachandran_figure(const std::string& path, viz::Format fmt, const torch::Tensor& md, const torch::Tensor& bg,
                         const torch::Tensor& log_w);

/// The reference, the raw samples and the resampled samples in the two slowest TICA
/// components [*, 2] of the reference (MD, BG raw, BG reweighted panels), ln density over its
/// maximum (floor -8) on the reference's 0.5-99.5% range widened by a quarter each way; lag and
/// the components' autocorrelations in the caption.
void tica_figure(const std::string& path, viz::Format fmt, const torch::Tensor& md, const torch::Tensor& raw,
                 const torch::Tensor& resampled, int64_t lag, const std::vector<double>& autocorrelations);

/// Reduced-energy histograms (MD, BG raw, BG reweighted) on [lo, hi]; the caption states how
/// many raw samples lie above hi (the raw tail's cut).
void energy_figure(const std::string& path, viz::Format fmt, const torch::Tensor& u_md, const torch::Tensor& u_raw,
                   const torch::Tensor& u_reweighted, double lo, double hi);

/// Histogram of the normalised log importance weights, the Kish ESS in the title.
void log_weight_figure(const std::string& path, viz::Format fmt, const torch::Tensor& log_w, double ess_fraction,
                       const std::string& note);

/// Density of a 2-D log-density function on an n x n grid over [-L, L]^2, row 0 = top (y = L).
torch::Tensor density_grid(const std::function<torch::Tensor(const torch::Tensor&)>& log_prob, double L, int64_t n);

/// Two 2-D densities side by side on [-L, L]^2 (flow demo): grids [n, n] with row 0 at y = L.
void density_figure(const std::string& path, viz::Format fmt, const std::vector<torch::Tensor>& grids,
                    const std::vector<std::string>& titles, double L);

/// ln Bayes factors with their errors, one bar per model.
void bayes_factor_figure(const std::string& path, viz::Format fmt, const std::string& title,
                         const std::vector<std::string>& models, const std::vector<double>& ln_bf,
                         const std::vector<double>& errors);

/// Corner plot of posterior samples [N, D] of a PTA model; axes span the prior's support where
/// it is finite (the samples' range elsewhere), names carry their units.
void pta_corner_figure(const std::string& path, viz::Format fmt, const std::string& title, const torch::Tensor& samples,
                       const std::vector<std::string>& names, const std::vector<std::pair<double, double>>& support);
/// A PTA parameter's axis label with its unit, e.g. "log10_fbend" -> "log10 f_bend (Hz)".
std::string pta_parameter_label(const std::string& name);

}  // namespace nfkit::cli
namespace nfkit {
struct OpfEvalReport;
struct OpfTrainReport;
struct TrainReport;
}  // namespace nfkit
namespace nfkit::cli {

/// Mean |cost gap| against Ipopt per load level for the GNN, GNN + CFM (before projection), the
/// returned GNN + CFM + projection, and the GNN projected without the refinement.
void opf_gap_figure(const std::string& path, viz::Format fmt, const OpfEvalReport& rep, const std::string& title);

/// opf train's curves: validation RMSE of the dispatch (unit coordinates) per epoch, GNN stage
/// then CFM stage (its epochs counted after the GNN's).
void opf_training_figure(const std::string& path, viz::Format fmt, const OpfTrainReport& rep, const std::string& title);

/// One training curve per trainer: loss against step (training), and validation where given.
struct TrainingCurve {
  std::string title, loss_label;  ///< e.g. "flow train: nsf on rings", "NLL (nats)"
  /// When validation measures something else than the loss (FAB: log(1/ESS)), its axis label:
  /// validation then gets a panel of its own beside the loss's.
  std::string val_label;
  std::vector<double> step, loss;
  std::vector<double> val_step, val_loss;
};
void training_curve_figure(const std::string& path, viz::Format fmt, const TrainingCurve& c);
/// The Trainer's curve (mean training loss per validation interval, and validation loss).
TrainingCurve training_curve(const TrainReport& rep, const std::string& title, const std::string& loss_label);
/// Where a trainer writing the model `model_path` puts its training curve: the path without
/// ".h5", then ".training.<ext>", e.g. runs/ala2/model.training.png.
std::string training_figure_path(const std::string& model_path, viz::Format fmt);

}  // namespace nfkit::cli
