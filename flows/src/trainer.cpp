#include "nfkit/flows/trainer.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdio>

#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/progress.h"
#include "nfkit/core/runtime.h"

namespace nfkit {

json TrainerOptions::to_json() const {
  return {{"steps", steps_}, {"batch_size", batch_size_}, {"lr", lr_},
          {"weight_decay", weight_decay_}, {"beta1", beta1_}, {"beta2", beta2_}, {"eps", eps_},
          {"warmup_steps", warmup_steps_}, {"min_lr_fraction", min_lr_fraction_},
          {"clip_grad_norm", clip_grad_norm_}, {"ema_decay", ema_decay_},
          {"eval_every", eval_every_}, {"patience", patience_}, {"seed", seed_}};
}

using Tensors = std::vector<torch::Tensor>;

// Parameters, gradients and optimizer state live in flat buffers (the parameters and their
// .grad become views into them), so that the optimizer update, gradient norm, clipping and
// EMA are a handful of vectorised ops per step instead of a few per parameter tensor.
struct Trainer::State {
  int64_t step = 0;
  std::vector<std::string> names;  // parameter names
  Tensors params, m, v, ema;       // per-parameter views into the flat buffers below
  torch::Tensor flat, flat_grad, flat_m, flat_v, flat_ema;
  std::vector<std::string> state_names;  // parameters + buffers
  Tensors state;                         // live references
  Tensors best, good_state, good_m, good_v;
  double best_val = NAN;
  int64_t best_step = -1, evals_since_best = 0;
  int64_t bad_in_row = 0, bad_total = 0, rollbacks = 0;
  double last_train = NAN;
  std::vector<std::pair<int64_t, double>> history;
  std::vector<std::pair<int64_t, double>> train_history;
  double train_sum = 0;  // finite training losses since the last validation
  int64_t train_count = 0;
};

namespace {
Tensors clone_all(const Tensors& ts) {
  Tensors out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.detach().clone());
  return out;
}
void copy_into(const Tensors& dst, const Tensors& src) {
  torch::NoGradGuard ng;
  for (size_t i = 0; i < dst.size(); ++i) dst[i].copy_(src[i]);
}
bool all_finite(const Tensors& ts) {
  torch::NoGradGuard ng;
  if (ts.empty()) return true;
  Tensors sums;
  for (const auto& t : ts) sums.push_back(t.sum().to(torch::kFloat64));
  return torch::isfinite(torch::stack(sums).sum()).item<bool>();
}
}  // namespace

