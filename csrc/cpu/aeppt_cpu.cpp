// Fused CPU kernel for AEPPT (Xue et al., Algorithm 1) on the label-folded substitute MIM:
//   a1 = W_p p + b_p, h1 = relu(a1), a2 = W_a h1 + c[k], z = w3 . relu(a2) + b3,
//   grad_p J = (sigmoid(z) - Y) * W_p^T(1[a1>0] * W_a^T(1[a2>0] * w3)).
// Each task owns a block of kBlock samples and runs all T iterations on it (`DenseBlock`, folded_mim.h),
// so the weights stay in cache and the per-sample state in L1.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../checks.h"
#include "folded_mim.h"

namespace mia_fast {
namespace cpu {
namespace {

void run_blocks(const PackedMim& m, const float* probs, const float* steps, int64_t B, int64_t T, AepptOptions opt,
                float* adv_out, float* score_in, float* score_out) {
  at::parallel_for(0, (B + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
    DenseBlock dense(m);
    std::vector<float> p(kBlock * m.Cp);
    for (int64_t blk = begin; blk < end; ++blk)
      run_dense_block(dense, p.data(), probs, steps, B, T, blk * kBlock, opt, adv_out, score_in, score_out, nullptr);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> aeppt_cpu(const at::Tensor& probs, const at::Tensor& w_pred,
                                                         const at::Tensor& b_pred, const at::Tensor& w_hidden,
                                                         const at::Tensor& class_table, const at::Tensor& w_out,
                                                         const at::Tensor& b_out, const at::Tensor& steps,
                                                         bool preserve_label, bool stop_when_flipped,
                                                         bool renormalize, c10::string_view precision) {
  const AepptShape s = check_aeppt_args(probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps);
  check_aeppt_precision(precision, probs);
  const PackedMim m = pack(w_pred, b_pred, w_hidden, class_table, w_out, b_out);
  auto adv = at::empty_like(probs);
  auto score_in = at::empty({s.batch}, probs.options());
  auto score_out = at::empty({s.batch}, probs.options());
  if (s.batch > 0) {
    run_blocks(m, probs.data_ptr<float>(), steps.data_ptr<float>(), s.batch, s.iters,
               AepptOptions{preserve_label, stop_when_flipped, renormalize}, adv.data_ptr<float>(),
               score_in.data_ptr<float>(), score_out.data_ptr<float>());
  }
  return {adv, score_in, score_out};
}

}  // namespace
}  // namespace cpu
}  // namespace mia_fast

TORCH_LIBRARY_IMPL(mia_fast, CPU, m) { m.impl("aeppt", &mia_fast::cpu::aeppt_cpu); }
