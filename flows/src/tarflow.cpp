// Transformer autoregressive flows (TARFlow, STARFlow) and their samplers (sequential with a
// key/value cache, Jacobi, GS-Jacobi). References and conventions: tarflow.h.
#include "nfkit/flows/tarflow.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"

namespace nfkit {

json TarFlowOptions::to_json() const {
  return {{"channels", channels_}, {"height", height_}, {"width", width_}, {"patch", patch_},
          {"blocks", blocks_}, {"layers", layers_}, {"hidden", hidden_}, {"head_dim", head_dim_},
          {"num_classes", num_classes_}, {"label_drop", label_drop_}, {"start", start_},
          {"scale", scale_}, {"soft_clip", soft_clip_}};
}

TarFlowOptions TarFlowOptions::from_json(const json& j) {
  return TarFlowOptions()
      .channels(j.at("channels").get<int64_t>())
      .height(j.at("height").get<int64_t>())
      .width(j.at("width").get<int64_t>())
      .patch(j.at("patch").get<int64_t>())
      .blocks(j.at("blocks").get<int64_t>())
      .layers(j.at("layers").get<int64_t>())
      .hidden(j.at("hidden").get<int64_t>())
      .head_dim(j.at("head_dim").get<int64_t>())
      .num_classes(j.at("num_classes").get<int64_t>())
      .label_drop(j.at("label_drop").get<double>())
      .start(j.at("start").get<std::string>())
      .scale(j.at("scale").get<std::string>())
      .soft_clip(j.at("soft_clip").get<double>());
}

// ---------------------------------------------------------------------------------------
// Causal transformer

CausalTransformerImpl::CausalTransformerImpl(int64_t positions, int64_t in_dim, int64_t out_dim,
                                             int64_t hidden, int64_t head_dim, int64_t layers,
                                             int64_t num_classes)
    : hidden_(hidden), heads_(hidden / head_dim), head_dim_(head_dim), num_classes_(num_classes) {
  in_proj_ = register_module("in_proj", torch::nn::Linear(in_dim, hidden));
  pos_emb_ = register_parameter("pos_emb", torch::randn({positions, hidden}) * 0.02);
  if (num_classes > 0) {
    class_proj_ = register_module(
        "class_proj", torch::nn::Linear(torch::nn::LinearOptions(num_classes, hidden).bias(false)));
    null_emb_ = register_parameter("null_emb", torch::zeros({hidden}));
    torch::NoGradGuard ng;
    class_proj_->weight.normal_(0.0, 0.02);
  }
  for (int64_t l = 0; l < layers; ++l) {
    const std::string s = std::to_string(l);
    ln1_.push_back(register_module("ln1_" + s, torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden}))));
    qkv_.push_back(register_module("qkv" + s, torch::nn::Linear(hidden, 3 * hidden)));
    attn_out_.push_back(register_module("attn_out" + s, torch::nn::Linear(hidden, hidden)));
    ln2_.push_back(register_module("ln2_" + s, torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden}))));
    fc1_.push_back(register_module("fc1_" + s, torch::nn::Linear(hidden, 4 * hidden)));
    fc2_.push_back(register_module("fc2_" + s, torch::nn::Linear(4 * hidden, hidden)));
  }
  ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
  out_proj_ = register_module("out_proj", torch::nn::Linear(hidden, out_dim));
  torch::NoGradGuard ng;
  out_proj_->weight.zero_();
  out_proj_->bias.zero_();
}

torch::Tensor CausalTransformerImpl::class_embedding(const torch::Tensor& onehot) {
  return class_proj_->forward(onehot) + (1.0 - onehot.sum(1, true)) * null_emb_;
}