Trainer::Trainer(std::shared_ptr<Distribution> flow, TrainerOptions opts, Objective objective,
                 json metadata)
    : flow_(std::move(flow)), opts_(std::move(opts)), obj_(std::move(objective)),
      metadata_(std::move(metadata)), s_(std::make_unique<State>()) {
  const char* fn = "Trainer";
  check_positive_int(fn, "steps", opts_.steps());
  check_positive_int(fn, "batch_size", opts_.batch_size());
  check_positive(fn, "lr", opts_.lr());
  check_nonnegative(fn, "weight_decay", opts_.weight_decay());
  check_in_range(fn, "ema_decay", opts_.ema_decay(), 0.0, 1.0);
  check_in_range(fn, "reverse_weight", obj_.reverse_weight, 0.0, 1.0);
  check_positive_int(fn, "eval_every", opts_.eval_every());
  if (obj_.step_loss && (obj_.loss || obj_.reverse_weight > 0.0 || obj_.train.defined()))
    usage_error(fn, "a step loss replaces every other training term (no train, loss or reverse KL)");
  if (obj_.step_loss && !obj_.validate && !obj_.val.defined())
    usage_error(fn, "a step loss needs a validation (validate or val)");
  if (obj_.loss && obj_.reverse_weight > 0.0)
    usage_error(fn, "a custom loss replaces the forward-KL term and cannot be mixed with reverse KL");
  if (!obj_.step_loss && obj_.reverse_weight < 1.0 && !obj_.train.defined())
    usage_error(fn, "forward KL needs training data (or set reverse_weight to 1 with an energy)");
  if (obj_.reverse_weight > 0.0 && !obj_.energy)
    usage_error(fn, "reverse KL needs an energy function");
  if (obj_.train.defined()) {
    check_dim(fn, "train", obj_.train, 2);
    if (!obj_.loss) check_size(fn, "train", obj_.train, 1, flow_->dim());
    check_finite(fn, "train", obj_.train);
  }
  if (obj_.val.defined()) {
    check_dim(fn, "val", obj_.val, 2);
    check_size(fn, "val", obj_.val, 1, flow_->dim());
    check_finite(fn, "val", obj_.val);
  }
  if (obj_.energy_batch <= 0) obj_.energy_batch = opts_.batch_size();
  const auto popts = flow_->tensor_options();
  int64_t total = 0;
  for (const auto& p : flow_->named_parameters(true)) {
    if (p.value().scalar_type() != popts.dtype().toScalarType() || p.value().device() != popts.device())
      usage_error(fn, "parameter '" + p.key() + "' has another dtype or device than the model; "
                      "call flow->to(...) before building the trainer");
    s_->names.push_back(p.key());
    s_->params.push_back(p.value());
    total += p.value().numel();
  }
  // Flatten: copy each parameter into the flat buffer and make it a view of it.
  torch::NoGradGuard ng;
  s_->flat = torch::empty({total}, popts);
  s_->flat_grad = torch::zeros({total}, popts);
  s_->flat_m = torch::zeros({total}, popts);
  s_->flat_v = torch::zeros({total}, popts);
  auto view = [](const torch::Tensor& flat, int64_t off, const torch::Tensor& like) {
    return flat.narrow(0, off, like.numel()).view(like.sizes());
  };
  int64_t off = 0;
  for (auto& p : s_->params) {
    s_->flat.narrow(0, off, p.numel()).copy_(p.detach().reshape({-1}));
    p.set_data(view(s_->flat, off, p));
    p.mutable_grad() = view(s_->flat_grad, off, p);
    s_->m.push_back(view(s_->flat_m, off, p));
    s_->v.push_back(view(s_->flat_v, off, p));
    off += p.numel();
  }
  if (opts_.ema_decay() > 0) {
    s_->flat_ema = s_->flat.clone();
    off = 0;
    for (auto& p : s_->params) {
      s_->ema.push_back(view(s_->flat_ema, off, p));
      off += p.numel();
    }
  }
  for (auto& [name, t] : module_state(*flow_)) {
    s_->state_names.push_back(name);
    s_->state.push_back(t);
  }
  s_->good_state = clone_all(s_->state);
  s_->good_m = clone_all(s_->m);
  s_->good_v = clone_all(s_->v);
}

Trainer::~Trainer() = default;

int64_t Trainer::step() const { return s_->step; }

double Trainer::learning_rate(int64_t step) const {
  const int64_t warm = opts_.warmup_steps();
  if (warm > 0 && step < warm) return opts_.lr() * static_cast<double>(step + 1) / warm;
  const double span = static_cast<double>(std::max<int64_t>(1, opts_.steps() - warm));
  const double progress = std::min(1.0, static_cast<double>(step - warm) / span);
  const double f = opts_.min_lr_fraction();
  return opts_.lr() * (f + (1.0 - f) * 0.5 * (1.0 + std::cos(M_PI * progress)));
}

namespace {
torch::Tensor rows(const torch::Tensor& t, const torch::Tensor& idx) {
  return t.defined() ? t.index_select(0, idx) : torch::Tensor();
}

}  // namespace

