#pragma once
// Distributions made from data, used as the source (t = 0) of continuous flows whose source is
// a second data set rather than the Normal base (flow matching between two distributions).
//
//   ToyDistribution  a built-in density (flows/toy_densities.h) as a Distribution: exact
//                    log_prob, samples from the global generator; rebuilt from its name.
//   Empirical        the uniform distribution over stored rows (a buffer, kept in
//                    checkpoints): sampling draws rows with replacement; it has no density,
//                    so log_prob is a RuntimeError that says so.
// Both are unconditional and follow .to(dtype) like any module (ToyDistribution starts in the
// default dtype, Empirical in its rows' dtype); only temperature 1 is defined for them.
//
//   auto src = std::make_shared<nfkit::ToyDistribution>("8gaussians");
//   auto x0 = src->sample(512);
#include <memory>

#include "nfkit/flows/distribution.h"
#include "nfkit/flows/toy_densities.h"

namespace nfkit {

class ToyDistribution : public Distribution {
 public:
  explicit ToyDistribution(const std::string& spec);
  double temperature() const override { return 1.0; }
  void set_temperature(double T) override;
  json config() const override;
  torch::TensorOptions tensor_options() const override { return like_.options(); }
  const ToyDensity& density() const { return *density_; }

 protected:
  torch::Tensor log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  std::tuple<torch::Tensor, torch::Tensor> sample_impl(int64_t n, const torch::Tensor& context) override;
  torch::Tensor sample_only_impl(int64_t n, const torch::Tensor& context) override;

 private:
  std::string spec_;
  std::shared_ptr<ToyDensity> density_;
  torch::Tensor like_;  // buffer: dtype and device only
};

class Empirical : public Distribution {
 public:
  /// rows [N, D], N >= 1.
  explicit Empirical(const torch::Tensor& rows);
  double temperature() const override { return 1.0; }
  void set_temperature(double T) override;
  json config() const override;
  torch::TensorOptions tensor_options() const override { return rows_.options(); }
  const torch::Tensor& rows() const { return rows_; }

 protected:
  torch::Tensor log_prob_impl(const torch::Tensor& x, const torch::Tensor& context) override;
  std::tuple<torch::Tensor, torch::Tensor> sample_impl(int64_t n, const torch::Tensor& context) override;
  torch::Tensor sample_only_impl(int64_t n, const torch::Tensor& context) override;

 private:
  torch::Tensor rows_;
};

}  // namespace nfkit
