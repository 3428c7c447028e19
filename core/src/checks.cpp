#include "nfkit/core/checks.h"

#include <torch/torch.h>

#include <cmath>
#include <sstream>

namespace nfkit {
namespace {

[[noreturn]] void fail(Kind kind, const std::string& fn, const std::string& msg) {
  if (kind == Kind::usage) usage_error(fn, msg);
  runtime_error(fn, msg);
}

std::string num(double v) {
  std::ostringstream os;
  os.precision(10);
  os << v;
  return os.str();
}

std::string index_string(const torch::Tensor& t, int64_t flat) {
  if (t.dim() == 0) return "";
  std::string s = "[";
  std::vector<int64_t> idx(t.dim());
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    idx[d] = flat % t.size(d);
    flat /= t.size(d);
  }
  for (size_t d = 0; d < idx.size(); ++d) s += (d ? ", " : "") + std::to_string(idx[d]);
  return s + "]";
}

}  // namespace

std::string shape_string(const torch::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

void check_finite(const std::string& fn, const std::string& name, const torch::Tensor& t,
                  Kind kind) {
  check_defined(fn, name, t);
  if (!t.is_floating_point() || t.numel() == 0) return;
  torch::NoGradGuard ng;
  auto bad = torch::logical_not(torch::isfinite(t.detach())).reshape({-1});
  if (!bad.any().item<bool>()) return;
  const int64_t i = bad.nonzero().index({0, 0}).item<int64_t>();
  const double v = t.detach().reshape({-1})[i].item<double>();
  fail(kind, fn, name + index_string(t, i) + " is " + num(v) + ", but must be finite");
}

void check_finite(const std::string& fn, const std::string& name, double v, Kind kind) {
  if (!std::isfinite(v)) fail(kind, fn, name + " is " + num(v) + ", but must be finite");
}

void check_positive(const std::string& fn, const std::string& name, double v) {
  if (!(v > 0) || !std::isfinite(v))
    usage_error(fn, name + " is " + num(v) + ", but must be positive and finite");
}

void check_nonnegative(const std::string& fn, const std::string& name, double v) {
  if (!(v >= 0) || !std::isfinite(v))
    usage_error(fn, name + " is " + num(v) + ", but must be >= 0 and finite");
}

void check_in_range(const std::string& fn, const std::string& name, double v, double lo,
                    double hi, bool open_lo) {
  const bool ok = (open_lo ? v > lo : v >= lo) && v <= hi;
  if (!ok)
    usage_error(fn, name + " is " + num(v) + ", but must be in " + (open_lo ? "(" : "[") +
                        num(lo) + ", " + num(hi) + "]");
}

void check_positive_int(const std::string& fn, const std::string& name, int64_t v) {
  if (v <= 0) usage_error(fn, name + " is " + std::to_string(v) + ", but must be positive");
}

void check_defined(const std::string& fn, const std::string& name, const torch::Tensor& t) {
  if (!t.defined()) usage_error(fn, name + " is undefined, but must be a tensor");
}

void check_dim(const std::string& fn, const std::string& name, const torch::Tensor& t,
               int64_t dim) {
  check_defined(fn, name, t);
  if (t.dim() != dim)
    usage_error(fn, name + " has shape " + shape_string(t) + ", but must have " +
                        std::to_string(dim) + " dimensions");
}

void check_size(const std::string& fn, const std::string& name, const torch::Tensor& t,
                int64_t axis, int64_t size) {
  check_defined(fn, name, t);
  if (t.dim() <= axis || t.size(axis) != size)
    usage_error(fn, name + " has shape " + shape_string(t) + ", but size " +
                        std::to_string(size) + " is expected along dimension " +
                        std::to_string(axis));
}

void check_floating(const std::string& fn, const std::string& name, const torch::Tensor& t) {
  check_defined(fn, name, t);
  if (!t.is_floating_point())
    usage_error(fn, name + " has dtype " + std::string(c10::toString(t.scalar_type())) +
                        ", but must be floating point");
}

void check_dtype(const std::string& fn, const std::string& name, const torch::Tensor& t,
                 torch::Dtype dtype) {
  check_defined(fn, name, t);
  if (t.scalar_type() != dtype)
    usage_error(fn, name + " has dtype " + std::string(c10::toString(t.scalar_type())) +
                        ", but must be " + c10::toString(dtype));
}

void check_device(const std::string& fn, const std::string& name, const torch::Tensor& t,
                  const torch::Device& device) {
  check_defined(fn, name, t);
  if (t.device() != device)
    usage_error(fn, name + " is on " + t.device().str() + ", but must be on " + device.str());
}

void check_same_batch(const std::string& fn, const std::string& a_name, const torch::Tensor& a,
                      const std::string& b_name, const torch::Tensor& b) {
  check_defined(fn, a_name, a);
  check_defined(fn, b_name, b);
  if (a.dim() == 0 || b.dim() == 0 || a.size(0) != b.size(0))
    usage_error(fn, b_name + " has shape " + shape_string(b) + ", but its batch size must equal " +
                        a_name + "'s " + shape_string(a));
}

void check_context(const std::string& fn, const torch::Tensor& context, int64_t context_dim,
                   int64_t rows, const torch::Tensor& like) {
  if (context_dim == 0) {
    if (context.defined())
      usage_error(fn, "a context was given, but this module was built without context_dim");
    return;
  }
  if (!context.defined())
    usage_error(fn, "context is missing, but this module was built with context_dim " +
                        std::to_string(context_dim));
  check_dim(fn, "context", context, 2);
  check_size(fn, "context", context, 1, context_dim);
  if (context.size(0) != rows)
    usage_error(fn, "context has " + std::to_string(context.size(0)) + " rows, but " +
                        std::to_string(rows) + " are needed (one per sample)");
  if (like.defined()) {
    check_dtype(fn, "context", context, like.scalar_type());
    check_device(fn, "context", context, like.device());
  }
}

}  // namespace nfkit