TrainReport Trainer::train() {
  State& s = *s_;
  const auto dev_opts = flow_->tensor_options();
  auto to_model = [&](const torch::Tensor& t) { return t.defined() ? t.to(dev_opts) : t; };
  const auto train_x = to_model(obj_.train), train_c = to_model(obj_.train_context);
  const auto val_x = to_model(obj_.val), val_c = to_model(obj_.val_context);

  auto validate = [&]() -> double {
    flow_->eval();
    Tensors saved;
    if (!s.ema.empty()) {
      saved = clone_all(s.params);
      copy_into(s.params, s.ema);
    }
    double loss;
    if (obj_.validate) {
      loss = obj_.validate();
    } else if (val_x.defined()) {
      loss = negative_log_likelihood(*flow_, val_x, val_c).mean().item<double>();
    } else if (!obj_.energy) {  // no validation set: the first rows of the training data
      const int64_t n = std::min<int64_t>(train_x.size(0), 8192);
      loss = negative_log_likelihood(*flow_, train_x.narrow(0, 0, n),
                                      train_c.defined() ? train_c.narrow(0, 0, n) : train_c)
                 .mean()
                 .item<double>();
    } else {
      torch::NoGradGuard ng;
      torch::manual_seed(derive_seed(opts_.seed(), 2, 0));
      loss = reverse_kl(*flow_, obj_.energy, 4 * obj_.energy_batch).item<double>();
    }
    if (!saved.empty()) copy_into(s.params, saved);
    flow_->train();
    return loss;
  };

  TrainReport rep;
  rep.start_step = s.step;
  Progress progress("train", opts_.steps(), ProgressOptions{opts_.quiet()});
  progress.set_start(s.step);
  flow_->train();
  const bool custom = static_cast<bool>(obj_.step_loss);
  const bool use_fwd = !custom && obj_.reverse_weight < 1.0, use_rev = obj_.reverse_weight > 0.0;

  while (s.step < opts_.steps()) {
    if (should_stop && should_stop(s.step)) {
      rep.interrupted = true;
      break;
    }
    torch::manual_seed(derive_seed(opts_.seed(), 1, static_cast<uint64_t>(s.step)));
    torch::Tensor loss;
    auto add = [&loss](const torch::Tensor& term, double weight) {
      const auto t = weight == 1.0 ? term : weight * term;
      loss = loss.defined() ? loss + t : t;
    };
    if (use_fwd) {
      const auto idx = torch::randint(train_x.size(0), {opts_.batch_size()},
                                      torch::TensorOptions().dtype(torch::kInt64).device(dev_opts.device()));
      auto bx = rows(train_x, idx), bc = rows(train_c, idx);
      if (obj_.augment) std::tie(bx, bc) = obj_.augment(bx, bc);
      add(obj_.loss ? obj_.loss(bx, bc) : forward_kl(*flow_, bx, bc), 1.0 - obj_.reverse_weight);
    }
    if (use_rev) add(reverse_kl(*flow_, obj_.energy, obj_.energy_batch), obj_.reverse_weight);
    if (custom) add(obj_.step_loss(s.step), 1.0);

    const double loss_v = loss.item<double>();
    bool bad = !std::isfinite(loss_v);
    if (!bad) {
      s.flat_grad.zero_();
      loss.backward();
      torch::NoGradGuard ng;
      const double norm = s.flat_grad.norm().item<double>();
      bad = !std::isfinite(norm);  // a non-finite gradient is never applied
      if (!bad) {
        const double clip = opts_.clip_grad_norm();
        if (clip > 0 && norm > clip) s.flat_grad.mul_(clip / (norm + 1e-12));
        const double lr = learning_rate(s.step);
        const double t = static_cast<double>(s.step + 1);
        const double bc1 = 1.0 - std::pow(opts_.beta1(), t), bc2 = 1.0 - std::pow(opts_.beta2(), t);
        const auto& g = s.flat_grad;
        s.flat_m.mul_(opts_.beta1()).add_(g, 1.0 - opts_.beta1());
        s.flat_v.mul_(opts_.beta2()).addcmul_(g, g, 1.0 - opts_.beta2());
        if (opts_.weight_decay() > 0) s.flat.mul_(1.0 - lr * opts_.weight_decay());
        const auto denom = s.flat_v.div(bc2).sqrt_().add_(opts_.eps());
        s.flat.addcdiv_(s.flat_m, denom, -lr / bc1);
        if (s.flat_ema.defined()) s.flat_ema.mul_(opts_.ema_decay()).add_(s.flat, 1.0 - opts_.ema_decay());
      }
    }
    ++s.step;
    if (bad) {
      ++s.bad_total;
      if (++s.bad_in_row > opts_.max_bad_steps())
        runtime_error("train", "the loss or its gradient was not finite for " +
                                   std::to_string(s.bad_in_row) + " steps in a row (step " +
                                   std::to_string(s.step) + "); lower --lr or check the data");
    } else {
      s.bad_in_row = 0;
      s.last_train = loss_v;
      s.train_sum += loss_v;
      ++s.train_count;
    }

    if (s.step % opts_.eval_every() == 0 || s.step == opts_.steps()) {
      const double val = validate();
      s.history.emplace_back(s.step, val);
      if (s.train_count > 0) s.train_history.emplace_back(s.step, s.train_sum / static_cast<double>(s.train_count));
      s.train_sum = 0;
      s.train_count = 0;
      if (std::isfinite(val) && (!std::isfinite(s.best_val) || val < s.best_val)) {
        s.best_val = val;
        s.best_step = s.step;
        s.evals_since_best = 0;
        if (!s.ema.empty()) {
          Tensors saved = clone_all(s.params);
          copy_into(s.params, s.ema);
          s.best = clone_all(s.state);
          copy_into(s.params, saved);
        } else {
          s.best = clone_all(s.state);
        }
      } else {
        ++s.evals_since_best;
      }
      // Updates use finite gradients only, so weights can turn non-finite only by overflow;
      // checked here, at each validation: roll back to the last good state if it happened.
      if (all_finite(s.state)) {
        s.good_state = clone_all(s.state);
        s.good_m = clone_all(s.m);
        s.good_v = clone_all(s.v);
      } else {
        copy_into(s.state, s.good_state);
        copy_into(s.m, s.good_m);
        copy_into(s.v, s.good_v);
        if (s.flat_ema.defined()) copy_into(s.ema, s.params);
        ++s.rollbacks;
        ++s.bad_total;
      }
      char buf[128];
      std::snprintf(buf, sizeof buf, "loss %.4f  val %.4f  best %.4f@%lld", s.last_train, val,
                    s.best_val, static_cast<long long>(s.best_step));
      progress.update(s.step, buf);
      if (opts_.patience() > 0 && s.evals_since_best >= opts_.patience()) {
        rep.stopped_early = true;
        break;
      }
    } else {
      progress.update(s.step);
    }
    if (opts_.checkpoint_every() > 0 && !opts_.checkpoint_path().empty() &&
        s.step % opts_.checkpoint_every() == 0)
      save_checkpoint(opts_.checkpoint_path());
  }
  if (rep.interrupted && !opts_.checkpoint_path().empty()) save_checkpoint(opts_.checkpoint_path());
  progress.finish();

  if (!rep.interrupted) {
    if (!s.best.empty())
      copy_into(s.state, s.best);
    else if (!s.ema.empty())
      copy_into(s.params, s.ema);
  }
  flow_->eval();
  rep.steps_done = s.step;
  rep.best_step = s.best_step;
  rep.best_val = s.best_val;
  rep.last_train = s.last_train;
  rep.bad_steps = s.bad_total;
  rep.rollbacks = s.rollbacks;
  rep.validation = s.history;
  rep.training = s.train_history;
  return rep;
}

