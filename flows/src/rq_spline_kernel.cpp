// Fused rational-quadratic spline on the CPU. The softmax and softplus normalisations of the
// parameters stay vectorised ATen ops; per element (x; K bin fractions of width and of height,
// K-1 or K knot derivatives) the kernel builds the knots (cumulative sums), finds the bin and
// evaluates (Durkan et al. 2019, eqs. 4-8)
//   xi = (x - x_k) / w_k,  s = h_k / w_k,  q = xi (1 - xi),  delta = d_k + d_{k+1} - 2 s
//   y  = y_k + h_k N / Dn,           N  = s xi^2 + d_k q,       Dn = s + delta q
//   log dy/dx = 2 log s + log M - 2 log Dn,   M = d_{k+1} xi^2 + 2 s q + d_k (1 - xi)^2.
// The backward pass differentiates these by hand and chains through the cumulative sums. The inverse direction solves the quadratic for xi and
// differentiates implicitly: dx/dy = 1 / y'(x), dx/dtheta = -(dy/dtheta) / y'(x).
#include "rq_spline_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>

#include "nfkit/core/error.h"

namespace nfkit::detail {
namespace {

template <typename T>
struct Spline {
  int64_t K;
  T bound, min_bin, min_d;
  bool circular;

  // Per-element scratch.
  T sw[kMaxKernelBins], sh[kMaxKernelBins];              // bin fractions (softmax outputs)
  T xk[kMaxKernelBins + 1], yk[kMaxKernelBins + 1];      // knots
  T d[kMaxKernelBins + 1];                                // knot derivatives

  // Knots from softmax-normalised bin fractions s (sum 1): sizes 2B(min + (1 - K min) s_j).
  void knots(const T* frac, T* s, T* k) const {
    const T c = 2 * bound * (1 - min_bin * K);
    k[0] = -bound;
    for (int64_t j = 0; j < K; ++j) s[j] = frac[j];
    for (int64_t j = 0; j + 1 < K; ++j) k[j + 1] = k[j] + 2 * bound * min_bin + c * s[j];
    k[K] = bound;  // pinned: the boundaries are fixed points
  }

  // fw, fh: bin fractions (softmax outputs); dv: the positive knot derivatives (interior
  // ones in interval mode, all K in circular mode).
  void setup(const T* fw, const T* fh, const T* dv) {
    knots(fw, sw, xk);
    knots(fh, sh, yk);
    const int64_t nd = circular ? K : K - 1;
    for (int64_t j = 0; j < nd; ++j) d[circular ? j : j + 1] = dv[j];
    if (circular) {
      d[K] = d[0];
    } else {
      d[0] = 1;
      d[K] = 1;
    }
  }

  // Bin of v among knots k[0..K]: number of interior knots <= v.
  int64_t bin(const T* k, T v) const {
    int64_t b = 0;
    while (b + 1 < K && k[b + 1] <= v) ++b;
    return b;
  }

  struct Local {
    int64_t k;
    T xi, w, h, s, q, delta, N, Dn, M;
  };

  Local local_at(int64_t k, T xi) const {
    Local L;
    L.k = k;
    L.xi = xi;
    L.w = xk[k + 1] - xk[k];
    L.h = yk[k + 1] - yk[k];
    L.s = L.h / L.w;
    L.q = xi * (1 - xi);
    L.delta = d[k] + d[k + 1] - 2 * L.s;
    L.N = L.s * xi * xi + d[k] * L.q;
    L.Dn = L.s + L.delta * L.q;
    L.M = d[k + 1] * xi * xi + 2 * L.s * L.q + d[k] * (1 - xi) * (1 - xi);
    return L;
  }

  // dy/dx = s^2 M / Dn^2 and its log (one log instead of three).
  static T slope(const Local& L) { return L.s * L.s * L.M / (L.Dn * L.Dn); }
  T lad(const Local& L) const { return std::log(slope(L)); }