torch::Tensor CausalTransformerImpl::forward(const torch::Tensor& u, int64_t pos0, KVCache* cache,
                                             const torch::Tensor& class_emb,
                                             double attn_temperature) {
  const int64_t B = u.size(0), n = u.size(1);
  const int64_t capacity = pos_emb_.size(0);
  NFKIT_ASSERT(cache ? cache->length == pos0 && pos0 + n <= capacity : pos0 == 0,
               "CausalTransformer: positions do not follow the cache");
  if (cache && cache->k.empty()) {
    const auto opts = u.options();
    for (size_t l = 0; l < qkv_.size(); ++l) {
      cache->k.push_back(torch::empty({B, heads_, capacity, head_dim_}, opts));
      cache->v.push_back(torch::empty({B, heads_, capacity, head_dim_}, opts));
    }
  }
  auto h = in_proj_->forward(u) + pos_emb_.narrow(0, pos0, n).unsqueeze(0);
  if (class_emb.defined()) h = h + class_emb.unsqueeze(1);
  const int64_t P = pos0 + n;  // keys: positions [0, P)
  torch::Tensor mask;
  if (n > 1)  // query i (position pos0 + i) sees keys j <= pos0 + i
    mask = torch::ones({n, P}, torch::TensorOptions().dtype(torch::kBool).device(u.device()))
               .triu(pos0 + 1);
  const double scale = 1.0 / (std::sqrt(static_cast<double>(head_dim_)) * attn_temperature);
  for (size_t l = 0; l < qkv_.size(); ++l) {
    auto qkv = qkv_[l]->forward(ln1_[l]->forward(h)).view({B, n, 3, heads_, head_dim_})
                   .permute({2, 0, 3, 1, 4});  // [3, B, H, n, hd]
    auto q = qkv[0], k = qkv[1], v = qkv[2];
    if (cache) {  // this pass's keys and values at [pos0, P); attend to [0, P)
      cache->k[l].narrow(2, pos0, n).copy_(k);
      cache->v[l].narrow(2, pos0, n).copy_(v);
      k = cache->k[l].narrow(2, 0, P);
      v = cache->v[l].narrow(2, 0, P);
    }
    auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;  // [B, H, n, P]
    if (mask.defined()) scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
    auto o = torch::matmul(torch::softmax(scores, -1), v);  // [B, H, n, hd]
    h = h + attn_out_[l]->forward(o.permute({0, 2, 1, 3}).reshape({B, n, hidden_}));
    h = h + fc2_[l]->forward(torch::gelu(fc1_[l]->forward(ln2_[l]->forward(h))));
  }
  return out_proj_->forward(ln_f_->forward(h));
}

// ---------------------------------------------------------------------------------------
// Names

SamplerKind parse_sampler(const std::string& s) {
  if (s == "sequential") return SamplerKind::kSequential;
  if (s == "jacobi") return SamplerKind::kJacobi;
  if (s == "gs-jacobi") return SamplerKind::kGSJacobi;
  usage_error("--sampler", "'" + s + "' is not a sampler, expected sequential, jacobi or gs-jacobi");
}

std::string sampler_name(SamplerKind k) {
  switch (k) {
    case SamplerKind::kSequential: return "sequential";
    case SamplerKind::kJacobi: return "jacobi";
    case SamplerKind::kGSJacobi: return "gs-jacobi";
  }
  return "?";
}

GuidanceKind parse_guidance(const std::string& s) {
  if (s == "none") return GuidanceKind::kNone;
  if (s == "cfg") return GuidanceKind::kCFG;
  if (s == "product") return GuidanceKind::kProduct;
  if (s == "attention") return GuidanceKind::kAttention;
  usage_error("--guidance", "'" + s + "' is not a guidance kind, expected none, cfg, product or attention");
}

std::tuple<torch::Tensor, torch::Tensor> product_guidance(const torch::Tensor& mu_c, const torch::Tensor& ls_c,
                                                          const torch::Tensor& mu_u, const torch::Tensor& ls_u,
                                                          const torch::Tensor& w) {
  const auto pc = torch::exp(-2.0 * ls_c);
  const auto pu = torch::minimum(torch::exp(-2.0 * ls_u), pc);  // capped: precision >= pc
  const auto prec = (1.0 + w) * pc - w * pu;
  return {((1.0 + w) * pc * mu_c - w * pu * mu_u) / prec, -0.5 * torch::log(prec)};
}

// ---------------------------------------------------------------------------------------
// TarFlow