void Trainer::save_checkpoint(const std::string& path) const {
  const State& s = *s_;
  H5Writer w(path, "checkpoint", kCheckpointVersion);
  write_flow(w, *flow_, metadata_, s.step);
  for (size_t i = 0; i < s.params.size(); ++i) {
    w.write("/trainer/adam_m/" + s.names[i], s.m[i]);
    w.write("/trainer/adam_v/" + s.names[i], s.v[i]);
    if (!s.ema.empty()) w.write("/trainer/ema/" + s.names[i], s.ema[i]);
  }
  for (size_t i = 0; i < s.best.size(); ++i) w.write("/trainer/best/" + s.state_names[i], s.best[i]);
  json hist = json::array();
  for (const auto& [st, v] : s.history) hist.push_back({st, v});
  json train_hist = json::array();
  for (const auto& [st, v] : s.train_history) train_hist.push_back({st, v});
  const json state = {{"step", s.step},
                      {"best_val", std::isfinite(s.best_val) ? json(s.best_val) : json(nullptr)},
                      {"best_step", s.best_step},
                      {"evals_since_best", s.evals_since_best},
                      {"bad_total", s.bad_total},
                      {"bad_in_row", s.bad_in_row},
                      {"rollbacks", s.rollbacks},
                      {"last_train", std::isfinite(s.last_train) ? json(s.last_train) : json(nullptr)},
                      {"history", hist},
                      {"train_history", train_hist},
                      {"train_sum", s.train_sum},
                      {"train_count", s.train_count},
                      {"options", opts_.to_json()}};
  w.set_attr("/trainer", "state", state.dump());
  if (obj_.save_state) obj_.save_state(w, "/objective");
  w.commit();
}

