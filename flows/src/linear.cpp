#include "nfkit/flows/linear.h"

#include <torch/torch.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "nfkit/core/checks.h"

namespace nfkit {
namespace {
std::vector<int64_t> seeded_permutation(int64_t dim, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(dim));
  std::iota(p.begin(), p.end(), 0);
  if (seed == 0) return p;
  std::mt19937_64 rng(seed);
  // Fisher-Yates with our own index draw: std::shuffle's output differs between libraries.
  for (size_t i = p.size(); i > 1; --i) std::swap(p[i - 1], p[rng() % i]);
  return p;
}
}  // namespace

Permutation::Permutation(std::vector<int64_t> perm)
    : Transform(static_cast<int64_t>(perm.size()), 0), perm_(std::move(perm)) {
  std::vector<int64_t> sorted = perm_;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i)
    if (sorted[i] != static_cast<int64_t>(i))
      usage_error("Permutation", "perm is not a permutation of 0.." + std::to_string(sorted.size() - 1));
  fwd_ = torch::tensor(perm_, torch::kInt64);
  inv_ = torch::argsort(fwd_);
}

std::shared_ptr<Permutation> Permutation::reverse(int64_t dim) {
  std::vector<int64_t> p(static_cast<size_t>(dim));
  for (int64_t i = 0; i < dim; ++i) p[i] = dim - 1 - i;
  return std::make_shared<Permutation>(p);
}

std::shared_ptr<Permutation> Permutation::random(int64_t dim, uint64_t seed) {
  return std::make_shared<Permutation>(seeded_permutation(dim, seed == 0 ? 1 : seed));
}

json Permutation::config() const { return {{"type", "permutation"}, {"permutation", perm_}}; }

ValueAndLogDet Permutation::forward_impl(const torch::Tensor& x, const torch::Tensor&) {
  if (fwd_.device() != x.device()) {
    fwd_ = fwd_.to(x.device());
    inv_ = inv_.to(x.device());
  }
  return {x.index_select(1, fwd_), torch::zeros({x.size(0)}, x.options())};
}

ValueAndLogDet Permutation::inverse_impl(const torch::Tensor& z, const torch::Tensor&) {
  if (inv_.device() != z.device()) {
    fwd_ = fwd_.to(z.device());
    inv_ = inv_.to(z.device());
  }
  return {z.index_select(1, inv_), torch::zeros({z.size(0)}, z.options())};
}

// ------------------------------------------------------------------ LU

namespace {
// softplus(u) + eps = 1 at initialisation.
constexpr double kMinDiag = 1e-3;
double identity_diag_parameter() { return std::log(std::expm1(1.0 - kMinDiag)); }
}  // namespace

LULinear::LULinear(const LULinearOptions& opts) : Transform(opts.dim(), 0), opts_(opts) {
  const int64_t d = opts.dim();
  lower_ = register_parameter("lower", torch::zeros({d, d}));
  upper_ = register_parameter("upper", torch::zeros({d, d}));
  unconstrained_diag_ =
      register_parameter("unconstrained_diag", torch::full({d}, identity_diag_parameter()));
  bias_ = register_parameter("bias", torch::zeros({d}));
  const auto p = seeded_permutation(d, opts.seed());
  auto pm = torch::zeros({d, d});
  for (int64_t i = 0; i < d; ++i) pm[i][p[i]] = 1.0;
  perm_matrix_ = register_buffer("perm_matrix", pm);
}

json LULinear::config() const {
  return {{"type", "lu_linear"}, {"options", {{"dim", opts_.dim()}, {"seed", opts_.seed()}}}};
}

std::tuple<torch::Tensor, torch::Tensor> LULinear::factors() const {
  const auto eye = torch::eye(dim(), lower_.options());
  const auto L = torch::tril(lower_, -1) + eye;
  const auto U = torch::triu(upper_, 1) +
                 torch::diag(torch::softplus(unconstrained_diag_) + kMinDiag);
  return {L, U};
}

torch::Tensor LULinear::weight() const {
  auto [L, U] = factors();
  return perm_matrix_.matmul(L).matmul(U);
}

ValueAndLogDet LULinear::forward_impl(const torch::Tensor& x, const torch::Tensor&) {
  const auto lad = torch::log(torch::softplus(unconstrained_diag_) + kMinDiag).sum();
  return {torch::addmm(bias_, x, weight().t()), lad.expand({x.size(0)})};
}

ValueAndLogDet LULinear::inverse_impl(const torch::Tensor& z, const torch::Tensor&) {
  auto [L, U] = factors();
  // x = U^-1 L^-1 P^T (z - b), as columns: rhs [D, B].
  const auto rhs = perm_matrix_.t().matmul((z - bias_).t());
  const auto w = torch::linalg_solve_triangular(L, rhs, /*upper=*/false, /*left=*/true,
                                                /*unitriangular=*/true);
  const auto x = torch::linalg_solve_triangular(U, w, /*upper=*/true);
  const auto lad = -torch::log(torch::softplus(unconstrained_diag_) + kMinDiag).sum();
  return {x.t(), lad.expand({z.size(0)})};
}

}  // namespace nfkit
