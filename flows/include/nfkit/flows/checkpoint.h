#pragma once
// Checkpoints in HDF5 (nfkit_format "checkpoint", format_version 1), readable with h5py:
//
//   /                 attrs: nfkit_format, format_version, model_config (JSON of
//                     Flow::config()), dtype ("float32" | "float64"), step (int64),
//                     metadata (JSON: whatever the writer wants to keep, e.g. the dataset)
//   /model/<name>     every parameter and buffer of the flow, by its module path
//   /trainer/...      optional trainer state (optimizer moments, EMA, best weights), see
//                     trainer.h; absent in a model written for inference only.
//
// Any Distribution with a config() is written the same way (write_flow); model_config's "type"
// says which loader rebuilds it: "flow" load_flow(), "continuous_flow" load_continuous_flow(),
// "one_step_generator" load_one_step_generator(), "binned_autoregressive" (and any other type
// make_distribution knows) load_distribution().
// A model is rebuilt from the file alone: load_flow() builds the flow from model_config,
// converts it to the stored dtype and loads every tensor, checking names and shapes.
//
//   nfkit::save_flow("model.h5", *flow, {{"data", "moons"}});
//   auto flow = nfkit::load_flow("model.h5");
#include <string>

#include "nfkit/core/h5.h"
#include "nfkit/flows/distribution.h"

namespace nfkit {

constexpr int64_t kCheckpointVersion = 1;

/// Parameters and buffers of a module, by name (recursive), in registration order.
std::vector<std::pair<std::string, torch::Tensor>> module_state(const torch::nn::Module& m);

/// Writes module_state(m) under group/<name>.
void write_state(H5Writer& w, const std::string& group, const torch::nn::Module& m);
/// Reads group/<name> into m's parameters and buffers (copy, keeping m's dtype and device).
/// Throws RuntimeError naming the file on a missing tensor or a shape mismatch.
void read_state(const H5Reader& r, const std::string& group, torch::nn::Module& m);

/// Writes the root attributes and /model of a checkpoint into an open writer.
void write_flow(H5Writer& w, const Distribution& flow, const json& metadata, int64_t step);
/// Saves a flow for inference (no trainer state), atomically.
void save_flow(const std::string& path, const Distribution& flow, const json& metadata = json::object());

struct LoadedFlow {
  std::shared_ptr<Flow> flow;
  json metadata;
  int64_t step = 0;
};
/// Rebuilds a flow from a checkpoint file (its configuration and weights). A file that holds
/// another kind of model (a continuous flow) is a RuntimeError naming the file and the kind.
LoadedFlow load_flow(const std::string& path);

struct LoadedDistribution {
  std::shared_ptr<Distribution> model;
  json metadata;
  int64_t step = 0;
};
/// Rebuilds any model make_distribution knows (a flow, a binned autoregressive model, a base)
/// from a checkpoint file.
LoadedDistribution load_distribution(const std::string& path);

class ContinuousFlow;
struct LoadedContinuousFlow {
  std::shared_ptr<ContinuousFlow> flow;
  json metadata;
  int64_t step = 0;
};
/// Rebuilds a continuous flow (model_config type "continuous_flow", written by cfm train).
LoadedContinuousFlow load_continuous_flow(const std::string& path);

class OneStepGenerator;
struct LoadedGenerator {
  std::shared_ptr<OneStepGenerator> generator;
  json metadata;
  int64_t step = 0;
};
/// Rebuilds a one-step generator (type "one_step_generator", written by cfm train --method wflow).
LoadedGenerator load_one_step_generator(const std::string& path);

/// model_config's "type" of a checkpoint ("flow", "continuous_flow", "one_step_generator"),
/// for commands that accept more than one kind. RuntimeError naming the file otherwise.
std::string checkpoint_model_type(const std::string& path);

}  // namespace nfkit
