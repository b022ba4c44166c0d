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
#include "simd.h"

namespace mia_fast {
namespace cpu {
namespace {

constexpr int kBlock = 5;     // samples sharing each weight load in the forward micro-kernel
constexpr int kTileVecs = 2;  // output vectors per micro-tile: kBlock * kTileVecs accumulators (fits 16 regs)
constexpr int kTile = kTileVecs * kVecWidth;

// Weights copied into padded layouts: every row length is a multiple of kTile, pads are zero (a pad
// hidden unit has pre-activation 0, so it is never active and contributes nothing).
struct PackedMim {
  int64_t C, Cp, H1p, H2p;
  std::vector<float> wp_t;   // [Cp][H1p]  forward layer 1
  std::vector<float> wp;     // [H1p][Cp]  backward to the input
  std::vector<float> wa_t;   // [H1p][H2p] forward layer 2
  std::vector<float> wa;     // [H2p][H1p] backward to hidden 1
  std::vector<float> bp;     // [H1p]
  std::vector<float> table;  // [C][H2p]  class table c[k] (label branch + its half of the connection layer)
  std::vector<float> w3;     // [H2p]
  float b3;
};

PackedMim pack(const at::Tensor& w_pred, const at::Tensor& b_pred, const at::Tensor& w_hidden,
               const at::Tensor& class_table, const at::Tensor& w_out, const at::Tensor& b_out) {
  PackedMim m;
  const int64_t H1 = w_pred.size(0), C = w_pred.size(1), H2 = w_hidden.size(0);
  m.C = C;
  m.Cp = round_up(C, kVecWidth);
  m.H1p = round_up(H1, kTile);
  m.H2p = round_up(H2, kTile);
  m.wp_t.assign(m.Cp * m.H1p, 0.f);
  m.wp.assign(m.H1p * m.Cp, 0.f);
  m.wa_t.assign(m.H1p * m.H2p, 0.f);
  m.wa.assign(m.H2p * m.H1p, 0.f);
  m.bp.assign(m.H1p, 0.f);
  m.table.assign(C * m.H2p, 0.f);
  m.w3.assign(m.H2p, 0.f);
  const float* wpp = w_pred.data_ptr<float>();
  const float* wap = w_hidden.data_ptr<float>();
  for (int64_t i = 0; i < H1; ++i)
    for (int64_t j = 0; j < C; ++j) {
      m.wp[i * m.Cp + j] = wpp[i * C + j];
      m.wp_t[j * m.H1p + i] = wpp[i * C + j];
    }
  for (int64_t o = 0; o < H2; ++o)
    for (int64_t i = 0; i < H1; ++i) {
      m.wa[o * m.H1p + i] = wap[o * H1 + i];
      m.wa_t[i * m.H2p + o] = wap[o * H1 + i];
    }
  std::copy_n(b_pred.data_ptr<float>(), H1, m.bp.begin());
  for (int64_t k = 0; k < C; ++k) std::copy_n(class_table.data_ptr<float>() + k * H2, H2, m.table.begin() + k * m.H2p);
  std::copy_n(w_out.data_ptr<float>(), H2, m.w3.begin());
  m.b3 = b_out.data_ptr<float>()[0];
  return m;
}

inline float sigmoid(float z) { return 1.f / (1.f + std::exp(-z)); }

// out[s][:] = init[s][:] + sum_j in[s][j] * wt[j][:] for the kBlock samples of a block, with wt
// [n_in][width] and width a multiple of kTile. Branch-free; the summation order of one sample does not
// depend on the others, and zero inputs add exact zeros, so skipping them elsewhere gives equal sums.
void block_matmul(const float* in, int64_t in_stride, int64_t n_in, const float* wt, int64_t width,
                  const float* const init[kBlock], float* out) {
  for (int64_t o0 = 0; o0 < width; o0 += kTile) {
    vfloat acc[kBlock][kTileVecs];
    for (int s = 0; s < kBlock; ++s)
      for (int v = 0; v < kTileVecs; ++v) acc[s][v] = vload(init[s] + o0 + v * kVecWidth);
    const float* w = wt + o0;
    for (int64_t j = 0; j < n_in; ++j, w += width) {
      vfloat wv[kTileVecs];
      for (int v = 0; v < kTileVecs; ++v) wv[v] = vload(w + v * kVecWidth);
      for (int s = 0; s < kBlock; ++s) {
        const float x = in[s * in_stride + j];
        for (int v = 0; v < kTileVecs; ++v) acc[s][v] += x * wv[v];
      }
    }
    for (int s = 0; s < kBlock; ++s)
      for (int v = 0; v < kTileVecs; ++v) vstore(out + s * width + o0 + v * kVecWidth, acc[s][v]);
  }
}

// Forward pass for a block: a1, h1 = relu(a1), a2 and the logits z.
void forward(const PackedMim& m, const float* p, const int64_t* label, float* a1, float* h1, float* a2, float* z) {
  const float* init[kBlock];
  for (int s = 0; s < kBlock; ++s) init[s] = m.bp.data();
  block_matmul(p, m.Cp, m.C, m.wp_t.data(), m.H1p, init, a1);
  for (int64_t i = 0; i < kBlock * m.H1p; ++i) h1[i] = a1[i] > 0.f ? a1[i] : 0.f;
  for (int s = 0; s < kBlock; ++s) init[s] = &m.table[label[s] * m.H2p];
  block_matmul(h1, m.H1p, m.H1p, m.wa_t.data(), m.H2p, init, a2);
  for (int s = 0; s < kBlock; ++s) {
    vfloat acc = vbroadcast(0.f);
    const vfloat zero = vbroadcast(0.f);
    for (int64_t o = 0; o < m.H2p; o += kVecWidth) {
      const vfloat a = vload(&a2[s * m.H2p + o]);
      acc += (a > zero ? a : zero) * vload(&m.w3[o]);
    }
    float total = m.b3;
    for (int l = 0; l < kVecWidth; ++l) total += acc[l];
    z[s] = total;
  }
}

// Indices of the positive entries of x[0:n] (branch-free compaction); returns their count.
inline int64_t active_units(const float* x, int64_t n, int32_t* idx) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    idx[count] = int32_t(i);
    count += x[i] > 0.f;
  }
  return count;
}

// out[0:width] = sum_q coef[idx[q]] * w[idx[q]][0:width], accumulated in registers kChunk vectors at a
// time (width a multiple of kVecWidth). The order over q is the same for every chunk.
template <int kChunk>
void gather_rows(const int32_t* idx, int64_t n, const float* coef, const float* w, int64_t width, float* out) {
  int64_t c0 = 0;
  for (; c0 + kChunk * kVecWidth <= width; c0 += kChunk * kVecWidth) {
    vfloat acc[kChunk];
    for (int v = 0; v < kChunk; ++v) acc[v] = vbroadcast(0.f);
    for (int64_t q = 0; q < n; ++q) {
      const float g = coef[idx[q]];
      const float* row = w + idx[q] * width + c0;
      for (int v = 0; v < kChunk; ++v) acc[v] += g * vload(row + v * kVecWidth);
    }
    for (int v = 0; v < kChunk; ++v) vstore(out + c0 + v * kVecWidth, acc[v]);
  }
  for (; c0 < width; c0 += kVecWidth) {
    vfloat acc = vbroadcast(0.f);
    for (int64_t q = 0; q < n; ++q) acc += coef[idx[q]] * vload(w + idx[q] * width + c0);
    vstore(out + c0, acc);
  }
}

// sign(W_p^T(1[a1>0] * W_a^T(1[a2>0] * w3))) into dsign[0:Cp], over the active units only.
void input_gradient_sign(const PackedMim& m, const int32_t* act1, int64_t n1, const int32_t* act2, int64_t n2,
                         float* g1, float* v, float* dsign) {
  gather_rows<8>(act2, n2, m.w3.data(), m.wa.data(), m.H1p, g1);
  gather_rows<8>(act1, n1, g1, m.wp.data(), m.Cp, v);
  for (int64_t j = 0; j < m.Cp; ++j) dsign[j] = float((v[j] > 0.f) - (v[j] < 0.f));
}

// torch.argmax semantics: the first index of the maximum.
inline bool argmax_is(const float* p, int64_t C, int64_t k) {
  const float pk = p[k];
  for (int64_t j = 0; j < k; ++j)
    if (p[j] >= pk) return false;
  for (int64_t j = k + 1; j < C; ++j)
    if (p[j] > pk) return false;
  return true;
}

struct Options {
  bool preserve_label, stop_when_flipped, renormalize;
};

void run_blocks(const PackedMim& m, const float* probs, const float* steps, int64_t B, int64_t T, Options opt,
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
        forward(m, p.data(), label, a1.data(), h1.data(), a2.data(), z);
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
        if (opt.renormalize) {
          float total = 0.f;
          for (int64_t j = 0; j < C; ++j) total += ps[j];
          if (total > 0.f) {
            for (int64_t j = 0; j < C; ++j) ps[j] /= total;
          } else {
            for (int64_t j = 0; j < C; ++j) ps[j] = 1.f / float(C);
          }
        }
        std::copy_n(ps, C, adv_out + (b0 + s) * C);
      }
      forward(m, p.data(), label, a1.data(), h1.data(), a2.data(), z);
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
               Options{preserve_label, stop_when_flipped, renormalize}, adv.data_ptr<float>(),
               score_in.data_ptr<float>(), score_out.data_ptr<float>());
  }
  return {adv, score_in, score_out};
}

}  // namespace
}  // namespace cpu
}  // namespace mia_fast

TORCH_LIBRARY_IMPL(mia_fast, CPU, m) { m.impl("aeppt", &mia_fast::cpu::aeppt_cpu); }