  static T clamp01(T v) { return v < 0 ? T(0) : (v > 1 ? T(1) : v); }

  // Forward map of v (inside the interval): local state, y.
  Local forward_local(T v, T& y) const {
    const int64_t k = bin(xk, v);
    const T w = xk[k + 1] - xk[k];
    Local L = local_at(k, clamp01((v - xk[k]) / w));
    y = yk[k] + L.h * L.N / L.Dn;
    return L;
  }

  // Inverse map of v: local state at the solution, x.
  Local inverse_local(T v, T& x) const {
    const int64_t k = bin(yk, v);
    const T w = xk[k + 1] - xk[k], h = yk[k + 1] - yk[k], s = h / w;
    const T delta = d[k] + d[k + 1] - 2 * s, dy = v - yk[k];
    const T a = h * (s - d[k]) + dy * delta, b = h * d[k] - dy * delta, c = -s * dy;
    const T disc = std::max(T(0), b * b - 4 * a * c);
    const T xi = clamp01((2 * c) / (-b - std::sqrt(disc)));
    x = xi * w + xk[k];
    return local_at(k, xi);
  }

  // Gradients of gy * y + gl * lad (forward map, at fixed x) with respect to the local
  // quantities; accumulates the gradients of the bin fractions and knot derivatives into
  // gw, gh, gd and
  // returns d(gy y + gl lad)/dx.
  T backward(const Local& L, T gy, T gl, T* gw, T* gh, T* gd) const {
    const T xi = L.xi, omx = 1 - xi;
    const T gN = gy * L.h / L.Dn;
    const T gDn = -gy * L.h * L.N / (L.Dn * L.Dn) - 2 * gl / L.Dn;
    const T gM = gl / L.M;
    const T dN_dxi = 2 * L.s * xi + d[L.k] * (1 - 2 * xi);
    const T dDn_dxi = L.delta * (1 - 2 * xi);
    const T dM_dxi = 2 * d[L.k + 1] * xi + 2 * L.s * (1 - 2 * xi) - 2 * d[L.k] * omx;
    const T g_xi = gN * dN_dxi + gDn * dDn_dxi + gM * dM_dxi;
    const T g_s = gN * xi * xi + gDn * (1 - 2 * L.q) + gM * 2 * L.q + gl * 2 / L.s;
    const T g_dk = gN * L.q + gDn * L.q + gM * omx * omx;
    const T g_dk1 = gDn * L.q + gM * xi * xi;
    // s = h / w; xi = (x - x_k) / w; y_k, x_k, w, h from the knots.
    const T g_h = gy * L.N / L.Dn + g_s / L.w;
    const T g_w = -g_s * L.s / L.w - g_xi * xi / L.w;
    const T g_xk = -g_xi / L.w;
    const T g_yk = gy;
    // Knots to bin sizes: x_k = -B + sum_{j<k} width_j, w = width_k (same for heights).
    T gwidth[kMaxKernelBins], gheight[kMaxKernelBins];
    for (int64_t j = 0; j < K; ++j) {
      gwidth[j] = (j < L.k ? g_xk : T(0)) + (j == L.k ? g_w : T(0));
      gheight[j] = (j < L.k ? g_yk : T(0)) + (j == L.k ? g_h : T(0));
    }
    // Bin sizes to bin fractions: size_j = 2B(min + (1 - K min) frac_j).
    const T c = 2 * bound * (1 - min_bin * K);
    for (int64_t j = 0; j < K; ++j) {
      gw[j] += c * gwidth[j];
      gh[j] += c * gheight[j];
    }
    auto add_d = [&](int64_t knot, T g) {
      if (circular)
        gd[knot == K ? 0 : knot] += g;
      else if (knot > 0 && knot < K)
        gd[knot - 1] += g;
    };
    add_d(L.k, g_dk);
    add_d(L.k + 1, g_dk1);
    return g_xi / L.w;
  }

