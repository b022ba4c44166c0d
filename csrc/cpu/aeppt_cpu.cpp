// Fused CPU kernel for AEPPT (Xue et al., Algorithm 1) on the label-folded substitute MIM:
//   a1 = W_p p + b_p, h1 = relu(a1), a2 = W_a h1 + c[k], z = w3 . relu(a2) + b3,
//   grad_p J = (sigmoid(z) - Y) * W_p^T(1[a1>0] * W_a^T(1[a2>0] * w3)).
// Each task owns a block of kBlock samples and runs all T iterations on it, so the weights stay in
// cache and the per-sample state in L1. The sign of W_p^T(...) depends only on the two ReLU masks:
// when neither mask changed since the previous iteration it is reused exactly (no backward pass).
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

// sign(W_p^T(1[a1>0] * W_a^T(1[a2>0] * w3))) into dsign[0:Cp], over the active units only.
void input_gradient_sign(const PackedMim& m, const int32_t* act1, int64_t n1, const int32_t* act2, int64_t n2,
                         float* g1, float* v, float* dsign) {
  gather_rows(act2, n2, m.w3.data(), m.wa.data(), m.H1p, g1);
  gather_rows(act1, n1, g1, m.wp.data(), m.Cp, v);
  for (int64_t j = 0; j < m.Cp; ++j) dsign[j] = float((v[j] > 0.f) - (v[j] < 0.f));
}

void run_blocks(const PackedMim& m, const float* probs, const float* steps, int64_t B, int64_t T, AepptOptions opt,
                float* adv_out, float* score_in, float* score_out) {
  const int64_t nblocks = (B + kBlock - 1) / kBlock;
  const int64_t C = m.C, Cp = m.Cp, H1p = m.H1p, H2p = m.H2p;
  at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(kBlock * Cp), a1(kBlock * H1p), h1(kBlock * H1p), a2(kBlock * H2p), dsign(kBlock * Cp);
    std::vector<float> g1(H1p), v(Cp), trial(Cp);
    // Active-unit lists of the iteration that produced dsign, and of the current one.
    std::vector<int32_t> prev1(kBlock * H1p), prev2(kBlock * H2p), act1(H1p), act2(H2p);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b0 = blk * kBlock;
      const int nvalid = int(std::min<int64_t>(kBlock, B - b0));
      int64_t label[kBlock] = {0}, n_prev1[kBlock], n_prev2[kBlock];
      float target[kBlock] = {0}, z[kBlock];
      bool active[kBlock], have_sign[kBlock];
      std::fill(p.begin(), p.end(), 0.f);
      for (int s = 0; s < kBlock; ++s) {
        active[s] = s < nvalid;
        have_sign[s] = false;
        if (s >= nvalid) continue;
        const float* src = probs + (b0 + s) * C;
        std::copy_n(src, C, &p[s * Cp]);
        int64_t best = 0;  // first index of the maximum, as torch.argmax
        for (int64_t j = 1; j < C; ++j)
          if (src[j] > src[best]) best = j;
        label[s] = best;
      }
      // Pass t scores p_t; pass 0 also fixes Y. With T = 0 there is still that one scoring pass.
      for (int64_t t = 0; t < std::max<int64_t>(T, 1); ++t) {
        bool any_active = false;
        for (int s = 0; s < nvalid; ++s) any_active |= active[s];
        if (!any_active) break;
        block_forward(m, p.data(), label, a1.data(), h1.data(), a2.data(), z);
        for (int s = 0; s < nvalid; ++s) {
          if (!active[s]) continue;
          const float sig = sigmoid(z[s]);
          if (t == 0) {
            score_in[b0 + s] = sig;
            target[s] = sig >= 0.5f ? 1.f : 0.f;
          }
          if (t == T) continue;
          if (opt.stop_when_flipped && (sig >= 0.5f ? 1.f : 0.f) != target[s]) {
            active[s] = false;
            continue;
          }
          // The input-gradient sign depends only on the ReLU masks: recompute it when they changed.
          const int64_t n1 = active_units(&a1[s * H1p], H1p, act1.data());
          const int64_t n2 = active_units(&a2[s * H2p], H2p, act2.data());
          const bool same = have_sign[s] && n1 == n_prev1[s] && n2 == n_prev2[s] &&
                            std::equal(act1.begin(), act1.begin() + n1, prev1.begin() + s * H1p) &&
                            std::equal(act2.begin(), act2.begin() + n2, prev2.begin() + s * H2p);
          if (!same) {
            input_gradient_sign(m, act1.data(), n1, act2.data(), n2, g1.data(), v.data(), &dsign[s * Cp]);
            std::copy_n(act1.begin(), n1, prev1.begin() + s * H1p);
            std::copy_n(act2.begin(), n2, prev2.begin() + s * H2p);
            n_prev1[s] = n1;
            n_prev2[s] = n2;
            have_sign[s] = true;
          }
          // sign(dJ/dz) = sign(sigmoid(z) - Y); zero when sigmoid(z) rounds to Y exactly.
          const float dz_sign = float((sig > target[s]) - (sig < target[s]));
          if (dz_sign == 0.f) continue;
          const float step = steps[t * B + b0 + s];
          float* ps = &p[s * Cp];
          const float* ds = &dsign[s * Cp];
          float* dst = opt.preserve_label ? trial.data() : ps;
          for (int64_t j = 0; j < C; ++j) dst[j] = std::min(std::max(ps[j] + step * (dz_sign * ds[j]), 0.f), 1.f);
          if (opt.preserve_label && argmax_is(dst, C, label[s])) std::copy_n(dst, C, ps);
        }
      }
      // Final vectors: renormalise if asked, then score them with one more forward pass.
      for (int s = 0; s < nvalid; ++s) {
        float* ps = &p[s * Cp];
        if (opt.renormalize) renormalize_row(ps, C);
        std::copy_n(ps, C, adv_out + (b0 + s) * C);
      }
      block_forward(m, p.data(), label, a1.data(), h1.data(), a2.data(), z);
      for (int s = 0; s < nvalid; ++s) score_out[b0 + s] = sigmoid(z[s]);
    }
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