namespace {
TarFlowOptions checked(TarFlowOptions o) {
  const char* fn = "TarFlow";
  check_positive_int(fn, "channels", o.channels());
  check_positive_int(fn, "height", o.height());
  check_positive_int(fn, "width", o.width());
  check_positive_int(fn, "patch", o.patch());
  check_positive_int(fn, "blocks", o.blocks());
  check_positive_int(fn, "layers", o.layers());
  check_positive_int(fn, "hidden", o.hidden());
  check_positive_int(fn, "head_dim", o.head_dim());
  if (o.height() % o.patch() != 0 || o.width() % o.patch() != 0)
    usage_error(fn, "patch " + std::to_string(o.patch()) + " does not divide the image size " +
                        std::to_string(o.height()) + "x" + std::to_string(o.width()));
  if (o.tokens() < 2) usage_error(fn, "needs at least 2 patches (tokens); use a smaller patch");
  if (o.hidden() % o.head_dim() != 0)
    usage_error(fn, "hidden " + std::to_string(o.hidden()) + " is not a multiple of head_dim " +
                        std::to_string(o.head_dim()));
  if (o.num_classes() < 0) usage_error(fn, "num_classes must be >= 0");
  check_in_range(fn, "label_drop", o.label_drop(), 0.0, 1.0);
  if (o.start() != "shift" && o.start() != "token")
    usage_error(fn, "start '" + o.start() + "' is not shift or token");
  if (o.scale() != "exp" && o.scale() != "softplus")
    usage_error(fn, "scale '" + o.scale() + "' is not exp or softplus");
  check_nonnegative(fn, "soft_clip", o.soft_clip());
  return o;
}
}  // namespace

TarFlow::TarFlow(TarFlowOptions opts)
    : Transform(checked(opts).dim(), opts.num_classes()), opts_(std::move(opts)) {
  T_ = opts_.tokens();
  D_ = opts_.token_dim();
  off_ = opts_.start() == "shift" ? 1 : 0;
  const int64_t positions = T_ - off_;
  for (int64_t b = 0; b < opts_.blocks(); ++b)
    nets_.push_back(register_module(
        "block" + std::to_string(b),
        CausalTransformer(positions, D_, 2 * D_, opts_.hidden(), opts_.head_dim(), opts_.layers(),
                          opts_.num_classes())));
  if (off_ == 0) start_ = register_parameter("start", torch::zeros({opts_.blocks(), D_}));
}

json TarFlow::config() const { return {{"type", "tarflow"}, {"options", opts_.to_json()}}; }

torch::Tensor TarFlow::patchify(const torch::Tensor& x) const {
  const int64_t B = x.size(0), C = opts_.channels(), p = opts_.patch();
  const int64_t hp = opts_.height() / p, wp = opts_.width() / p;
  return x.reshape({B, C, hp, p, wp, p}).permute({0, 2, 4, 3, 5, 1}).reshape({B, T_, D_});
}

torch::Tensor TarFlow::unpatchify(const torch::Tensor& t) const {
  const int64_t B = t.size(0), C = opts_.channels(), p = opts_.patch();
  const int64_t hp = opts_.height() / p, wp = opts_.width() / p;
  return t.reshape({B, hp, wp, p, p, C}).permute({0, 5, 1, 3, 2, 4}).reshape({B, dim()});
}

torch::Tensor TarFlow::reorder(int64_t b, const torch::Tensor& tokens) const {
  return b % 2 == 1 ? tokens.flip({1}) : tokens;
}

torch::Tensor TarFlow::log_sigma(const torch::Tensor& a) const {
  torch::Tensor ls = opts_.scale() == "exp" ? a : torch::log(torch::softplus(a + std::log(M_E - 1.0)));
  const double c = opts_.soft_clip();
  return c > 0 ? c * torch::tanh(ls / c) : ls;
}

torch::Tensor TarFlow::drop_labels(const torch::Tensor& context) {
  if (!context.defined() || !is_training() || opts_.label_drop() <= 0) return context;
  const auto keep = (torch::rand({context.size(0), 1}, context.options()) >= opts_.label_drop())
                        .to(context.scalar_type());
  return context * keep;
}

