#include "nfkit/boltzmann/fab.h"

#include <torch/torch.h>

#include <cmath>

#include "nfkit/boltzmann/reweight.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/runtime.h"

namespace nfkit {

void FabOptions::check() const {
  ais.check();
  const char* fn = "fab";
  if (batch < 2) usage_error(fn, "--batch must be at least 2, got " + std::to_string(batch));
  if (buffer) {
    if (buffer_batches < 1)
      usage_error(fn, "--buffer-batches must be at least 1, got " + std::to_string(buffer_batches));
    if (buffer_min < batch)
      usage_error(fn, "--buffer-min (" + std::to_string(buffer_min) +
                          ") must be at least --batch (" + std::to_string(batch) + ")");
    if (buffer_size < buffer_min + batch)
      usage_error(fn, "--buffer-size (" + std::to_string(buffer_size) +
                          ") must be at least --buffer-min + --batch (" +
                          std::to_string(buffer_min + batch) + ")");
  }
  check_nonnegative(fn, "--w-adjust-clip", w_adjust_clip);
  if (val_samples < 2) usage_error(fn, "--val-samples must be at least 2");
}

nlohmann::json FabOptions::to_json() const {
  return {{"ais", ais.to_json()},       {"batch", batch},
          {"buffer", buffer},           {"buffer_size", buffer_size},
          {"buffer_min", buffer_min},   {"buffer_batches", buffer_batches},
          {"w_adjust_clip", w_adjust_clip}, {"val_samples", val_samples},
          {"trainer", trainer.to_json()}};
}

nlohmann::json FabReport::to_json() const {
  return {{"steps", train.steps_done},
          {"best_step", train.best_step},
          {"best_val_log_inverse_ess", train.best_val},
          {"ais_runs", ais_runs},
          {"energy_evaluations", energy_evaluations},
          {"failed_particles", failed},
          {"last_ais_ess", std::isfinite(last_ais_ess) ? nlohmann::json(last_ais_ess) : nlohmann::json()},
          {"step_sizes", step_sizes},
          {"interrupted", train.interrupted}};
}

ImportanceEstimate importance_estimate(Distribution& flow, Energy& energy, int64_t n, int64_t chunk) {
  check_positive_int("importance_estimate", "n", n);
  check_positive_int("importance_estimate", "chunk", chunk);
  torch::NoGradGuard ng;
  const bool was_training = flow.is_training();
  flow.eval();
  std::vector<torch::Tensor> xs, ws;
  for (int64_t done = 0; done < n; done += chunk) {
    const int64_t m = std::min(chunk, n - done);
    auto [x, log_q] = flow.sample_and_log_prob(m);
    auto x64 = x.to(torch::kFloat64).cpu();
    auto u = energy.evaluate(x64);
    xs.push_back(x64);
    ws.push_back(log_importance_weights(u, log_q.to(torch::kFloat64).cpu()));
  }
  if (was_training) flow.train();
  ImportanceEstimate e;
  e.x = torch::cat(xs);
  e.log_w = torch::cat(ws);
  e.n = n;
  e.infinite = (~torch::isfinite(e.log_w)).sum().item<int64_t>();
  if (e.infinite < n) {
    e.log_z = log_mean_exp(e.log_w);
    e.ess_fraction = ess_fraction(e.log_w);
  }
  return e;
}

namespace {

// The prioritised replay buffer of FAB (Algorithm 2): a ring of (x, log w, log q_old).
struct ReplayBuffer {
  torch::Tensor x, log_w, log_q;  // [capacity, D], [capacity], [capacity] float64
  int64_t size = 0, next = 0;

  ReplayBuffer(int64_t capacity, int64_t dim)
      : x(torch::zeros({capacity, dim}, torch::kFloat64)),
        log_w(torch::full({capacity}, -INFINITY, torch::kFloat64)),
        log_q(torch::zeros({capacity}, torch::kFloat64)) {}

