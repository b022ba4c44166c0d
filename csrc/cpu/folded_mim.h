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

// out[0:width] = sum_q coef[idx[q]] * w[idx[q]][0:width] (width a multiple of kVecWidth), in column
// chunks of up to 8 vectors so that narrow widths still keep several independent accumulators. The
// order over q is the same for every column.
inline void gather_rows(const int32_t* idx, int64_t n, const float* coef, const float* w, int64_t width, float* out) {
  int64_t c0 = 0;
  for (; width - c0 >= 8 * kVecWidth; c0 += 8 * kVecWidth) gather_chunk<8>(idx, n, coef, w, width, c0, out);
  if (width - c0 >= 4 * kVecWidth) {
    gather_chunk<4>(idx, n, coef, w, width, c0, out);
    c0 += 4 * kVecWidth;
  }
  if (width - c0 >= 2 * kVecWidth) {
    gather_chunk<2>(idx, n, coef, w, width, c0, out);
    c0 += 2 * kVecWidth;
  }
  if (width - c0 >= kVecWidth) gather_chunk<1>(idx, n, coef, w, width, c0, out);
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

}  // namespace cpu
}  // namespace mia_fast