std::tuple<torch::Tensor, torch::Tensor> TarFlow::block_params(
    int64_t b, const torch::Tensor& u, int64_t p0, KVCache* cache, const torch::Tensor& cemb,
    double attn_temperature) {
  const auto out = nets_[b]->forward(u, p0, cache, cemb, attn_temperature);
  return {out.narrow(-1, 0, D_), log_sigma(out.narrow(-1, D_, D_))};
}

torch::Tensor TarFlow::block_inputs(int64_t b, const torch::Tensor& x) const {
  const auto head = x.narrow(1, 0, T_ - 1);
  if (off_ == 1) return head;
  return torch::cat({start_[b].view({1, 1, D_}).expand({x.size(0), 1, D_}), head}, 1);
}

std::tuple<torch::Tensor, torch::Tensor> TarFlow::block_forward(int64_t b, const torch::Tensor& x,
                                                                const torch::Tensor& cemb) {
  auto [mu, ls] = block_params(b, block_inputs(b, x), 0, nullptr, cemb, 1.0);
  const auto logdet = -ls.sum({1, 2});
  if (off_ == 1) {
    const auto rest = (x.narrow(1, 1, T_ - 1) - mu) * torch::exp(-ls);
    return {torch::cat({x.narrow(1, 0, 1), rest}, 1), logdet};
  }
  return {(x - mu) * torch::exp(-ls), logdet};
}

ValueAndLogDet TarFlow::forward_impl(const torch::Tensor& x, const torch::Tensor& context) {
  const auto c = drop_labels(context);
  auto tokens = patchify(x);
  torch::Tensor logdet = torch::zeros({x.size(0)}, x.options());
  for (int64_t b = 0; b < opts_.blocks(); ++b) {
    const auto cemb = opts_.num_classes() > 0 ? nets_[b]->class_embedding(c) : torch::Tensor();
    auto [z, ld] = block_forward(b, reorder(b, tokens), cemb);
    tokens = reorder(b, z);
    logdet = logdet + ld;
  }
  return {unpatchify(tokens), logdet};
}

ValueAndLogDet TarFlow::inverse_impl(const torch::Tensor& z, const torch::Tensor& context) {
  SampleOptions so;
  so.sampler = SamplerKind::kSequential;
  return sample_inverse(z, context, so);
}

