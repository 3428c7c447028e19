#pragma once
// Options shared by `nfkit evidence` and `nfkit pta compare`: the flow of the learned harmonic
// mean and its training.
#include "cli.h"
#include "nfkit/inference/evidence.h"

namespace nfkit::cli {

/// --temperature --train-fraction --flow --layers --hidden --bins --train-steps --batch-size --lr
po::options_description harmonic_options();
/// HarmonicOptions from those options (checked; UsageError naming the option).
HarmonicOptions harmonic_from(const po::variables_map& vm, const Context& ctx);
/// Prints the warnings to ctx.err as "warning: <prefix>: text".
void print_warnings(Context& ctx, const std::string& prefix, const std::vector<std::string>& warnings);

}  // namespace nfkit::cli
