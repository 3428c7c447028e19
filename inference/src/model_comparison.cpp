#include "nfkit/inference/model_comparison.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <sstream>

#include "nfkit/core/checks.h"
#include "nfkit/core/runtime.h"

namespace nfkit {

ModelEvidence estimate_evidence(const Model& model, const EvidenceRunOptions& o, const std::string& name) {
  const char* fn = "estimate_evidence";
  if (!model.has_likelihood()) usage_error(fn, "model '" + name + "' has no likelihood");
  if (o.walkers < 8 || o.walkers % 2 != 0)
    usage_error("--walkers", std::to_string(o.walkers) + ", but must be even and at least 8");
  auto t0 = std::chrono::steady_clock::now();
  ModelEvidence r;
  r.name = name;
  torch::manual_seed(derive_seed(o.seed, 31, 0));
  auto init = initial_points(model, o.walkers);
  SupportMap map;
  if (o.unconstrained) map.bounds = model.support();
  LogDensityFn log_post_y = [&model, &map](const torch::Tensor& y) {
    auto [th, log_jac] = map.to_bounded(y);
    return model.log_posterior(th) + log_jac;
  };
  auto init_y = map.to_unbounded(init).first;
  if (o.sampler_kind == "ensemble") {
    EnsembleOptions so = o.sampler;
    so.seed = derive_seed(o.seed, 31, 1);
    so.quiet = o.quiet;
    r.sampling = sample_ensemble(log_post_y, init_y, so, model.names());
  } else if (o.sampler_kind == "hmc") {
    HMCOptions ho = o.hmc;
    ho.seed = derive_seed(o.seed, 31, 1);
    ho.quiet = o.quiet;
    r.sampling = sample_hmc(log_post_y, init_y, ho, model.names());
  } else if (o.sampler_kind == "tempered") {
    TemperedOptions to = o.tempered;
    to.ensemble = o.sampler;
    to.ensemble.seed = derive_seed(o.seed, 31, 1);
    to.ensemble.quiet = o.quiet;
    LogDensityFn log_prior_y = [&model, &map](const torch::Tensor& y) {
      auto [th, log_jac] = map.to_bounded(y);
      return model.log_prior(th) + log_jac;
    };
    LogDensityFn log_like_y = [&model, &map](const torch::Tensor& y) {
      return model.log_likelihood(map.to_bounded(y).first);
    };
    r.sampling = sample_tempered(log_prior_y, log_like_y, init_y, to, model.names(), &r.tempering);
  } else {
    usage_error("--sampler", "'" + o.sampler_kind + "', expected ensemble, tempered or hmc");
  }
  if (o.unconstrained) {
    // Back to θ with the θ-space log posterior (what the evidence estimators need).
    auto& ch = r.sampling.chains;
    const auto C = ch.chains(), S = ch.steps(), D = ch.dim();
    auto th = map.to_bounded(ch.samples.reshape({-1, D})).first;
    ch.ln_posterior = model.log_posterior(th).view({C, S});
    ch.samples = th.view({C, S, D});
  }
  r.diagnostics = diagnose(r.sampling.chains);
  HarmonicOptions ho = o.harmonic;
  ho.training.seed(derive_seed(o.seed, 31, 2));
  if (ho.bounds.empty()) ho.bounds = model.support();
  r.harmonic = learned_harmonic_mean(r.sampling.chains, ho);
  r.importance = importance_evidence(*r.harmonic.flow, model, o.importance_samples, derive_seed(o.seed, 31, 3), 8192,
                                     r.harmonic.support);
  r.agreement = compare_estimates(r.harmonic.estimate, r.importance);
  r.warnings = r.harmonic.estimate.warnings;
  std::ostringstream s;
  s.precision(3);
  if (!r.agreement.agree) {
    s << "harmonic mean and importance sampling disagree: ln z differs by " << r.agreement.difference
      << " (combined error " << r.agreement.sigma << ")";
    r.warnings.push_back(s.str());
  }
  if (r.diagnostics.max_rhat > 1.1) {
    s.str("");
    s << "chains have not converged: split R-hat " << r.diagnostics.max_rhat << " > 1.1 (sample longer)";
    r.warnings.push_back(s.str());
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

nlohmann::json ModelEvidence::to_json() const {
  return {{"name", name},
          {"ln_z", harmonic.estimate.ln_z},
          {"ln_z_error", harmonic.estimate.ln_z_error},
          {"harmonic", harmonic.estimate.to_json()},
          {"importance", importance.to_json()},
          {"agree", agreement.agree},
          {"difference", agreement.difference},
          {"chains", {{"walkers", sampling.chains.chains()},
                      {"steps", sampling.chains.steps()},
                      {"acceptance", sampling.acceptance.mean().item<double>()},
                      {"diagnostics", diagnostics.to_json(sampling.chains.names)}}},
          {"training", {{"best_val_nll", harmonic.training.best_val}, {"steps", harmonic.training.steps_done}}},
          {"warnings", warnings},
          {"seconds", seconds}};
}

BayesFactor ln_bayes_factor(const HarmonicEstimate& a, const HarmonicEstimate& b) {
  return {a.ln_z - b.ln_z, std::hypot(a.ln_z_error, b.ln_z_error)};
}

}  // namespace nfkit