torch::Tensor TarFlow::block_inverse(int64_t b, const torch::Tensor& z, const torch::Tensor& cemb,
                                     const torch::Tensor& cemb_neg, const SampleOptions& so,
                                     const BlockStrategy& strategy, int64_t* passes,
                                     int64_t* positions, int64_t* clamped, torch::Tensor* logdet) {
  const int64_t B = z.size(0);
  const int64_t s0 = 1 - off_;  // token t lives at seq index t + s0; position p reads seq[p]
  auto seq = torch::empty({B, T_ + s0, D_}, z.options());
  auto x = seq.narrow(1, s0, T_);
  if (strategy.init == "zeros")
    x.zero_();
  else
    x.copy_(z);
  if (off_ == 1) x.narrow(1, 0, 1).copy_(z.narrow(1, 0, 1));  // token 0 is not transformed
  else seq.narrow(1, 0, 1).copy_(start_[b].view({1, 1, D_}).expand({B, 1, D_}));

  const bool guided = so.guidance != GuidanceKind::kNone && so.guidance_weight != 0.0;
  const double w = so.guidance_weight;
  const double neg_temp = so.guidance == GuidanceKind::kAttention ? so.attn_temperature : 1.0;
  KVCache cache, cache_neg;

  // Guided (mu, log sigma) for positions [p0, p0 + n).
  auto params = [&](const torch::Tensor& u, int64_t p0) -> std::tuple<torch::Tensor, torch::Tensor> {
    auto [mu, ls] = block_params(b, u, p0, &cache, cemb, 1.0);
    if (!guided) return {mu, ls};
    auto [mu_n, ls_n] = block_params(b, u, p0, &cache_neg, cemb_neg, neg_temp);
    const int64_t n = u.size(1);
    torch::Tensor wt;
    if (so.guidance_anneal) {  // token index t = p + off runs 0..T-1 in this block's order
      wt = (torch::arange(p0 + off_, p0 + off_ + n, z.options()) * (w / std::max<int64_t>(1, T_ - 1)))
               .view({1, n, 1});
    } else {
      wt = torch::full({1, 1, 1}, w, z.options());
    }
    if (so.guidance == GuidanceKind::kProduct) return product_guidance(mu, ls, mu_n, ls_n, wt);
    return {(1.0 + wt) * mu - wt * mu_n, (1.0 + wt) * ls - wt * ls_n};
  };

  // Modules over the tokens that need solving, [first, T); a sliding window is one module
  // whose passes cover at most `window` tokens.
  const int64_t first = off_;
  const int64_t todo = T_ - first;
  const int64_t W = strategy.window;
  const int64_t M = W > 0 ? 1 : std::max<int64_t>(1, std::min<int64_t>(strategy.modules, todo));
  torch::Tensor ld = torch::zeros({B}, z.options());
  int64_t s = first;
  for (int64_t m = 0; m < M; ++m) {
    const int64_t e = first + (todo * (m + 1)) / M;
    const int64_t n = e - s, p0 = s - off_;
    if (n == 0) continue;
    const int64_t cap = strategy.max_iters > 0 ? std::min(strategy.max_iters, n) : n;
    // Jacobi with a frozen converged prefix: positions [0, q) of the module are final and in
    // the cache; each iteration recomputes positions [q, q + nq) only. When the first j active
    // tokens changed by less than tol, they and the next token (computed from them) are final:
    // q advances by j + 1 >= 1, so n iterations always suffice (the exact bound). A token that
    // has been active for `cap` passes is frozen as it is.
    auto ls_mod = torch::zeros({B, n, D_}, z.options());
    std::vector<int64_t> entered(n, 0);  // pass at which a token first became active
    int64_t q = 0, reached = 0;
    for (int64_t it = 1; q < n; ++it) {
      const int64_t nq = W > 0 ? std::min(W, n - q) : n - q, pq = p0 + q;
      for (; reached < q + nq; ++reached) entered[reached] = it;
      auto [mu, ls] = params(seq.narrow(1, pq, nq), pq);
      auto xn = mu + torch::exp(ls) * z.narrow(1, s + q, nq);
      // Sanitise (measured: one reduction and a host sync is cheaper than sanitising always;
      // the max of |x| is NaN when any value is, so one test catches NaN, inf and overflow).
      const double amax = xn.abs().max().item<double>();
      if (!(amax <= so.clamp)) {
        *clamped += ((~torch::isfinite(xn)) | (xn.abs() > so.clamp)).sum().item<int64_t>();
        xn = torch::nan_to_num(xn, 0.0, so.clamp, -so.clamp).clamp_(-so.clamp, so.clamp);
        ls = torch::nan_to_num(ls, 0.0, 0.0, 0.0);
      }
      ++*passes;
      *positions += nq;
      auto xt = seq.narrow(1, s + q + s0, nq);
      int64_t aged = 0;  // leading active tokens that reached the cap
      while (aged < nq && it - entered[q + aged] + 1 >= cap) ++aged;
      int64_t commit = nq;  // positions to freeze after this iteration
      if (aged < nq && nq > 1) {
        torch::Tensor unconverged;  // [nq] per token, over batch and values
        if (so.relative_tol > 0) {
          const auto d = (xn - xt).pow(2).sum(torch::IntArrayRef{0, 2}).sqrt();
          const auto r = xn.pow(2).sum(torch::IntArrayRef{0, 2}).sqrt().clamp_min(1e-30);
          unconverged = d / r >= so.relative_tol;
        } else {
          unconverged = (xn - xt).abs().amax({0, 2}) >= so.tol;
        }
        // j = leading converged tokens; tokens [0, j] are final (j + 1 positions).
        const int64_t j = unconverged.to(torch::kInt64).cumsum(0).eq(0).sum().item<int64_t>();
        commit = std::max(aged, std::min(nq, j + 1));
      }
      xt.copy_(xn);
      ls_mod.narrow(1, q, nq).copy_(ls);
      // Keys/values of the frozen positions enter the cache (their inputs are final within tol).
      cache.commit(commit);
      if (guided) cache_neg.commit(commit);
      q += commit;
    }
    ld = ld + ls_mod.sum({1, 2});
    s = e;
  }
  *logdet = *logdet + ld;
  return x.clone();
}