  // d lad / dx at fixed parameters (for the implicit inverse gradients).
  T dlad_dx(const Local& L) const {
    const T xi = L.xi;
    const T dDn_dxi = L.delta * (1 - 2 * xi);
    const T dM_dxi = 2 * d[L.k + 1] * xi + 2 * L.s * (1 - 2 * xi) - 2 * d[L.k] * (1 - xi);
    return (dM_dxi / L.M - 2 * dDn_dxi / L.Dn) / L.w;
  }
};

template <typename T>
Spline<T> make_spline(int64_t K, double bound, double min_bin, double min_d, bool circular) {
  Spline<T> sp;
  sp.K = K;
  sp.bound = static_cast<T>(bound);
  sp.min_bin = static_cast<T>(min_bin);
  sp.min_d = static_cast<T>(min_d);
  sp.circular = circular;
  return sp;
}

struct Config {
  bool inverse, circular;
  double bound, min_bin, min_d;
};

void forward_kernel(const torch::Tensor& x, const torch::Tensor& uw, const torch::Tensor& uh,
                    const torch::Tensor& ud, const Config& cfg, torch::Tensor& out,
                    torch::Tensor& lad) {
  const int64_t n = x.numel(), K = uw.size(-1), Kd = ud.size(-1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_spline_forward", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pw = uw.data_ptr<scalar_t>();
    const scalar_t* ph = uh.data_ptr<scalar_t>();
    const scalar_t* pd = ud.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    scalar_t* pl = lad.data_ptr<scalar_t>();
    at::parallel_for(0, n, 512, [&](int64_t begin, int64_t end) {
      auto sp = make_spline<scalar_t>(K, cfg.bound, cfg.min_bin, cfg.min_d, cfg.circular);
      const scalar_t B = sp.bound;
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t v0 = px[i];
        if (!cfg.circular && (v0 < -B || v0 > B)) {  // identity tails
          po[i] = v0;
          pl[i] = 0;
          continue;
        }
        const scalar_t v = std::min(B, std::max(-B, v0));
        sp.setup(pw + i * K, ph + i * K, pd + i * Kd);
        scalar_t y;
        if (!cfg.inverse) {
          const auto L = sp.forward_local(v, y);
          pl[i] = sp.lad(L);
        } else {
          const auto L = sp.inverse_local(v, y);
          pl[i] = -sp.lad(L);
        }
        po[i] = y;
      }
    });
  });
}

void backward_kernel(const torch::Tensor& x, const torch::Tensor& uw, const torch::Tensor& uh,
                     const torch::Tensor& ud, const torch::Tensor& g_out,
                     const torch::Tensor& g_lad, const Config& cfg, torch::Tensor& gx,
                     torch::Tensor& gw, torch::Tensor& gh, torch::Tensor& gd) {
  const int64_t n = x.numel(), K = uw.size(-1), Kd = ud.size(-1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rq_spline_backward", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pw = uw.data_ptr<scalar_t>();
    const scalar_t* ph = uh.data_ptr<scalar_t>();
    const scalar_t* pd = ud.data_ptr<scalar_t>();
    const scalar_t* go = g_out.data_ptr<scalar_t>();
    const scalar_t* gl = g_lad.data_ptr<scalar_t>();
    scalar_t* pgx = gx.data_ptr<scalar_t>();
    scalar_t* pgw = gw.data_ptr<scalar_t>();
    scalar_t* pgh = gh.data_ptr<scalar_t>();
    scalar_t* pgd = gd.data_ptr<scalar_t>();
    at::parallel_for(0, n, 512, [&](int64_t begin, int64_t end) {
      auto sp = make_spline<scalar_t>(K, cfg.bound, cfg.min_bin, cfg.min_d, cfg.circular);
      const scalar_t B = sp.bound;
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t v0 = px[i];
        if (!cfg.circular && (v0 < -B || v0 > B)) {
          pgx[i] = go[i];  // identity: dy/dx = 1, no parameter dependence
          continue;
        }
        const scalar_t v = std::min(B, std::max(-B, v0));
        sp.setup(pw + i * K, ph + i * K, pd + i * Kd);
        scalar_t* gwi = pgw + i * K;
        scalar_t* ghi = pgh + i * K;
        scalar_t* gdi = pgd + i * Kd;
        if (!cfg.inverse) {
          scalar_t y;
          const auto L = sp.forward_local(v, y);
          pgx[i] = sp.backward(L, go[i], gl[i], gwi, ghi, gdi);
        } else {
          // out = x(y, theta), lad_out = -L(x(y, theta), theta).
          scalar_t xs;
          const auto L = sp.inverse_local(v, xs);
          const scalar_t fx = sp.slope(L);  // dy/dx at the solution
          const scalar_t gx_tot = go[i] - gl[i] * sp.dlad_dx(L);
          pgx[i] = gx_tot / fx;
          sp.backward(L, -gx_tot / fx, -gl[i], gwi, ghi, gdi);
        }
      }
    });
  });
}

