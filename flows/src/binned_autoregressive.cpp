// Autoregressive density with categorical conditionals over uniform bins (ArBG's model);
// references and conventions in binned_autoregressive.h.
#include "nfkit/flows/binned_autoregressive.h"

#include <torch/torch.h>

#include <cmath>
#include <numeric>

#include "nfkit/core/checks.h"
#include "nfkit/core/error.h"

namespace nfkit {

json BinnedAutoregressiveOptions::to_json() const {
  return {{"dim", dim}, {"bins", bins}, {"layers", layers}, {"hidden", hidden},
          {"head_dim", head_dim}, {"order", order}};
}

BinnedAutoregressiveOptions BinnedAutoregressiveOptions::from_json(const json& j) {
  BinnedAutoregressiveOptions o;
  o.dim = j.at("dim").get<int64_t>();
  o.bins = j.at("bins").get<int64_t>();
  o.layers = j.at("layers").get<int64_t>();
  o.hidden = j.at("hidden").get<int64_t>();
  o.head_dim = j.at("head_dim").get<int64_t>();
  o.order = j.at("order").get<std::vector<int64_t>>();
  return o;
}

namespace {
std::vector<int64_t> checked_order(const BinnedAutoregressiveOptions& o) {
  const char* fn = "BinnedAutoregressive";
  if (o.order.empty()) {
    std::vector<int64_t> id(static_cast<size_t>(o.dim));
    std::iota(id.begin(), id.end(), 0);
    return id;
  }
  if (static_cast<int64_t>(o.order.size()) != o.dim)
    usage_error(fn, "order has " + std::to_string(o.order.size()) + " entries, expected dim = " +
                        std::to_string(o.dim));
  std::vector<bool> seen(static_cast<size_t>(o.dim), false);
  for (int64_t d : o.order) {
    if (d < 0 || d >= o.dim || seen[static_cast<size_t>(d)])
      usage_error(fn, "order is not a permutation of 0.." + std::to_string(o.dim - 1));
    seen[static_cast<size_t>(d)] = true;
  }
  return o.order;
}
}  // namespace

BinnedAutoregressive::BinnedAutoregressive(BinnedAutoregressiveOptions opts, const torch::Tensor& low,
                                           const torch::Tensor& high)
    : Distribution(opts.dim, 0), opts_(std::move(opts)) {
  const char* fn = "BinnedAutoregressive";
  check_positive_int(fn, "bins", opts_.bins);
  check_positive_int(fn, "layers", opts_.layers);
  check_positive_int(fn, "hidden", opts_.hidden);
  check_positive_int(fn, "head_dim", opts_.head_dim);
  if (opts_.hidden % opts_.head_dim != 0)
    usage_error(fn, "hidden (" + std::to_string(opts_.hidden) + ") is not a multiple of head_dim (" +
                        std::to_string(opts_.head_dim) + ")");
  opts_.order = checked_order(opts_);
  check_dim(fn, "low", low, 1);
  check_dim(fn, "high", high, 1);
  check_size(fn, "low", low, 0, opts_.dim);
  check_size(fn, "high", high, 0, opts_.dim);
  check_finite(fn, "low", low);
  check_finite(fn, "high", high);
  if (!(high > low).all().item<bool>())
    usage_error(fn, "every coordinate's box needs low < high");
  low_ = register_buffer("low", low.to(torch::kFloat32).clone());
  high_ = register_buffer("high", high.to(torch::kFloat32).clone());
  order_ = torch::tensor(opts_.order, torch::kLong);
  embed_ = register_module("embed", torch::nn::Embedding(opts_.bins + 1, opts_.hidden));
  net_ = register_module("net", CausalTransformer(opts_.dim, opts_.hidden, opts_.bins, opts_.hidden,
                                                  opts_.head_dim, opts_.layers, 0));
  torch::NoGradGuard ng;
  embed_->weight.normal_(0.0, 0.02);
}

void BinnedAutoregressive::set_temperature(double T) {
  check_positive("BinnedAutoregressive::set_temperature", "T", T);
  temperature_ = T;
}

void BinnedAutoregressive::set_top_p(double p) {
  check_in_range("BinnedAutoregressive::set_top_p", "top_p", p, 0.0, 1.0, /*open_lo=*/true);
  top_p_ = p;
}

json BinnedAutoregressive::config() const {
  auto to_vec = [](const torch::Tensor& t) {
    auto c = t.to(torch::kFloat64).contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  return {{"type", "binned_autoregressive"}, {"options", opts_.to_json()},
          {"low", to_vec(low_)}, {"high", to_vec(high_)}};
}

torch::Tensor BinnedAutoregressive::unclamped_bins(const torch::Tensor& x) const {
  const auto w = (high_ - low_) / static_cast<double>(opts_.bins);
  return ((x.to(low_.dtype()) - low_) / w).floor();
}

torch::Tensor BinnedAutoregressive::clamped(const torch::Tensor& u) const {
  return u.nan_to_num(0.0).clamp(0, opts_.bins - 1).to(torch::kLong);
}

torch::Tensor BinnedAutoregressive::outside_rows(const torch::Tensor& u) const {
  return ((u < 0) | (u >= opts_.bins) | u.isnan()).any(1);  // inside: every bin in [0, K)
}

torch::Tensor BinnedAutoregressive::bin_index(const torch::Tensor& x) const { return clamped(unclamped_bins(x)); }

int64_t BinnedAutoregressive::count_outside(const torch::Tensor& x) const {
  const char* fn = "BinnedAutoregressive::count_outside";
  check_dim(fn, "x", x, 2);
  check_size(fn, "x", x, 1, dim());
  return outside_rows(unclamped_bins(x)).sum().item<int64_t>();
}

torch::Tensor BinnedAutoregressive::logits(const torch::Tensor& prev, int64_t pos0, KVCache* cache) {
  return net_->forward(embed_->forward(prev), pos0, cache, {});
}

torch::Tensor BinnedAutoregressive::filtered_log_softmax(const torch::Tensor& logits) const {
  auto l = temperature_ == 1.0 ? logits : logits / temperature_;
  if (top_p_ < 1.0) {
    // Keep the smallest set of most probable bins whose mass reaches top_p: a bin stays when
    // the mass of the bins ranked before it is still below top_p (so the first always stays).
    const auto [sorted, idx] = torch::sort(l.detach(), /*stable=*/true, -1, /*descending=*/true);
    const auto p = torch::softmax(sorted, -1);
    const auto before = p.cumsum(-1) - p;
    const auto drop_sorted = before >= top_p_;
    const auto drop = torch::zeros_like(drop_sorted).scatter(-1, idx, drop_sorted);
    l = l.masked_fill(drop, -std::numeric_limits<double>::infinity());
  }
  return torch::log_softmax(l, -1);
}

torch::Tensor BinnedAutoregressive::token_log_probs(const torch::Tensor& k_tok) {
  const auto start = torch::full({k_tok.size(0), 1}, opts_.bins, k_tok.options());
  const auto prev = torch::cat({start, k_tok.narrow(1, 0, dim() - 1)}, 1);
  return filtered_log_softmax(logits(prev, 0, nullptr));
}

torch::Tensor BinnedAutoregressive::conditional_log_probs(const torch::Tensor& x) {
  const char* fn = "BinnedAutoregressive::conditional_log_probs";
  check_dim(fn, "x", x, 2);
  check_size(fn, "x", x, 1, dim());
  return token_log_probs(bin_index(x).index_select(1, order_.to(x.device())));
}

torch::Tensor BinnedAutoregressive::log_prob_impl(const torch::Tensor& x, const torch::Tensor&) {
  const auto u = unclamped_bins(x);  // one bin computation for the bins and the box test
  const auto k = clamped(u).index_select(1, order_.to(x.device()));
  const auto out = token_log_probs(k).gather(2, k.unsqueeze(2)).squeeze(2).sum(1);
  const auto log_width = ((high_ - low_) / static_cast<double>(opts_.bins)).log().sum();
  // Outside the box: -inf (those coordinates were clamped into the end bins above).
  return (out - log_width).masked_fill(outside_rows(u), -std::numeric_limits<double>::infinity()).to(x.dtype());
}

std::tuple<torch::Tensor, torch::Tensor> BinnedAutoregressive::sample_impl(int64_t n, const torch::Tensor& ctx) {
  // The key/value cache holds 2 x layers x dim x hidden numbers per row (0.5 MB for alanine
  // dipeptide's 66 tokens at width 128, 4 layers, float64): draw in chunks of 512 rows.
  constexpr int64_t kChunk = 512;
  if (n > kChunk) {
    std::vector<torch::Tensor> xs, lqs;
    for (int64_t done = 0; done < n; done += kChunk) {
      auto [x, lq] = sample_impl(std::min(kChunk, n - done), ctx);
      xs.push_back(x);
      lqs.push_back(lq);
    }
    return {torch::cat(xs), torch::cat(lqs)};
  }
  torch::NoGradGuard ng;
  const int64_t D = dim(), K = opts_.bins;
  const auto lopts = torch::TensorOptions().dtype(torch::kLong).device(low_.device());
  auto prev = torch::full({n, 1}, K, lopts);
  auto log_q = torch::zeros({n}, low_.options());
  std::vector<torch::Tensor> bins;
  bins.reserve(static_cast<size_t>(D));
  KVCache cache;
  for (int64_t t = 0; t < D; ++t) {
    const auto lp = filtered_log_softmax(logits(prev, t, &cache)).squeeze(1);  // [n, K]
    cache.commit(1);
    const auto k = torch::multinomial(lp.exp(), 1);  // [n, 1]
    log_q += lp.gather(1, k).squeeze(1);
    bins.push_back(k);
    prev = k;
  }
  const auto order = order_.to(low_.device());
  const auto k_tok = torch::cat(bins, 1);  // [n, D] token order
  const auto k = torch::empty_like(k_tok).index_copy_(1, order, k_tok);  // coordinate order
  const auto w = (high_ - low_) / static_cast<double>(K);
  const auto x = low_ + (k.to(low_.dtype()) + torch::rand({n, D}, low_.options())) * w;
  log_q -= w.log().sum();
  return {x, log_q};
}

std::shared_ptr<BinnedAutoregressive> make_binned_autoregressive(BinnedAutoregressiveOptions opts,
                                                                 const torch::Tensor& train_x,
                                                                 double margin) {
  const char* fn = "make_binned_autoregressive";
  check_dim(fn, "train_x", train_x, 2);
  check_size(fn, "train_x", train_x, 1, opts.dim);
  check_finite(fn, "train_x", train_x);
  check_nonnegative(fn, "margin", margin);
  const auto x = train_x.to(torch::kFloat64);
  const auto lo = std::get<0>(x.min(0)), hi = std::get<0>(x.max(0));
  auto pad = (hi - lo) * margin;
  pad = torch::where(pad > 0, pad, torch::full_like(pad, margin > 0 ? margin : 1e-6));
  return std::make_shared<BinnedAutoregressive>(std::move(opts), lo - pad, hi + pad);
}

}  // namespace nfkit
