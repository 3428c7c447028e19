#include "nfkit/flows/sources.h"

#include <torch/torch.h>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"

namespace nfkit {

namespace {
void only_unit_temperature(const char* fn, double T) {
  if (T != 1.0) usage_error(fn, "a data source has no tempered form; only temperature 1 is defined");
}
}  // namespace

ToyDistribution::ToyDistribution(const std::string& spec)
    : Distribution(make_toy_density(spec)->dim(), 0), spec_(spec), density_(make_toy_density(spec)) {
  like_ = register_buffer("like", torch::zeros({1}));  // default dtype, like every module
}

void ToyDistribution::set_temperature(double T) { only_unit_temperature("ToyDistribution", T); }

json ToyDistribution::config() const { return {{"type", "toy_density"}, {"spec", spec_}, {"dim", dim()}}; }

torch::Tensor ToyDistribution::log_prob_impl(const torch::Tensor& x, const torch::Tensor&) {
  return density_->log_prob(x.to(torch::kCPU, torch::kFloat64)).to(x.options());
}

std::tuple<torch::Tensor, torch::Tensor> ToyDistribution::sample_impl(int64_t n, const torch::Tensor&) {
  const auto x = density_->sample(n);
  return {x.to(like_.options()), density_->log_prob(x).to(like_.options())};
}

torch::Tensor ToyDistribution::sample_only_impl(int64_t n, const torch::Tensor&) {
  return density_->sample(n).to(like_.options());
}

Empirical::Empirical(const torch::Tensor& rows) : Distribution(rows.size(1), 0) {
  check_dim("Empirical", "rows", rows, 2);
  check_positive_int("Empirical", "rows", rows.size(0));
  check_finite("Empirical", "rows", rows);
  rows_ = register_buffer("rows", rows.detach().clone());
}

void Empirical::set_temperature(double T) { only_unit_temperature("Empirical", T); }

json Empirical::config() const { return {{"type", "empirical"}, {"n", rows_.size(0)}, {"dim", dim()}}; }

torch::Tensor Empirical::log_prob_impl(const torch::Tensor&, const torch::Tensor&) {
  runtime_error("Empirical", "a source given by data rows has no density, so log-densities are not "
                             "defined (use the Normal base or a built-in density as the source)");
}

std::tuple<torch::Tensor, torch::Tensor> Empirical::sample_impl(int64_t n, const torch::Tensor& c) {
  return {sample_only_impl(n, c), torch::full({n}, NAN, rows_.options())};
}

torch::Tensor Empirical::sample_only_impl(int64_t n, const torch::Tensor&) {
  const auto idx = torch::randint(rows_.size(0), {n}, torch::TensorOptions().dtype(torch::kInt64));
  return rows_.index_select(0, idx.to(rows_.device()));
}

}  // namespace nfkit
