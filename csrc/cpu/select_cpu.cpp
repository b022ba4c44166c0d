// Distance-constrained selection (Bai et al., Algorithm 1) on the CPU: for each original, the
// lowest-loss valid candidate whose distance is within eps (ties -> lowest index, -1 if none).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../checks.h"
#include "simd.h"

namespace mia_fast {
namespace cpu {
namespace {

float squared_distance(const float* a, const float* b, int64_t d) {
  vfloat acc = vbroadcast(0.f);
  int64_t i = 0;
  for (; i + kVecWidth <= d; i += kVecWidth) {
    const vfloat diff = vload(a + i) - vload(b + i);
    acc += diff * diff;
  }
  float total = 0.f;
  for (int l = 0; l < kVecWidth; ++l) total += acc[l];
  for (; i < d; ++i) total += (a[i] - b[i]) * (a[i] - b[i]);
  return total;
}

std::tuple<at::Tensor, at::Tensor> select_within_distance_cpu(const at::Tensor& originals,
                                                              const at::Tensor& candidates,
                                                              const at::Tensor& losses, double eps,
                                                              const c10::optional<at::Tensor>& valid,
                                                              bool squared) {
  const SelectShape s = check_select_args(originals, candidates, losses, valid);
  // Compare squared distances: d <= eps  <=>  d^2 <= eps^2 (threshold rounded to float32 once).
  const float threshold = squared ? float(eps) : float(eps * eps);
  auto index = at::empty({s.n}, originals.options().dtype(at::kLong));
  auto distances = at::empty({s.n, s.k}, originals.options());
  const float* orig = originals.data_ptr<float>();
  const float* cand = candidates.data_ptr<float>();
  const float* loss = losses.data_ptr<float>();
  const bool* ok = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  int64_t* idx = index.data_ptr<int64_t>();
  float* dist = distances.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, s.k * s.d));
  at::parallel_for(0, s.n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      int64_t best = -1;
      float best_loss = 0.f;
      for (int64_t k = 0; k < s.k; ++k) {
        const float d2 = squared_distance(cand + (n * s.k + k) * s.d, orig + n * s.d, s.d);
        dist[n * s.k + k] = squared ? d2 : std::sqrt(d2);
        const float l = loss[n * s.k + k];
        const bool qualifies = (ok == nullptr || ok[n * s.k + k]) && d2 <= threshold && !std::isnan(l);
        if (qualifies && (best < 0 || l < best_loss)) {
          best = k;
          best_loss = l;
        }
      }
      idx[n] = best;
    }
  });
  return {index, distances};
}

}  // namespace
}  // namespace cpu
}  // namespace mia_fast

TORCH_LIBRARY_IMPL(mia_fast, CPU, m) {
  m.impl("select_within_distance", &mia_fast::cpu::select_within_distance_cpu);
}
