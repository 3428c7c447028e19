#include "nfkit/flows/checkpoint.h"

#include <torch/torch.h>

#include "nfkit/core/error.h"
#include "nfkit/flows/builder.h"

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

void write_flow(H5Writer& w, const Flow& flow, const json& metadata, int64_t step) {
  w.set_attr("/", "model_config", flow.config().dump());
  w.set_attr("/", "dtype", dtype_name(flow.tensor_options().dtype().toScalarType()));
  w.set_attr("/", "step", step);
  w.set_attr("/", "metadata", metadata.dump());
  write_state(w, "/model", flow);
}

void save_flow(const std::string& path, const Flow& flow, const json& metadata) {
  H5Writer w(path, "checkpoint", kCheckpointVersion);
  write_flow(w, flow, metadata, 0);
  w.commit();
}

LoadedFlow load_flow(const std::string& path) {
  H5Reader r(path);
  r.expect_format("checkpoint", kCheckpointVersion);
  LoadedFlow out;
  json config;
  try {
    config = json::parse(r.attr_string("/", "model_config"));
    out.metadata = r.has_attr("/", "metadata") ? json::parse(r.attr_string("/", "metadata"))
                                               : json::object();
    out.flow = make_flow(config);
  } catch (const json::exception& e) {
    runtime_error(path, std::string("has a malformed model_config (") + e.what() + ")");
  }
  const std::string dtype = r.has_attr("/", "dtype") ? r.attr_string("/", "dtype") : "float32";
  if (dtype == "float64") out.flow->to(torch::kFloat64);
  read_state(r, "/model", *out.flow);
  out.step = r.has_attr("/", "step") ? r.attr_int("/", "step") : 0;
  out.flow->eval();
  return out;
}

}  // namespace nfkit
