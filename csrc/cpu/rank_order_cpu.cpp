// place_in_rank_order on the CPU: out[b, j] = values[b, rank of probs[b, j]], ranks counted from the
// largest with ties in index order (mia_fast/ops/reference.py). Counting the larger elements of the
// row (O(C^2) per row, branch-free, vectorised by the compiler) rather than sorting: a NaN gets some
// rank in [0, C) instead of breaking a sort's ordering, so every read stays inside the row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"

namespace mia_fast {
namespace cpu {
namespace {

at::Tensor place_in_rank_order_cpu(const at::Tensor& probs, const at::Tensor& values) {
  check_rank_order_args(probs, values);
  const int64_t rows = probs.size(0), classes = probs.size(1);
  auto out = at::empty_like(values);
  const float* p = probs.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, classes * classes));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* row = p + b * classes;
      for (int64_t j = 0; j < classes; ++j) {
        const float pj = row[j];
        int64_t rank = 0;
        for (int64_t k = 0; k < j; ++k) rank += row[k] >= pj;
        for (int64_t k = j + 1; k < classes; ++k) rank += row[k] > pj;
        o[b * classes + j] = v[b * classes + rank];
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace mia_fast

TORCH_LIBRARY_IMPL(mia_fast, CPU, m) {
  m.impl("place_in_rank_order", &mia_fast::cpu::place_in_rank_order_cpu);
}