  void add(const torch::Tensor& xs, const torch::Tensor& lw, const torch::Tensor& lq) {
    const int64_t cap = x.size(0), m = xs.size(0);
    auto idx = (torch::arange(m, torch::kInt64) + next).remainder(cap);
    x.index_copy_(0, idx, xs);
    log_w.index_copy_(0, idx, lw);
    log_q.index_copy_(0, idx, lq);
    next = (next + m) % cap;
    size = std::min(cap, size + m);
  }
  // m distinct indices drawn with probability ∝ w (Gumbel top-k).
  torch::Tensor draw(int64_t m) const {
    auto logits = log_w.narrow(0, 0, size);
    auto gumbel = -torch::log(-torch::log(torch::rand({size}, torch::kFloat64).clamp_min(1e-300)));
    auto idx = std::get<1>(torch::topk(logits + gumbel, m, 0, true, false));
    return idx.index_select(0, torch::randperm(m, torch::kInt64));
  }
};

}  // namespace

FabReport train_fab(std::shared_ptr<Distribution> flow, Energy& energy, const FabOptions& options,
                    const nlohmann::json& metadata, bool restart, const std::function<bool()>& stop,
                    const std::function<void(int64_t step)>& on_resume) {
  options.check();
  if (!flow) usage_error("fab", "no flow given");
  AnnealedImportanceSampler ais(*flow, energy, options.ais);
  ReplayBuffer buffer(options.buffer ? options.buffer_size : 1, flow->dim());
  FabReport rep;
  const double alpha = options.ais.alpha;
  const auto popts = flow->tensor_options();

  auto run_ais = [&]() {
    auto r = ais.run(options.batch);
    ++rep.ais_runs;
    rep.energy_evaluations += r.energy_evaluations;
    rep.failed += r.failed;
    if (r.log_w.numel() > 0) rep.last_ais_ess = ess_fraction(r.log_w);
    return r;
  };

  Objective obj;
  obj.step_loss = [&](int64_t step) -> torch::Tensor {
    if (!options.buffer) {
      auto r = run_ais();
      if (r.x.size(0) == 0) return torch::full({}, NAN, popts);
      const auto log_q = flow->log_prob(r.x.to(popts));
      const auto w = torch::softmax(r.log_w, 0).to(popts);
      const auto ok = torch::isfinite(log_q);
      return -(torch::where(ok, w * log_q, torch::zeros_like(log_q))).sum();
    }
    if (step % options.buffer_batches == 0 || buffer.size < options.buffer_min) {
      do {
        auto r = run_ais();
        if (r.x.size(0) > 0) buffer.add(r.x, r.log_w, r.log_q);
      } while (buffer.size < options.buffer_min);
    }
    const auto idx = buffer.draw(options.batch);
    const auto x = buffer.x.index_select(0, idx);
    const auto log_q = flow->log_prob(x.to(popts));
    torch::NoGradGuard ng;
    const auto lq64 = log_q.detach().to(torch::kFloat64).cpu();
    auto adjust = (1.0 - alpha) * (lq64 - buffer.log_q.index_select(0, idx));
    const auto ok = torch::isfinite(adjust);
    auto c = adjust.exp();
    if (options.w_adjust_clip > 0) c = c.clamp_max(options.w_adjust_clip);
    c = torch::where(ok, c, torch::zeros_like(c));
    // Correct the drawn points for the new flow; those it cannot evaluate leave the buffer.
    buffer.log_w.index_copy_(0, idx, torch::where(ok, buffer.log_w.index_select(0, idx) + adjust,
                                                  torch::full_like(adjust, -INFINITY)));
    buffer.log_q.index_copy_(0, idx, torch::where(ok, lq64, buffer.log_q.index_select(0, idx)));
    const auto n_ok = ok.sum().item<int64_t>();
    if (n_ok == 0) return torch::full({}, NAN, popts);
    torch::AutoGradMode grad_on(true);
    const auto cw = c.to(popts);
    return -(torch::where(ok.to(popts.device()), cw * log_q, torch::zeros_like(log_q))).sum() /
           static_cast<double>(n_ok);
  };
  const uint64_t val_seed = derive_seed(options.trainer.seed(), 3, 0);
  obj.validate = [&]() -> double {
    torch::manual_seed(val_seed);
    const auto e = importance_estimate(*flow, energy, options.val_samples);
    return std::isfinite(e.ess_fraction) ? -std::log(e.ess_fraction) : INFINITY;
  };
  obj.save_state = [&](H5Writer& w, const std::string& group) {
    w.group(group);
    w.write(group + "/buffer_x", buffer.x.narrow(0, 0, buffer.size));
    w.write(group + "/buffer_log_w", buffer.log_w.narrow(0, 0, buffer.size));
    w.write(group + "/buffer_log_q", buffer.log_q.narrow(0, 0, buffer.size));
    w.write(group + "/step_sizes", torch::tensor(ais.step_sizes(), torch::kFloat64));
    w.set_attr(group, "buffer_next", buffer.next);
    w.set_attr(group, "kind", "fab");
  };
  obj.load_state = [&](const H5Reader& r, const std::string& group) {
    if (!r.has_attr(group, "kind") || r.attr_string(group, "kind") != "fab")
      runtime_error(r.path(), "is not a FAB training checkpoint (no FAB state under " + group + ")");
    const auto bx = r.read(group + "/buffer_x");
    const int64_t m = bx.size(0);
    if (bx.dim() != 2 || bx.size(1) != flow->dim() || m > buffer.x.size(0))
      runtime_error(r.path(), "holds a replay buffer of shape [" + std::to_string(m) + ", " +
                                  std::to_string(bx.dim() == 2 ? bx.size(1) : -1) +
                                  "], which does not fit this run (dimension " +
                                  std::to_string(flow->dim()) + ", --buffer-size " +
                                  std::to_string(buffer.x.size(0)) + "; --restart starts over)");
    buffer.x.narrow(0, 0, m).copy_(bx);
    buffer.log_w.narrow(0, 0, m).copy_(r.read(group + "/buffer_log_w"));
    buffer.log_q.narrow(0, 0, m).copy_(r.read(group + "/buffer_log_q"));
    buffer.size = m;
    buffer.next = r.attr_int(group, "buffer_next");
    const auto eps = r.read(group + "/step_sizes").to(torch::kFloat64).contiguous();
    ais.set_step_sizes(std::vector<double>(eps.data_ptr<double>(), eps.data_ptr<double>() + eps.numel()));
  };

  nlohmann::json meta = metadata;
  meta["fab"] = options.to_json();
  meta["energy"] = energy.name();
  rep.train = train_resuming(flow, options.trainer, obj, meta, restart, stop, on_resume);
  rep.step_sizes = ais.step_sizes();
  return rep;
}

}  // namespace nfkit
