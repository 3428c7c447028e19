#pragma once
// Many DC-OPF instances solved by Ipopt in parallel worker processes.
//
// Ipopt 3.11 with Debian's sequential MUMPS is not thread-safe (two solves in two threads of
// one process crash), so parallel solves run in forked worker processes, each with one BLAS
// thread, that stream their results back through pipes; the parent keeps the order of the
// instances. Results do not depend on the number of workers (each instance is one
// deterministic Ipopt solve).
//
//   std::vector<nfkit::OpfInstance> inst = ...;               // loads (and outages) per instance
//   auto res = nfkit::solve_instances(pc, nfkit::DcConvention::kMatpower, inst, {.workers = 2});
#include <Eigen/Dense>

#include <functional>
#include <vector>

#include "nfkit/physics/dc_opf.h"

namespace nfkit {

/// One DC-OPF instance: loads pd (MW per bus of the base network) and an optional branch
/// outage (0-based row of mpc.branch, -1 for none; it must keep the grid connected).
struct OpfInstance {
  Eigen::VectorXd pd;
  int outage_row = -1;
};

/// The solution of one instance, over the base network's generators, buses and branches
/// (an outaged branch carries 0 MW). For a non-optimal status the vectors are NaN.
struct OpfInstanceResult {
  OpfStatus status = OpfStatus::kFailed;
  double cost = 0.0;       ///< $/h
  double seconds = 0.0;    ///< Ipopt wall time
  Eigen::VectorXd pg, theta, lmp, flows;
};

struct SolverPoolOptions {
  int workers = 1;         ///< processes; 1 solves in this process
  DcOpfOptions solver;
  /// Called in the parent with the number of instances finished so far.
  std::function<void(int64_t)> on_progress;
};

/// Solves every instance. RuntimeError if a worker dies (naming its signal) or a pipe fails;
/// UsageError for an instance of the wrong size or an outage row out of range.
std::vector<OpfInstanceResult> solve_instances(const PowerCase& pc, DcConvention convention,
                                               const std::vector<OpfInstance>& instances,
                                               const SolverPoolOptions& opts = {});

}  // namespace nfkit
