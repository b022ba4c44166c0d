// Argument checks shared by the CPU and CUDA implementations: every message names the op, the
// argument, what was expected and what it got.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

namespace mia_fast {

inline void check_float_contig(const at::Tensor& t, const char* op, const char* name, int64_t ndim) {
  TORCH_CHECK(t.dim() == ndim, op, ": ", name, " must be ", ndim, "-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but probs/originals are on ",
              ref.device());
}

// Shapes of the AEPPT op: probs [B, C], w_pred [H1, C], b_pred [H1], w_hidden [H2, H1],
// class_table [C, H2], w_out [H2], b_out [1], steps [T, B].
struct AepptShape {
  int64_t batch, classes, hidden1, hidden2, iters;
};

inline AepptShape check_aeppt_args(const at::Tensor& probs, const at::Tensor& w_pred, const at::Tensor& b_pred,
                                   const at::Tensor& w_hidden, const at::Tensor& class_table,
                                   const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& steps) {
  const char* op = "mia_fast::aeppt";
  check_float_contig(probs, op, "probs", 2);
  check_float_contig(w_pred, op, "w_pred", 2);
  check_float_contig(b_pred, op, "b_pred", 1);
  check_float_contig(w_hidden, op, "w_hidden", 2);
  check_float_contig(class_table, op, "class_table", 2);
  check_float_contig(w_out, op, "w_out", 1);
  check_float_contig(b_out, op, "b_out", 1);
  check_float_contig(steps, op, "steps", 2);
  for (auto* p : {&w_pred, &b_pred, &w_hidden, &class_table, &w_out, &b_out, &steps}) {
    check_same_device(*p, probs, op, "a weight or steps tensor");
  }
  AepptShape s{probs.size(0), probs.size(1), w_pred.size(0), w_hidden.size(0), steps.size(0)};
  TORCH_CHECK(s.classes >= 1, op, ": probs needs at least one class, got shape ", probs.sizes());
  TORCH_CHECK(w_pred.size(1) == s.classes, op, ": w_pred must be [H1, C=", s.classes, "], got ", w_pred.sizes());
  TORCH_CHECK(b_pred.size(0) == s.hidden1, op, ": b_pred must be [", s.hidden1, "], got ", b_pred.sizes());
  TORCH_CHECK(w_hidden.size(1) == s.hidden1, op, ": w_hidden must be [H2, ", s.hidden1, "], got ", w_hidden.sizes());
  TORCH_CHECK(class_table.size(0) == s.classes && class_table.size(1) == s.hidden2, op,
              ": class_table must be [", s.classes, ", ", s.hidden2, "], got ", class_table.sizes());
  TORCH_CHECK(w_out.size(0) == s.hidden2, op, ": w_out must be [", s.hidden2, "], got ", w_out.sizes());
  TORCH_CHECK(b_out.size(0) == 1, op, ": b_out must be [1], got ", b_out.sizes());
  TORCH_CHECK(steps.size(1) == s.batch, op, ": steps must be [T, B=", s.batch, "], got ", steps.sizes());
  return s;
}

// The AEPPT op's precision argument: true for "3xtf32" (tensor cores), false for "fp32".
inline bool check_aeppt_precision(c10::string_view precision, const at::Tensor& probs) {
  const char* op = "mia_fast::aeppt";
  TORCH_CHECK(precision == "fp32" || precision == "3xtf32", op, ": precision must be 'fp32' or '3xtf32', got '",
              precision, "'");
  const bool tensor_cores = precision == "3xtf32";
  TORCH_CHECK(!tensor_cores || probs.is_cuda(), op, ": precision='3xtf32' runs on CUDA tensor cores, but probs is on ",
              probs.device(), " (the CPU kernel computes in fp32)");
  return tensor_cores;
}

struct SelectShape {
  int64_t n, k, d;
};

inline SelectShape check_select_args(const at::Tensor& originals, const at::Tensor& candidates,
                                     const at::Tensor& losses, const c10::optional<at::Tensor>& valid) {
  const char* op = "mia_fast::select_within_distance";
  check_float_contig(originals, op, "originals", 2);
  check_float_contig(candidates, op, "candidates", 3);
  check_float_contig(losses, op, "losses", 2);
  check_same_device(candidates, originals, op, "candidates");
  check_same_device(losses, originals, op, "losses");
  SelectShape s{originals.size(0), candidates.size(1), originals.size(1)};
  TORCH_CHECK(candidates.size(0) == s.n && candidates.size(2) == s.d, op, ": candidates must be [N=", s.n,
              ", K, D=", s.d, "], got ", candidates.sizes());
  TORCH_CHECK(losses.size(0) == s.n && losses.size(1) == s.k, op, ": losses must be [", s.n, ", ", s.k, "], got ",
              losses.sizes());
  if (valid.has_value()) {
    const auto& v = *valid;
    TORCH_CHECK(v.scalar_type() == at::kBool, op, ": valid must be bool, got ", v.scalar_type());
    TORCH_CHECK(v.dim() == 2 && v.size(0) == s.n && v.size(1) == s.k, op, ": valid must be [", s.n, ", ", s.k,
                "], got ", v.sizes());
    TORCH_CHECK(v.is_contiguous(), op, ": valid must be contiguous");
    check_same_device(v, originals, op, "valid");
  }
  return s;
}

// place_in_rank_order counts ranks (O(C^2)) up to this many classes and sorts above, on CPU and CUDA:
// counting wins at C = 100 and sorting at C = 1000 on both (bench/README.md).
constexpr int64_t kRankCountUpTo = 128;

// place_in_rank_order: probs and values, both float32 [B, C], contiguous, on one device.
inline void check_rank_order_args(const at::Tensor& probs, const at::Tensor& values) {
  const char* op = "mia_fast::place_in_rank_order";
  check_float_contig(probs, op, "probs", 2);
  check_float_contig(values, op, "values", 2);
  check_same_device(values, probs, op, "values");
  TORCH_CHECK(values.sizes() == probs.sizes(), op, ": values must have the shape of probs ", probs.sizes(), ", got ",
              values.sizes());
}

}  // namespace mia_fast