void Trainer::load_checkpoint(const std::string& path) {
  State& s = *s_;
  H5Reader r(path);
  r.expect_format("checkpoint", kCheckpointVersion);
  if (json::parse(r.attr_string("/", "model_config")) != flow_->config())
    runtime_error(path, "holds a different model configuration than the one being trained (--restart starts over)");
  if (!r.has_attr("/trainer", "state"))
    runtime_error(path, "has no trainer state (a model file, not a training checkpoint)");
  read_state(r, "/model", *flow_);
  torch::NoGradGuard ng;
  auto load = [&](const std::string& group, Tensors& dst, const std::vector<std::string>& names) {
    for (size_t i = 0; i < dst.size(); ++i) {
      const std::string p = group + "/" + names[i];
      if (!r.exists(p)) runtime_error(path, "has no tensor '" + p + "'");
      dst[i].copy_(r.read(p).to(dst[i].options()));
    }
  };
  load("/trainer/adam_m", s.m, s.names);
  load("/trainer/adam_v", s.v, s.names);
  if (!s.ema.empty()) load("/trainer/ema", s.ema, s.names);
  s.best.clear();
  if (r.exists("/trainer/best")) {
    s.best = clone_all(s.state);
    load("/trainer/best", s.best, s.state_names);
  }
  const json st = json::parse(r.attr_string("/trainer", "state"));
  s.step = st.at("step").get<int64_t>();
  s.best_val = st.at("best_val").is_null() ? NAN : st.at("best_val").get<double>();
  s.best_step = st.at("best_step").get<int64_t>();
  s.evals_since_best = st.at("evals_since_best").get<int64_t>();
  s.bad_total = st.at("bad_total").get<int64_t>();
  s.bad_in_row = st.at("bad_in_row").get<int64_t>();
  s.rollbacks = st.at("rollbacks").get<int64_t>();
  s.last_train = st.at("last_train").is_null() ? NAN : st.at("last_train").get<double>();
  s.history.clear();
  for (const auto& h : st.at("history")) s.history.emplace_back(h[0].get<int64_t>(), h[1].get<double>());
  s.train_history.clear();
  s.train_sum = 0;
  s.train_count = 0;
  if (st.contains("train_history")) {  // absent in checkpoints written before it existed
    for (const auto& h : st.at("train_history"))
      s.train_history.emplace_back(h[0].get<int64_t>(), h[1].get<double>());
    s.train_sum = st.at("train_sum").get<double>();
    s.train_count = st.at("train_count").get<int64_t>();
  }
  s.good_state = clone_all(s.state);
  s.good_m = clone_all(s.m);
  s.good_v = clone_all(s.v);
  if (obj_.load_state) {
    if (!r.exists("/objective")) runtime_error(path, "has no objective state (/objective)");
    obj_.load_state(r, "/objective");
  }
}

TrainReport train_resuming(std::shared_ptr<Distribution> model, const TrainerOptions& options,
                           Objective objective, const json& metadata, bool restart,
                           const std::function<bool()>& stop,
                           const std::function<void(int64_t step)>& on_resume) {
  Trainer trainer(std::move(model), options, std::move(objective), metadata);
  if (stop) trainer.should_stop = [stop](int64_t) { return stop(); };
  const auto& ckpt = options.checkpoint_path();
  if (!restart && !ckpt.empty() && file_exists(ckpt)) {
    trainer.load_checkpoint(ckpt);
    if (on_resume) on_resume(trainer.step());
  }
  return trainer.train();
}

void save_trained(const std::string& path, const Distribution& model, json metadata,
                  const TrainReport& report, const std::string& checkpoint,
                  const std::string& val_key) {
  metadata["best_step"] = report.best_step;
  metadata[val_key] = report.best_val;
  H5Writer w(path, "checkpoint", kCheckpointVersion);
  write_flow(w, model, metadata, report.steps_done);
  w.commit();
  if (!checkpoint.empty()) std::remove(checkpoint.c_str());
}

}  // namespace nfkit