class RQSplineFunction : public torch::autograd::Function<RQSplineFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& x, const torch::Tensor& uw,
                                                const torch::Tensor& uh, const torch::Tensor& ud,
                                                bool inverse, bool circular, double bound,
                                                double min_bin, double min_d) {
    const auto xc = x.contiguous(), wc = uw.contiguous(), hc = uh.contiguous(), dc = ud.contiguous();
    auto out = torch::empty_like(xc), lad = torch::empty_like(xc);
    const Config cfg{inverse, circular, bound, min_bin, min_d};
    forward_kernel(xc, wc, hc, dc, cfg, out, lad);
    ctx->save_for_backward({xc, wc, hc, dc});
    ctx->saved_data["inverse"] = inverse;
    ctx->saved_data["circular"] = circular;
    ctx->saved_data["bound"] = bound;
    ctx->saved_data["min_bin"] = min_bin;
    ctx->saved_data["min_d"] = min_d;
    return {out, lad};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &uw = saved[1], &uh = saved[2], &ud = saved[3];
    const Config cfg{ctx->saved_data["inverse"].toBool(), ctx->saved_data["circular"].toBool(),
                      ctx->saved_data["bound"].toDouble(), ctx->saved_data["min_bin"].toDouble(),
                      ctx->saved_data["min_d"].toDouble()};
    auto g_out = grads[0].defined() ? grads[0].contiguous() : torch::zeros_like(x);
    auto g_lad = grads[1].defined() ? grads[1].contiguous() : torch::zeros_like(x);
    auto gx = torch::empty_like(x);
    auto gw = torch::zeros_like(uw), gh = torch::zeros_like(uh), gd = torch::zeros_like(ud);
    backward_kernel(x, uw, uh, ud, g_out, g_lad, cfg, gx, gw, gh, gd);
    return {gx, gw, gh, gd, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> rq_spline_cpu(const torch::Tensor& x,
                                                       const torch::Tensor& uw,
                                                       const torch::Tensor& uh,
                                                       const torch::Tensor& ud, bool inverse,
                                                       double bound, bool circular,
                                                       double min_bin, double min_d) {
  NFKIT_ASSERT(uw.size(-1) <= kMaxKernelBins, "rq_spline_cpu called with too many bins");
  // The normalisations are vectorised ATen ops (autograd differentiates them); the kernel
  // does the knots, the bin search, the rational-quadratic map and their gradients.
  const auto fw = torch::softmax(uw, -1), fh = torch::softmax(uh, -1);
  const auto dv = min_d + torch::softplus(ud);
  auto res = RQSplineFunction::apply(x, fw, fh, dv, inverse, circular, bound, min_bin, min_d);
  return {res[0], res[1]};
}

}  // namespace nfkit::detail
