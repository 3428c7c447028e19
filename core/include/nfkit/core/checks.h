#pragma once
// Argument checks with uniform one-line messages "fn: what is wrong, but must be what".
//
// Shape, dtype, device and value-range checks on arguments throw nfkit::UsageError (the
// caller passed something invalid). check_finite on *data* throws nfkit::RuntimeError,
// since non-finite numbers usually come from a file or a computation, not from the caller's
// intent; pass Kind::usage where a non-finite value is a caller mistake.
//
//   check_dim("Flow::log_prob", "x", x, 2);                 // x must be [B, D]
//   check_size("Flow::log_prob", "x", x, 1, dim);           // x.size(1) == dim
//   check_positive("ActNorm", "eps", eps);
//   check_finite("ess", "log_weights", w);                  // names the first bad index
#include <torch/types.h>

#include <string>

#include "nfkit/core/error.h"

namespace nfkit {

enum class Kind { usage, runtime };

void check_finite(const std::string& fn, const std::string& name, const torch::Tensor& t,
                  Kind kind = Kind::runtime);
void check_finite(const std::string& fn, const std::string& name, double v,
                  Kind kind = Kind::usage);
void check_positive(const std::string& fn, const std::string& name, double v);
void check_nonnegative(const std::string& fn, const std::string& name, double v);
/// lo <= v <= hi (closed) unless open_lo: lo < v.
void check_in_range(const std::string& fn, const std::string& name, double v, double lo,
                    double hi, bool open_lo = false);
void check_positive_int(const std::string& fn, const std::string& name, int64_t v);

void check_defined(const std::string& fn, const std::string& name, const torch::Tensor& t);
/// t.dim() == dim.
void check_dim(const std::string& fn, const std::string& name, const torch::Tensor& t,
               int64_t dim);
/// t.size(axis) == size.
void check_size(const std::string& fn, const std::string& name, const torch::Tensor& t,
                int64_t axis, int64_t size);
/// Floating dtype (float32, float64, bfloat16, float16).
void check_floating(const std::string& fn, const std::string& name, const torch::Tensor& t);
void check_dtype(const std::string& fn, const std::string& name, const torch::Tensor& t,
                 torch::Dtype dtype);
void check_device(const std::string& fn, const std::string& name, const torch::Tensor& t,
                  const torch::Device& device);
/// a.size(0) == b.size(0).
void check_same_batch(const std::string& fn, const std::string& a_name, const torch::Tensor& a,
                      const std::string& b_name, const torch::Tensor& b);

/// The conditioning contract of DESIGN.md: a module built with context_dim == 0 refuses a
/// context; one built with context_dim > 0 requires a context [rows, context_dim], of the
/// dtype and device of `like` when that is defined.
void check_context(const std::string& fn, const torch::Tensor& context, int64_t context_dim,
                   int64_t rows, const torch::Tensor& like = {});

/// "[2, 3]" for messages.
std::string shape_string(const torch::Tensor& t);

}  // namespace nfkit
