// The label-folded substitute MIM in the padded layouts the CPU kernels read, and the small helpers
// both AEPPT kernels (dense: aeppt_cpu.cpp, event-driven: aeppt_events_cpu.cpp) share.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace mia_fast {
namespace cpu {

constexpr int kTileVecs = 2;  // output vectors per micro-tile of the forward kernel
constexpr int kTile = kTileVecs * kVecWidth;

// Weights copied into padded layouts: every row length is a multiple of kTile, pads are zero (a pad
// hidden unit has pre-activation 0, so it is never active and contributes nothing).
struct PackedMim {
  int64_t C, Cp, H1, H1p, H2, H2p;  // sizes, and padded
  std::vector<float> wp_t;   // [Cp][H1p]  forward layer 1
  std::vector<float> wp;     // [H1p][Cp]  backward to the input
  std::vector<float> wa_t;   // [H1p][H2p] forward layer 2
  std::vector<float> wa;     // [H2p][H1p] backward to hidden 1
  std::vector<float> bp;     // [H1p]
  std::vector<float> table;  // [C][H2p]  class table c[k] (label branch + its half of the connection layer)
  std::vector<float> w3;     // [H2p]
  float b3;
};

inline PackedMim pack(const at::Tensor& w_pred, const at::Tensor& b_pred, const at::Tensor& w_hidden,
               const at::Tensor& class_table, const at::Tensor& w_out, const at::Tensor& b_out) {
  PackedMim m;
  const int64_t H1 = w_pred.size(0), C = w_pred.size(1), H2 = w_hidden.size(0);
  m.C = C;
  m.H1 = H1;
  m.H2 = H2;
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

constexpr int kBlock = 5;  // samples sharing each weight load: kBlock * kTileVecs accumulators fit 16 registers

// out[s][:] = init[s][:] + sum_j in[s][j] * wt[j][:] for the kBlock samples of a block, with wt
// [n_in][width] and width a multiple of kTile. Branch-free; the summation order of one sample does not
// depend on the others, and zero inputs add exact zeros, so skipping them elsewhere gives equal sums.
inline void block_matmul(const float* in, int64_t in_stride, int64_t n_in, const float* wt, int64_t width,
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
inline void block_forward(const PackedMim& m, const float* p, const int64_t* label, float* a1, float* h1, float* a2, float* z) {
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

// out[c0 : c0 + kChunk * kVecWidth] of `gather_rows`, accumulated in kChunk vector registers.
template <int kChunk>
inline void gather_chunk(const int32_t* idx, int64_t n, const float* coef, const float* w, int64_t width, int64_t c0,
                         float* out) {
  vfloat acc[kChunk];
  for (int v = 0; v < kChunk; ++v) acc[v] = vbroadcast(0.f);
  for (int64_t q = 0; q < n; ++q) {
    const float g = coef[idx[q]];
    const float* row = w + idx[q] * width + c0;
    for (int v = 0; v < kChunk; ++v) acc[v] += g * vload(row + v * kVecWidth);
  }
  for (int v = 0; v < kChunk; ++v) vstore(out + c0 + v * kVecWidth, acc[v]);
}

// Accumulator vectors per pass of `gather_rows`: AVX-512 has 32 vector registers, the others 16.
constexpr int kMaxChunk = kVecWidth == 16 ? 16 : 8;

// The last `nvec` (< kMaxChunk) vectors of a row in one pass.
template <int kChunk>
inline void gather_rest(int64_t nvec, const int32_t* idx, int64_t n, const float* coef, const float* w, int64_t width,
                        int64_t c0, float* out) {
  if constexpr (kChunk > 0) {
    if (nvec == kChunk) return gather_chunk<kChunk>(idx, n, coef, w, width, c0, out);
    gather_rest<kChunk - 1>(nvec, idx, n, coef, w, width, c0, out);
  }
}

// out[0:width] = sum_q coef[idx[q]] * w[idx[q]][0:width] (width a multiple of kVecWidth), in passes of
// up to kMaxChunk vectors (one pass for every row width here on AVX-512: each pass re-reads the index
// list). The order over q is the same for every column.
inline void gather_rows(const int32_t* idx, int64_t n, const float* coef, const float* w, int64_t width, float* out) {
  int64_t c0 = 0;
  for (; width - c0 >= kMaxChunk * kVecWidth; c0 += kMaxChunk * kVecWidth)
    gather_chunk<kMaxChunk>(idx, n, coef, w, width, c0, out);
  gather_rest<kMaxChunk - 1>((width - c0) / kVecWidth, idx, n, coef, w, width, c0, out);
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


struct AepptOptions {
  bool preserve_label, stop_when_flipped, renormalize;
};

// Divides p[0:C] by its sum (uniform when the sum is 0), as the reference's renormalize option.
inline void renormalize_row(float* p, int64_t C) {
  float total = 0.f;
  for (int64_t j = 0; j < C; ++j) total += p[j];
  if (total > 0.f) {
    for (int64_t j = 0; j < C; ++j) p[j] /= total;
  } else {
    for (int64_t j = 0; j < C; ++j) p[j] = 1.f / float(C);
  }
}

// sign(W_p^T(1[a1>0] * W_a^T(1[a2>0] * w3))) into dsign[0:Cp], over the active units only.
inline void input_gradient_sign(const PackedMim& m, const int32_t* act1, int64_t n1, const int32_t* act2, int64_t n2,
                                float* g1, float* v, float* dsign) {
  gather_rows(act2, n2, m.w3.data(), m.wa.data(), m.H1p, g1);
  gather_rows(act1, n1, g1, m.wp.data(), m.Cp, v);
  for (int64_t j = 0; j < m.Cp; ++j) dsign[j] = float((v[j] > 0.f) - (v[j] < 0.f));
}

// Rows b0 .. b0 + nvalid of probs into the block's padded p (pads 0), and their labels (torch.argmax).
inline void load_block(const float* probs, int64_t C, int64_t Cp, int64_t b0, int nvalid, float* p, int64_t* label) {
  std::fill(p, p + kBlock * Cp, 0.f);
  for (int s = 0; s < nvalid; ++s) {
    const float* src = probs + (b0 + s) * C;
    std::copy_n(src, C, p + s * Cp);
    label[s] = 0;  // first index of the maximum
    for (int64_t j = 1; j < C; ++j)
      if (src[j] > src[label[s]]) label[s] = j;
  }
}

// The dense loop for a block of kBlock samples: a full forward pass every iteration, shared by the
// block (each weight load serves kBlock samples); the sign of W_p^T(...) depends only on the two ReLU
// masks, so it is reused exactly while neither changed (no backward pass).
struct DenseBlock {
  const PackedMim& m;
  std::vector<float> a1, h1, a2, dsign, g1, v, trial;
  std::vector<int32_t> prev1, prev2, act1, act2;  // active units behind dsign, and of the current pass
  float z[kBlock];
  bool z_current = false;  // z is the logit of the block's p as it is now (no step since the last pass)

  explicit DenseBlock(const PackedMim& mim)
      : m(mim), a1(kBlock * mim.H1p), h1(kBlock * mim.H1p), a2(kBlock * mim.H2p), dsign(kBlock * mim.Cp),
        g1(mim.H1p), v(mim.Cp), trial(mim.Cp), prev1(kBlock * mim.H1p), prev2(kBlock * mim.H2p), act1(mim.H1p),
        act2(mim.H2p) {}

  void forward(const float* p, const int64_t* label) {
    block_forward(m, p, label, a1.data(), h1.data(), a2.data(), z);
    z_current = true;
  }

  // Iterations t0 .. T-1 for the active samples, from their current p (forward_done: the pass on it
  // has run). events (optional, [kBlock][3] as the event-driven op counts them) also gets the masks of
  // p_T compared with those of p_{T-1}, which costs one more pass.
  void iterate(float* p, const int64_t* label, const float* target, bool* active, int nvalid, int64_t t0, int64_t T,
               const float* steps, int64_t B, int64_t b0, AepptOptions opt, bool forward_done, int32_t* events) {
    const int64_t C = m.C, Cp = m.Cp, H1p = m.H1p, H2p = m.H2p;
    int64_t n_prev1[kBlock], n_prev2[kBlock];
    bool have_sign[kBlock] = {false, false, false, false, false};
    const int64_t last = events != nullptr ? T + 1 : T;
    for (int64_t t = t0; t < last; ++t) {
      bool any_active = false;
      for (int s = 0; s < nvalid; ++s) any_active |= active[s];
      if (!any_active) break;
      if (t > t0 || !forward_done) forward(p, label);
      for (int s = 0; s < nvalid; ++s) {
        if (!active[s]) continue;
        const int64_t n1 = active_units(&a1[s * H1p], H1p, act1.data());
        const int64_t n2 = active_units(&a2[s * H2p], H2p, act2.data());
        const bool same = have_sign[s] && n1 == n_prev1[s] && n2 == n_prev2[s] &&
                          std::equal(act1.begin(), act1.begin() + n1, prev1.begin() + s * H1p) &&
                          std::equal(act2.begin(), act2.begin() + n2, prev2.begin() + s * H2p);
        if (events != nullptr && have_sign[s] && !same) ++events[s * 3];
        if (t == T) continue;
        const float sig = sigmoid(z[s]);
        if (opt.stop_when_flipped && (sig >= 0.5f ? 1.f : 0.f) != target[s]) {
          active[s] = false;
          continue;
        }
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
        // One vector pass over the padded row (pads stay 0: their direction is 0): the clipped step,
        // and whether it took a component to a bound (counted when events are).
        float* dst = opt.preserve_label ? trial.data() : ps;  // in place unless the step may be rejected
        z_current = z_current && opt.preserve_label;
        const vfloat sv = vbroadcast(step * dz_sign), zero = vbroadcast(0.f), one = vbroadcast(1.f);
        vint reached = {};
        for (int64_t j = 0; j < Cp; j += kVecWidth) {
          const vfloat old = vload(ps + j);
          vfloat next = old + sv * vload(ds + j);
          next = next < zero ? zero : next;
          next = next > one ? one : next;
          reached |= (next != old) & ((next == zero) | (next == one));
          vstore(dst + j, next);
        }
        if (opt.preserve_label) {
          if (!argmax_is(dst, C, label[s])) continue;
          std::copy_n(dst, C, ps);
          z_current = false;
        }
        if (events != nullptr) events[s * 3 + 1] += any_lane(reached);
      }
    }
  }
};

// Final vectors of a block: renormalised if asked, copied out, and scored (with one more pass unless
// the latest one, e.g. counting events, was on them).
inline void finish_block(DenseBlock& dense, float* p, const int64_t* label, int nvalid, int64_t C, AepptOptions opt,
                         float* adv, float* score_out) {
  for (int s = 0; s < nvalid; ++s) {
    if (opt.renormalize) renormalize_row(p + s * dense.m.Cp, C);
    std::copy_n(p + s * dense.m.Cp, C, adv + s * C);
  }
  if (opt.renormalize || !dense.z_current) dense.forward(p, label);
  for (int s = 0; s < nvalid; ++s) score_out[s] = sigmoid(dense.z[s]);
}

// Block b0 of the batch by the dense loop from the start: the first pass scores p_0 and fixes Y
// (iteration 0 reuses it), then the T iterations, counting events when `events` ([B][3]) is given, and
// the block's outputs. p: the block's [kBlock][Cp] buffer.
inline void run_dense_block(DenseBlock& dense, float* p, const float* probs, const float* steps, int64_t B,
                            int64_t T, int64_t b0, AepptOptions opt, float* adv, float* score_in, float* score_out,
                            int32_t* events) {
  const int64_t C = dense.m.C;
  const int nvalid = int(std::min<int64_t>(kBlock, B - b0));
  int64_t label[kBlock] = {0};
  float target[kBlock] = {0};
  bool active[kBlock];
  load_block(probs, C, dense.m.Cp, b0, nvalid, p, label);
  dense.forward(p, label);
  for (int s = 0; s < kBlock; ++s) {
    active[s] = s < nvalid;
    if (s >= nvalid) continue;
    score_in[b0 + s] = sigmoid(dense.z[s]);
    target[s] = score_in[b0 + s] >= 0.5f ? 1.f : 0.f;
  }
  dense.iterate(p, label, target, active, nvalid, 0, T, steps, B, b0, opt, true,
                events != nullptr ? events + b0 * 3 : nullptr);
  finish_block(dense, p, label, nvalid, C, opt, adv + b0 * C, score_out + b0);
}

}  // namespace cpu
}  // namespace mia_fast
