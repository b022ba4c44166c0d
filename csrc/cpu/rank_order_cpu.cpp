// place_in_rank_order on the CPU: out[b, j] = values[b, rank of probs[b, j]], ranks counted from the
// largest with ties in index order (mia_fast/ops/reference.py). Up to kRankCountUpTo classes each element
// counts the larger ones in its row (O(C^2), branch-free, vectorised by the compiler: faster than a sort
// there); above, a sort of (value, index) pairs (NaN ordered as the largest, so the order stays a
// strict weak one). Either way every rank is in [0, C) and every read stays inside the row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "../checks.h"

namespace mia_fast {
namespace cpu {
namespace {

void count_ranks(const float* row, const float* values, float* out, int64_t classes) {
  for (int64_t j = 0; j < classes; ++j) {
    const float pj = row[j];
    int64_t rank = 0;
    for (int64_t k = 0; k < j; ++k) rank += row[k] >= pj;
    for (int64_t k = j + 1; k < classes; ++k) rank += row[k] > pj;
    out[j] = values[rank];
  }
}

void sort_ranks(const float* row, const float* values, float* out, int64_t classes,
                std::vector<std::pair<float, int64_t>>& order) {
  // (negated value, index) pairs in ascending order: largest first, ties by index, NaN as the largest.
  order.resize(classes);
  for (int64_t i = 0; i < classes; ++i) {
    order[i] = {std::isnan(row[i]) ? -std::numeric_limits<float>::infinity() : -row[i], i};
  }
  std::sort(order.begin(), order.end());
  for (int64_t r = 0; r < classes; ++r) out[order[r].second] = values[r];
}

at::Tensor place_in_rank_order_cpu(const at::Tensor& probs, const at::Tensor& values) {
  check_rank_order_args(probs, values);
  const int64_t rows = probs.size(0), classes = probs.size(1);
  auto out = at::empty_like(values);
  const float* p = probs.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, classes * std::min(classes, kRankCountUpTo)));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<float, int64_t>> order;
    for (int64_t b = begin; b < end; ++b) {
      if (classes <= kRankCountUpTo) {
        count_ranks(p + b * classes, v + b * classes, o + b * classes, classes);
      } else {
        sort_ranks(p + b * classes, v + b * classes, o + b * classes, classes, order);
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