ValueAndLogDet TarFlow::sample_inverse(const torch::Tensor& z, const torch::Tensor& context,
                                       const SampleOptions& so, SampleStats* stats) {
  const char* fn = "TarFlow::sample_inverse";
  check_dim(fn, "z", z, 2);
  check_size(fn, "z", z, 1, dim());
  const int64_t K = opts_.num_classes();
  if (context.defined()) {
    if (K == 0) usage_error(fn, "an unconditional model takes no context (labels)");
    check_dim(fn, "context", context, 2);
    check_size(fn, "context", context, 0, z.size(0));
    check_size(fn, "context", context, 1, K);
  }
  if ((so.guidance == GuidanceKind::kCFG || so.guidance == GuidanceKind::kProduct) &&
      so.guidance_weight != 0.0 && K == 0)
    usage_error("--guidance", "classifier-free guidance needs a class-conditional model; use "
                              "attention guidance for unconditional models");
  if (so.guidance == GuidanceKind::kAttention) check_positive(fn, "attn_temperature", so.attn_temperature);
  if (!so.blocks.empty() && static_cast<int64_t>(so.blocks.size()) != opts_.blocks())
    usage_error(fn, "blocks holds " + std::to_string(so.blocks.size()) + " strategies for " +
                        std::to_string(opts_.blocks()) + " blocks");
  torch::NoGradGuard ng;
  const int64_t B = z.size(0);
  const auto c = K > 0 ? (context.defined() ? context.to(z.options())
                                            : torch::zeros({B, K}, z.options()))
                       : torch::Tensor();
  if (stats) *stats = SampleStats{};
  auto tokens = patchify(z);
  torch::Tensor logdet = torch::zeros({B}, z.options());
  std::vector<int64_t> iters(opts_.blocks()), poss(opts_.blocks());
  int64_t clamped = 0;
  for (int64_t b = opts_.blocks() - 1; b >= 0; --b) {
    BlockStrategy st;
    switch (so.sampler) {
      case SamplerKind::kSequential: st.modules = T_; st.max_iters = 1; break;
      case SamplerKind::kJacobi: st.modules = 1; st.init = so.init; break;
      case SamplerKind::kGSJacobi:
        if (so.blocks.empty()) {
          st.modules = so.modules;
          st.window = so.window;
          st.init = so.init;
        } else {
          st = so.blocks[b];
        }
        break;
    }
    if (st.init != "latent" && st.init != "zeros")
      usage_error(fn, "initial guess '" + st.init + "' is not latent or zeros");
    torch::Tensor cemb, cemb_neg;
    if (K > 0) {
      cemb = nets_[b]->class_embedding(c);
      cemb_neg = so.guidance == GuidanceKind::kAttention ? cemb
                                                         : nets_[b]->class_embedding(torch::zeros_like(c));
    }
    const auto xb = block_inverse(b, reorder(b, tokens), cemb, cemb_neg, so, st, &iters[b],
                                  &poss[b], &clamped, &logdet);
    tokens = reorder(b, xb);
  }
  if (stats) {
    stats->iterations = iters;
    stats->token_positions = poss;
    stats->clamped = clamped;
  }
  return {unpatchify(tokens), logdet};
}

