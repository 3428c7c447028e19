#pragma once
// Shared pieces of the `nfkit flow` commands.
#include <memory>

#include "cli.h"
#include "nfkit/core/error.h"
#include "data_source.h"
#include "nfkit/flows/distribution.h"
#include "nfkit/flows/ode.h"
#include "nfkit/flows/trainer.h"

namespace nfkit::cli {

/// Mean negative log-likelihood [nats/sample] and its standard error over x.
struct NllStats {
  double mean = 0, se = 0;
  int64_t n = 0;
};
NllStats nll_stats(Flow& flow, const torch::Tensor& x);

/// Options of `flow train` (and `flow demo`, which sets another default dataset). Options
/// left unset take the data-dependent values of default_fit_settings (flows/fit_settings.h).
po::options_description train_options(const std::string& default_data, bool require_out);

struct TrainOutcome {
  std::shared_ptr<Flow> flow;
  TrainReport report;
  DataSource data;
  NllStats val, test;  ///< test: fresh samples of a built-in density (n = 0 otherwise)
  double entropy = NAN;
};

/// Trains a flow as the options say (printing the settings it chose), resuming from
/// "<out>.ckpt" when present (unless --restart), with --refit retrains on all rows for the
/// selected length, writes the model to `out` and fills ctx.results.
TrainOutcome train_flow(const po::variables_map& vm, Context& ctx, const std::string& out);

/// The trainer options every training command shares (--steps --batch-size --lr --warmup
/// --ema --eval-every --checkpoint-every, and --weight-decay --clip --patience where the
/// command has them), checked, with the checkpoint at <out>.ckpt.
TrainerOptions trainer_options_from(const po::variables_map& vm, const std::string& out,
                                    const Context& ctx);

/// ODE solver options of the continuous-flow commands (--solver, `steps_name`, --rtol, --atol,
/// --max-steps); `steps_name` is "steps", or "solver-steps" where --steps counts optimizer
/// steps (cfm train); `prefix` starts each help text (e.g. "cfm models: ").
void add_solver_options(po::options_description& o, const std::string& steps_name,
                        const std::string& default_solver = "dopri5", int64_t default_steps = 100,
                        const std::string& prefix = "");
/// The solver options, checked (--<steps_name> >= 1, tolerances, step cap).
OdeOptions solver_from(const po::variables_map& vm, const std::string& steps_name);

/// train_resuming (flows/trainer.h) for a command: stops on Ctrl-C, says on stderr where it
/// resumed from, and throws Interrupted (exit 130) naming the checkpoint when stopped.
TrainReport train_command(std::shared_ptr<Distribution> model, const TrainerOptions& options,
                          Objective objective, const json& metadata, bool restart, Context& ctx);

/// torch dtype from --dtype.
torch::Dtype parse_dtype(const std::string& s);

}  // namespace nfkit::cli
