#include "nfkit/flows/checkpoint.h"

#include <torch/torch.h>

#include "nfkit/core/error.h"
#include "nfkit/flows/builder.h"
#include "nfkit/flows/continuous_flow.h"
#include "nfkit/flows/wflow.h"

namespace nfkit {

std::vector<std::pair<std::string, torch::Tensor>> module_state(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters(true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : m.named_buffers(true)) out.emplace_back(b.key(), b.value());
  return out;
}

void write_state(H5Writer& w, const std::string& group, const torch::nn::Module& m) {
  w.group(group);
  for (const auto& [name, t] : module_state(m)) w.write(group + "/" + name, t);
}

void read_state(const H5Reader& r, const std::string& group, torch::nn::Module& m) {
  torch::NoGradGuard ng;
  for (auto& [name, t] : module_state(m)) {
    const std::string path = group + "/" + name;
    if (!r.exists(path)) runtime_error(r.path(), "has no tensor '" + path + "' (model mismatch?)");
    const auto v = r.read(path);
    if (v.sizes() != t.sizes())
      runtime_error(r.path(), "tensor '" + path + "' has the wrong shape for this model");
    t.copy_(v.to(t.options()));
  }
}

namespace {
const char* dtype_name(torch::Dtype d) {
  return d == torch::kFloat64 ? "float64" : "float32";
}
}  // namespace

void write_flow(H5Writer& w, const Distribution& flow, const json& metadata, int64_t step) {
  w.set_attr("/", "model_config", flow.config().dump());
  w.set_attr("/", "dtype", dtype_name(flow.tensor_options().dtype().toScalarType()));
  w.set_attr("/", "step", step);
  w.set_attr("/", "metadata", metadata.dump());
  write_state(w, "/model", flow);
}

void save_flow(const std::string& path, const Distribution& flow, const json& metadata) {
  H5Writer w(path, "checkpoint", kCheckpointVersion);
  write_flow(w, flow, metadata, 0);
  w.commit();
}

namespace {
// Opens a checkpoint, checks its model kind (any when `kind` is empty), builds the model with make(config), converts it
// to the stored dtype and loads its tensors.
template <class Model, class Make>
std::tuple<std::shared_ptr<Model>, json, int64_t> load_model(const std::string& path,
                                                             const std::string& kind, Make make) {
  H5Reader r(path);
  r.expect_format("checkpoint", kCheckpointVersion);
  std::shared_ptr<Model> model;
  json config, metadata;
  try {
    config = json::parse(r.attr_string("/", "model_config"));
    metadata = r.has_attr("/", "metadata") ? json::parse(r.attr_string("/", "metadata"))
                                           : json::object();
    const std::string type = config.value("type", "");
    if (!kind.empty() && type != kind) {
      const std::string hint = type == "continuous_flow" || type == "one_step_generator"
                                   ? " (written by cfm train; use the cfm commands)"
                               : type == "flow"          ? " (written by flow train; use the flow commands)"
                                                         : "";
      runtime_error(path, "holds a model of kind '" + type + "', expected '" + kind + "'" + hint);
    }
    model = make(config);
  } catch (const json::exception& e) {
    runtime_error(path, std::string("has a malformed model_config (") + e.what() + ")");
  }
  const std::string dtype = r.has_attr("/", "dtype") ? r.attr_string("/", "dtype") : "float32";
  if (dtype == "float64") model->to(torch::kFloat64);
  read_state(r, "/model", *model);
  const int64_t step = r.has_attr("/", "step") ? r.attr_int("/", "step") : 0;
  model->eval();
  return {model, metadata, step};
}
}  // namespace

LoadedFlow load_flow(const std::string& path) {
  LoadedFlow out;
  std::tie(out.flow, out.metadata, out.step) =
      load_model<Flow>(path, "flow", [](const json& c) { return make_flow(c); });
  return out;
}

LoadedDistribution load_distribution(const std::string& path) {
  LoadedDistribution out;
  std::tie(out.model, out.metadata, out.step) = load_model<Distribution>(path, "", [&](const json& c) {
    const std::string type = c.value("type", "");
    if (type == "continuous_flow" || type == "one_step_generator")
      runtime_error(path, "holds a model of kind '" + type + "' (written by cfm train; use the cfm commands)");
    return make_distribution(c);
  });
  return out;
}

LoadedContinuousFlow load_continuous_flow(const std::string& path) {
  LoadedContinuousFlow out;
  std::tie(out.flow, out.metadata, out.step) = load_model<ContinuousFlow>(
      path, "continuous_flow", [](const json& c) { return make_continuous_flow(c); });
  return out;
}

LoadedGenerator load_one_step_generator(const std::string& path) {
  LoadedGenerator out;
  std::tie(out.generator, out.metadata, out.step) = load_model<OneStepGenerator>(
      path, "one_step_generator", [](const json& c) { return make_one_step_generator(c); });
  return out;
}

std::string checkpoint_model_type(const std::string& path) {
  H5Reader r(path);
  r.expect_format("checkpoint", kCheckpointVersion);
  try {
    return json::parse(r.attr_string("/", "model_config")).value("type", "");
  } catch (const json::exception& e) {
    runtime_error(path, std::string("has a malformed model_config (") + e.what() + ")");
  }
}

}  // namespace nfkit