std::vector<BlockMetrics> TarFlow::block_metrics(const torch::Tensor& x, const torch::Tensor& context,
                                                 int64_t modules, double tol, double crm_fraction) {
  const char* fn = "TarFlow::block_metrics";
  check_dim(fn, "x", x, 2);
  check_size(fn, "x", x, 1, dim());
  torch::NoGradGuard ng;
  const bool was_training = is_training();
  eval();
  const int64_t B = x.size(0), K = opts_.num_classes();
  const auto c = K > 0 ? (context.defined() ? context.to(x.options()) : torch::zeros({B, K}, x.options()))
                       : torch::Tensor();
  std::vector<BlockMetrics> out(opts_.blocks());
  auto tokens = patchify(x);
  auto rel = [](const torch::Tensor& a, const torch::Tensor& ref) {  // mean ||a - ref|| / ||ref||
    return ((a - ref).flatten(1).norm(2, 1) / ref.flatten(1).norm(2, 1).clamp_min(1e-12)).mean().item<double>();
  };
  for (int64_t b = 0; b < opts_.blocks(); ++b) {
    const auto cemb = K > 0 ? nets_[b]->class_embedding(c) : torch::Tensor();
    const auto xs = reorder(b, tokens);  // the block's input = the inverse's solution x*
    // A named tensor, not a structured binding: C++17 lambdas cannot capture bindings (clang).
    const torch::Tensor z = std::get<0>(block_forward(b, xs, cemb));
    // One Jacobi update g(x) = mu(x) + sigma(x) z, from a full causal pass.
    auto g = [&](const torch::Tensor& xg) {
      auto [mu, ls] = block_params(b, block_inputs(b, xg), 0, nullptr, cemb, 1.0);
      const auto upd = mu + torch::exp(ls) * z.narrow(1, off_, T_ - off_);
      return off_ == 1 ? torch::cat({z.narrow(1, 0, 1), upd}, 1) : upd;
    };
    auto guess = [&](const std::string& kind) {
      auto x0 = kind == "zeros" ? torch::zeros_like(z) : z.clone();
      if (off_ == 1) x0.narrow(1, 0, 1).copy_(z.narrow(1, 0, 1));
      return x0;
    };
    // IGM: relative error after one Jacobi update from the guess (a guess that the first
    // update amplifies, or that overflows, scores badly).
    BlockMetrics& bm = out[b];
    bm.igm_latent = rel(g(guess("latent")), xs);
    bm.igm_zeros = rel(g(guess("zeros")), xs);
    if (!std::isfinite(bm.igm_latent)) bm.igm_latent = INFINITY;
    if (!std::isfinite(bm.igm_zeros)) bm.igm_zeros = INFINITY;
    bm.chosen.init = bm.igm_zeros < bm.igm_latent ? "zeros" : "latent";
    // CRM: gain of one Jacobi update on a small error along the chosen guess's error
    // direction, ||g(x* + eps v) - x*|| / ||eps v|| (the error amplification per iteration).
    const auto v = guess(bm.chosen.init) - xs;
    const double eps = 1e-2;
    const auto vn = v.flatten(1).norm(2, 1).clamp_min(1e-12).view({B, 1, 1});
    const auto dx = eps * v / vn;
    bm.crm = ((g(xs + dx) - xs).flatten(1).norm(2, 1) / eps).mean().item<double>();
    // Measured plain-Jacobi iterations from the chosen guess.
    SampleOptions so;
    so.tol = tol;
    BlockStrategy st;
    st.init = bm.chosen.init;
    int64_t passes = 0, positions = 0, clamped = 0;
    torch::Tensor dummy = torch::zeros({B}, x.options());
    block_inverse(b, z, cemb, cemb, so, st, &passes, &positions, &clamped, &dummy);
    bm.jacobi_iters = static_cast<double>(passes);
    tokens = reorder(b, z);
  }
  double max_crm = 0;
  for (const auto& bm : out) max_crm = std::max(max_crm, bm.crm);
  for (auto& bm : out) bm.chosen.modules = bm.crm >= crm_fraction * max_crm ? modules : 1;
  if (was_training) train();
  return out;
}

std::shared_ptr<Flow> make_tarflow(const TarFlowOptions& opts) {
  auto t = std::make_shared<TarFlow>(opts);
  return std::make_shared<Flow>(std::make_shared<StandardNormal>(t->dim()), t);
}

}  // namespace nfkit
