// Evidence of the 22-parameter simulated pulsar-timing array (10 pulsars, red noise each, an
// uncorrelated common process; physics/pta_gp.h) with the sampler and flow settings given on
// the command line; prints per-parameter split R-hat, both estimators and the time.
//
//   build/bench/pta_gp_bench [ensemble|blocks|tempered|hmc] [walkers] [steps] [burn-in] [train-steps]
//                            [unconstrained|box] [white-noise-s] [temperatures] [max-temperature]
// blocks: ensemble with block moves, one group per pulsar's (log10 A, gamma) and one for the
// common process; tempered: parallel-tempered ensemble (joint stretch moves in every rung).
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "nfkit/core/runtime.h"
#include "nfkit/inference/model_comparison.h"
#include "nfkit/physics/pta_gp.h"

int main(int argc, char** argv) {
  using namespace nfkit;
  set_threads(0);
  const std::string kind = argc > 1 ? argv[1] : "ensemble";
  auto arg = [&](int i, int64_t d) { return argc > i ? std::stoll(argv[i]) : d; };
  PTASimulation ps;
  if (argc > 7) ps.sigma = std::stod(argv[7]);
  auto sim = simulate_pta(ps);
  PTALikelihood like(sim.pulsars, 5, false);
  Model m;
  for (const auto& p : sim.pulsars) m.add(p.name + "_log10_A", uniform_prior(-20, -11)).add(p.name + "_gamma", uniform_prior(0, 7));
  m.add("gw_log10_A", uniform_prior(-18, -12)).add("gw_gamma", uniform_prior(0, 7));
  m.set_log_likelihood([&like](const torch::Tensor& th) { return like.log_likelihood(th); });
  EvidenceRunOptions o;
  o.sampler_kind = kind == "blocks" ? "ensemble" : kind;
  if (kind == "blocks")
    for (int64_t g = 0; g < 11; ++g) o.sampler.blocks.push_back({2 * g, 2 * g + 1});
  if (argc > 8) o.tempered.temperatures = std::stoll(argv[8]);
  if (argc > 9) o.tempered.max_temperature = std::stod(argv[9]);
  o.unconstrained = argc > 6 ? std::string(argv[6]) == "unconstrained" : true;
  o.walkers = arg(2, 128);
  o.sampler.steps = arg(3, 3000);
  o.sampler.burn_in = arg(4, 3000);
  o.hmc.steps = o.sampler.steps;
  o.hmc.warmup = o.sampler.burn_in;
  o.harmonic.flow.layers = 6;
  o.harmonic.flow.hidden = 128;
  o.harmonic.training.steps(arg(5, 3000));
  o.seed = 29;
  o.quiet = false;
  auto r = estimate_evidence(m, o, "pta22");
  std::printf("truth:");
  for (int64_t k = 0; k < 22; ++k) std::printf(" %.2f", sim.truth[k].item<double>());
  std::printf("\nrhat: ");
  for (double v : r.diagnostics.rhat) std::printf(" %.2f", v);
  auto mean = r.sampling.chains.samples.reshape({-1, 22}).mean(0);
  std::printf("\nmean: ");
  for (int64_t k = 0; k < 22; ++k) std::printf(" %.2f", mean[k].item<double>());
  auto ys = r.sampling.chains.samples.reshape({-1, 22});
  std::printf("\nmin:   ");
  for (int64_t k = 0; k < 22; ++k) std::printf(" %.2f", ys.select(1, k).min().item<double>());
  if (r.tempering.swap_acceptance.defined()) {
    std::printf("\nswap acceptance:");
    for (int64_t k = 0; k < r.tempering.swap_acceptance.size(0); ++k)
      std::printf(" %.2f", r.tempering.swap_acceptance[k].item<double>());
  }
  std::printf("\nstep %.4g\nharmonic %.4f +- %.4f  importance %.4f +- %.4f (ESS %.4f)  acceptance %.3f  reset %lld  %.1f s\n",
              r.sampling.step_size, r.harmonic.estimate.ln_z, r.harmonic.estimate.ln_z_error, r.importance.ln_z, r.importance.ln_z_error,
              r.importance.ess_fraction, r.sampling.acceptance.mean().item<double>(),
              static_cast<long long>(r.sampling.reset_walkers), r.seconds);
  for (const auto& w : r.warnings) std::printf("warning: %s\n", w.c_str());
  return 0;
}
