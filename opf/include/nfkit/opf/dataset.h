#pragma once
// DC-OPF scenario datasets: load scenarios (and N-1 outages) of a case solved by Ipopt, stored
// in HDF5, generated in resumable chunks with progress.
//
// Scenario i (0-based) of a dataset with load levels s_1..s_L and `per_level` scenarios each
// has level s = s_{i / per_level} and loads
//   pd_j = s * Pd_j * max(0, 1 + sigma * ε_j),   ε_j ~ N(0, 1) iid,
// (the factor clipped at 0 so a load never changes sign), drawn from a stream seeded by
// derive_seed(seed, 13, i); with outages, a branch drawn uniformly from the N-1 outages that
// keep the grid connected (connected_branch_outages), from the same stream. A scenario depends
// only on (case, options, i), never on chunking, workers or resumption.
//
// File (kind "opf_dataset", version 1): root attributes case, case_file, dc_model, config
// (the options as JSON), complete (0 while partial); datasets over N scenarios
//   /pd [N, nb] MW, /pg [N, ng] MW, /theta [N, nb] rad, /lmp [N, nb] $/MWh, /flows [N, nl] MW,
//   /cost [N] $/h, /status [N] (0 optimal, 1 infeasible, 2 failed), /load_scale [N],
//   /outage [N] (1-based branch row, 0 = none), /seconds [N] (Ipopt wall time)
// and the numbering /bus_ids [nb], /gen_rows [ng], /branch_rows [nl] (1-based file rows) of
// the base network. Non-optimal scenarios keep their loads and have NaN solutions.
//
// The file is written once, complete, under its final name; while generating, finished chunks
// are kept in "<out>.partial" (same format, complete = 0), from which a rerun with the same
// options resumes.
//
//   nfkit::OpfDatasetOptions o;
//   o.case_file = "data/matpower/case30.m";
//   o.per_level = 1000;
//   auto rep = nfkit::generate_opf_dataset(o, "case30.h5");
#include <torch/types.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nfkit/physics/dc_network.h"

namespace nfkit {

struct OpfDatasetOptions {
  std::string case_file;
  DcConvention convention = DcConvention::kMatpower;
  std::vector<double> load_levels = {0.7, 0.85, 1.0, 1.15, 1.3};
  int64_t per_level = 200;  ///< scenarios per load level
  double sigma = 0.05;      ///< relative per-bus perturbation
  bool outages = false;     ///< one random N-1 outage per scenario
  uint64_t seed = 0;
  int workers = 1;          ///< Ipopt worker processes
  int64_t chunk = 512;      ///< scenarios between partial saves
  bool restart = false;     ///< ignore a partial file
  bool quiet = false;
  /// Asked between chunks; true stops after saving the partial file (the report says so).
  std::function<bool()> should_stop;

  /// The options that define the data (not workers, chunk, restart, quiet).
  nlohmann::json config() const;
};

struct OpfDatasetReport {
  int64_t scenarios = 0, optimal = 0, infeasible = 0, failed = 0;
  int64_t resumed_from = 0;  ///< scenarios found in a partial file
  bool complete = false;     ///< false when stopped on request
  double seconds = 0.0;      ///< wall time of this run
  double solve_seconds = 0.0;  ///< Σ Ipopt time over all scenarios
  nlohmann::json to_json() const;
};

/// Generates the dataset into `out`. UsageError for bad options (no levels, per_level < 1,
/// sigma < 0, workers < 1); RuntimeError for an unreadable case or a failing worker.
OpfDatasetReport generate_opf_dataset(const OpfDatasetOptions& opts, const std::string& out);

/// A dataset in memory (float64 tensors, int64 for status, outage and numbering).
struct OpfDataset {
  std::string case_name, case_file, dc_model;
  nlohmann::json config;
  torch::Tensor pd, pg, theta, lmp, flows, cost, status, load_scale, outage, seconds;
  torch::Tensor bus_ids, gen_rows, branch_rows;
  int64_t size() const { return cost.defined() ? cost.size(0) : 0; }

  /// RuntimeError naming the file for another kind, a newer version, a partial file or
  /// inconsistent shapes.
  static OpfDataset read(const std::string& path);
};

}  // namespace nfkit
