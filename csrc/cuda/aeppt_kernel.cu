// Persistent fused AEPPT kernel (Xue et al., Algorithm 1) on the label-folded substitute MIM.
// One block owns a tile of TB samples and runs all T iterations; the tile's state (p, h1, the
// backward vectors and the gradient signs) lives in shared memory, and so do the weights when they fit
// beside it (C <= ~100 at TB = 32), else they are read through L1/L2.
//
// The event-driven variant (kEvents) keeps the forward pass dense and makes the backward pass
// event-driven: sign(grad) depends only on the ReLU masks (../shared/design/aeppt-math.md), so only the
// samples whose masks changed since their last backward pass run it, compacted into the first columns
// of the tile. The CPU op's incremental forward pass does not pay here: its events diverge per sample,
// and a 32-sample tile almost never has an iteration without one, while the dense forward pass of a
// tile is a few shared-memory GEMMs. Its results are bit for bit the dense kernel's (every column of a
// product is summed in the same order whichever column it sits in).
// Every sum runs in the same order as the CPU kernel (bias first, then k = 0, 1, ... with FMA), so
// CPU and CUDA agree except for the last bits of the output logit. The opt-in tensor-core variant
// (kTensorCores, 3xTF32) runs the same phases with the products on mma.sync; its sums are the
// hardware's, so it agrees with fp32 to about fp32 accuracy instead.
#include "aeppt_kernel.cuh"
#include "launch.cuh"

namespace mia_fast {
namespace cuda {

// The block's dynamic shared memory, declared once for every kernel here (at namespace scope, so the
// CPU emulator in tests/cuda_emulator can define it).
extern __shared__ __align__(16) char dynamic_smem[];

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct TileSmem {
  float* p;       // [C][TB]  current vectors, transposed
  float* h1;      // [H1][TB] relu(a1)
  float* a2;      // [H2][TB] a2, then 1[a2>0] * w3
  float* g1;      // [H1][TB] 1[a1>0] * W_a^T(1[a2>0] * w3); aliases h1 (each unit's thread overwrites
                  // its own h1 entries after reading them, and nothing else reads h1 then)
  signed char* dsign;  // [C][TB] sign(W_p^T g1); aliases a2 when it fits (a2 is dead from the end of the
                       // second backward layer to the next forward pass, dsign is live only in between)
  float* step;    // [TB] this iteration's step, then signed (0: no update)
  int* label;     // [TB]
  float* target;  // [TB]
  int* active;    // [TB]
  // Event-driven kernel only (else null):
  uint32_t* masks;  // [TB][mask_words] the ReLU masks m1, m2 of each sample's latest forward pass, as bits
  int* need;        // [TB] whether the sample runs the backward pass this iteration
  int* order;       // [TB] those samples, ascending: the compacted columns of the backward pass
  int* count;       // [1]  how many
};

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) / 16 * 16; }

// 32-bit words of one sample's masks: m1 (H1 bits), then m2 (H2 bits).
__host__ __device__ inline int mask_words(int h1, int h2) { return (h1 + 31) / 32 + (h2 + 31) / 32; }

// Row stride of the [rows][TB] state arrays: 4 floats of padding keep every row 16-byte aligned (4
// samples are one float4 load) and spread a warp that walks rows (one per lane: epilogues, per-sample
// loops) over 8 banks instead of one. Plain row-major, so the GEMM loops walk a pointer by a constant.
__host__ __device__ constexpr int row_stride(int tb) { return tb + 4; }

// Position of (row, sample) in a [rows][TB] state array.
template <int TB>
__device__ __forceinline__ int at(int row, int sample) {
  return row * row_stride(TB) + sample;
}

// Row stride of the weight copies in shared memory. FMA path: one float of padding makes both the
// row-wise and the column-wise reads of a warp (32 consecutive outputs) conflict-free. Tensor-core
// path: a stride of 4 mod 32 makes the fragment reads along rows conflict-free and those along
// columns 2-way at most.
__host__ __device__ inline int smem_ld(int h1, bool tensor_cores) {
  return tensor_cores ? (h1 + 31) / 32 * 32 + 4 : h1 + 1;
}

// Layout of the dynamic shared memory; with `weights`, one copy of W_p^T [C][ld] and W_a [H2][ld]
// follows the tile state. `events`: the event-driven kernel's state too, and dsign in its own array (it
// must outlive the next forward pass). Returns the bytes used.
__host__ __device__ inline size_t smem_layout(int tb, int c, int h1, int h2, bool weights, bool tensor_cores,
                                              bool events, TileSmem* s, char* base, float** wp_t = nullptr,
                                              float** wa = nullptr) {
  size_t off = 0;
  auto take = [&](size_t bytes) { char* p = base + off; off += align16(bytes); return p; };
  const int ld = row_stride(tb);
  char* p = take(sizeof(float) * c * ld);
  char* hh = take(sizeof(float) * h1 * ld);
  char* a2 = take(sizeof(float) * h2 * ld);
  char* g1 = hh;
  char* ds = c <= 4 * h2 && !events ? a2 : take(c * ld);
  char* st = take(sizeof(float) * tb);
  char* lb = take(sizeof(int) * tb);
  char* tg = take(sizeof(float) * tb);
  char* ac = take(sizeof(int) * tb);
  char *mk = nullptr, *nd = nullptr, *od = nullptr, *ct = nullptr;
  if (events) {
    mk = take(sizeof(uint32_t) * tb * mask_words(h1, h2));
    nd = take(sizeof(int) * tb);
    od = take(sizeof(int) * tb);
    ct = take(sizeof(int));
  }
  if (weights) {
    char* w1 = take(sizeof(float) * c * smem_ld(h1, tensor_cores));
    char* w2 = take(sizeof(float) * h2 * smem_ld(h1, tensor_cores));
    if (wp_t != nullptr) *wp_t = (float*)w1;
    if (wa != nullptr) *wa = (float*)w2;
  }
  if (s != nullptr) {
    *s = TileSmem{(float*)p,  (float*)hh, (float*)a2,   (float*)g1, (signed char*)ds, (float*)st, (int*)lb,
                  (float*)tg, (int*)ac,   (uint32_t*)mk, (int*)nd,  (int*)od,         (int*)ct};
  }
  return off;
}

// A weight matrix as a phase reads it: element (k, n) at ptr[k * ld + n], or at ptr[k + n * ld] when
// kStepK1 (k contiguous). The layout is a template argument so the unrolled k loop reads at constant
// offsets from a pointer instead of computing each address.
template <bool kStepK1>
struct View {
  const float* __restrict__ ptr;
  int ld;
  // Start of output n's weights, and the distance between consecutive k.
  __device__ const float* column(int n) const { return ptr + (kStepK1 ? (size_t)n * ld : (size_t)n); }
  __device__ int k_step() const { return kStepK1 ? 1 : ld; }
};

// The four views of the two weight matrices: in global memory all four are stored with n contiguous
// (transposed copies); in shared memory each matrix is stored once, so two views run along its rows.
template <bool kSmem>
struct Views {
  View<false> layer1;  // (j, i) -> W_p[i][j]
  View<kSmem> layer2;  // (i, o) -> W_a[o][i]
  View<false> back2;   // (o, i) -> W_a[o][i]
  View<kSmem> back1;   // (i, j) -> W_p[i][j]
};

__device__ inline float sigmoidf(float z) { return 1.f / (1.f + expf(-z)); }

// out[n][s] = init(n, s) + sum_k W(k, n) * A[k][s] for n < n_out and the first n_samples samples of the
// tile (rounded up to whole groups: the epilogue skips the rest), A in shared memory as [K][TB]. A warp
// owns 32 * RU outputs (lane + 32 r) of one group of G samples: per k it reads RU conflict-free weights
// and the G samples as G / 4 broadcast 16-byte loads, for G * RU FMAs. Each output is summed as init,
// then k = 0, 1, ... with FMA: the same order as the CPU kernel, whatever column the sample sits in.
template <int TB, int RU, int G, bool kStepK1, class Init, class Epilogue>
__device__ void tile_gemm(int n_out, int n_k, const View<kStepK1> W, const float* A, Init init, Epilogue epilogue,
                          int n_samples) {
  static_assert(G == 4 || G == 8, "a sample group is one or two float4");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int columns = (n_out + 32 * RU - 1) / (32 * RU);
  const int items = columns * ((n_samples + G - 1) / G);
  const int k_step = W.k_step();
  for (int item = warp; item < items; item += kWarps) {
    const int n0 = (item % columns) * 32 * RU + lane, s0 = (item / columns) * G;
    // Outputs past n_out compute on the last valid column (in bounds, no test in the loop) and are
    // never stored.
    const float* __restrict__ wr[RU];
    float acc[RU][G];
#pragma unroll
    for (int r = 0; r < RU; ++r) {
      const int n = min(n0 + 32 * r, n_out - 1);
      wr[r] = W.column(n);
#pragma unroll
      for (int q = 0; q < G; ++q) acc[r][q] = init(n, s0 + q);
    }
    const float* a = A + s0;
#pragma unroll 4
    for (int k = 0; k < n_k; ++k, a += row_stride(TB)) {
      float x[G];
#pragma unroll
      for (int h = 0; h < G / 4; ++h) {
        const float4 u = *reinterpret_cast<const float4*>(a + 4 * h);
        x[4 * h] = u.x, x[4 * h + 1] = u.y, x[4 * h + 2] = u.z, x[4 * h + 3] = u.w;
      }
#pragma unroll
      for (int r = 0; r < RU; ++r) {
        const float w = wr[r][k * k_step];
#pragma unroll
        for (int q = 0; q < G; ++q) acc[r][q] = fmaf(x[q], w, acc[r][q]);
      }
    }
#pragma unroll
    for (int r = 0; r < RU; ++r)
      if (n0 + 32 * r < n_out)
#pragma unroll
        for (int q = 0; q < G; ++q) epilogue(n0 + 32 * r, s0 + q, acc[r][q]);
  }
}

// x truncated to TF32, as the tensor cores take it: the fp32 bit pattern with the low 13 mantissa bits
// cleared (one LOP3; cvt.rna.tf32 costs several instructions on sm_80/sm_90).
__device__ __forceinline__ uint32_t to_tf32(float x) { return __float_as_uint(x) & 0xffffe000u; }

// d += a b for one 16x8 tile of D, one 16x8 tile of A (row-major) and one 8x8 tile of B (column-major),
// each spread over the warp's lanes as PTX's mma.m16n8k8 .tf32 fragments: with g = lane / 4 and
// t = lane % 4, a = {A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]}, b = {B[t][g], B[t+4][g]},
// d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
__device__ __forceinline__ void mma_tf32(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef __CUDA_ARCH__
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else  // the same product gathered from the fragments with shuffles, for the CPU emulator
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int k = 0; k < 8; ++k) {
    const int from = k % 4;  // lanes g' * 4 + k % 4 hold column k of A (row g') and row k of B (column g')
    const float a_g = __uint_as_float(__shfl_sync(0xffffffffu, k < 4 ? a[0] : a[2], g * 4 + from));
    const float a_g8 = __uint_as_float(__shfl_sync(0xffffffffu, k < 4 ? a[1] : a[3], g * 4 + from));
    const float b_0 = __uint_as_float(__shfl_sync(0xffffffffu, k < 4 ? b[0] : b[1], 2 * t * 4 + from));
    const float b_1 = __uint_as_float(__shfl_sync(0xffffffffu, k < 4 ? b[0] : b[1], (2 * t + 1) * 4 + from));
    d[0] = fmaf(a_g, b_0, d[0]);
    d[1] = fmaf(a_g, b_1, d[1]);
    d[2] = fmaf(a_g8, b_0, d[2]);
    d[3] = fmaf(a_g8, b_1, d[3]);
  }
#endif
}

// x = hi + lo, hi = TF32(x), lo = TF32(x - hi) (x - hi is exact; truncating it loses < 2^-21 of x).
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(x);
  lo = to_tf32(x - __uint_as_float(hi));
}

// A compile-time flag for generic lambdas.
template <bool B>
struct Flag {
  static constexpr bool value = B;
};

// tile_gemm's product on the tensor cores in 3xTF32: x w = x_hi w_hi + x_hi w_lo + x_lo w_hi (the
// dropped x_lo w_lo is ~2^-20 of it), so about fp32 accuracy, but the sums inside an MMA run in the
// hardware's order: results differ from tile_gemm in the last bits. A warp owns MT tiles of 16
// outputs by NT tiles of 8 samples; k runs in steps of 8, zero-padded past n_k.
template <int TB, int MT, int NT, bool kStepK1, class Init, class Epilogue>
__device__ void tile_mma(int n_out, int n_k, const View<kStepK1> W, const float* A, Init init, Epilogue epilogue,
                         int n_samples) {
  static_assert(TB % (8 * NT) == 0, "sample tiles must cover the tile");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
  const int columns = (n_out + 16 * MT - 1) / (16 * MT);
  const int items = columns * ((n_samples + 8 * NT - 1) / (8 * NT));
  const int k_step = W.k_step();
  for (int item = warp; item < items; item += kWarps) {
    const int n0 = (item % columns) * 16 * MT, s0 = (item / columns) * 8 * NT;
    // Rows g and g + 8 of each output tile (past n_out: the last valid row, never stored), as pointers
    // walking k from t: fragment element i reads k = t (i < 2) or t + 4 (i >= 2) of row g + 8 (i % 2).
    const float* wk[MT][2];
    float acc[MT][NT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int n = min(n0 + 16 * m + g + 8 * h, n_out - 1);
        wk[m][h] = W.column(n) + t * k_step;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          acc[m][j][2 * h] = init(n, s0 + 8 * j + 2 * t);
          acc[m][j][2 * h + 1] = init(n, s0 + 8 * j + 2 * t + 1);
        }
      }
    const float* xk = A + t * row_stride(TB) + s0 + g;  // B: k = t (and t + 4) of sample g
    // One k step of 8; only the last, partial one tests k < n_k.
    auto k_step8 = [&](int k0, auto guarded) {
      const bool lo_ok = !decltype(guarded)::value || k0 + t < n_k;
      const bool hi_ok = !decltype(guarded)::value || k0 + t + 4 < n_k;
      uint32_t a_hi[MT][4], a_lo[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float* p = wk[m][i % 2] + (i < 2 ? 0 : 4 * k_step);
          split_tf32((i < 2 ? lo_ok : hi_ok) ? *p : 0.f, a_hi[m][i], a_lo[m][i]);
        }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        uint32_t b_hi[2], b_lo[2];
        split_tf32(lo_ok ? xk[8 * j] : 0.f, b_hi[0], b_lo[0]);
        split_tf32(hi_ok ? xk[8 * j + 4 * row_stride(TB)] : 0.f, b_hi[1], b_lo[1]);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma_tf32(acc[m][j], a_lo[m], b_hi);
          mma_tf32(acc[m][j], a_hi[m], b_lo);
          mma_tf32(acc[m][j], a_hi[m], b_hi);
        }
      }
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h) wk[m][h] += 8 * k_step;
      xk += 8 * row_stride(TB);
    };
    int k0 = 0;
    for (; k0 + 8 <= n_k; k0 += 8) k_step8(k0, Flag<false>{});
    if (k0 < n_k) k_step8(k0, Flag<true>{});
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int n = n0 + 16 * m + g + 8 * (i / 2);
        if (n < n_out)
#pragma unroll
          for (int j = 0; j < NT; ++j) epilogue(n, s0 + 8 * j + 2 * t + i % 2, acc[m][j][i]);
      }
  }
}

// One phase's product out = init + W^T A: on the FMA units (tile_gemm: RU outputs per lane, groups of
// G samples) or, with kTensorCores, on the tensor cores (tile_mma: MT x NT tiles per warp).
//
// Work split over the 8 warps: H1-wide outputs take TB / 8 outputs per lane and groups of 8 samples
// (2 * 4 items at TB = 32), or 2 x TB / 8 tiles per warp (8 items); the 64-wide second layer takes
// groups of 4 samples so that all 8 warps get an item (tensor cores: 1 x TB / 16 tiles); the C-wide
// last one takes groups of 8 (C = 100: 2 * 4 items; tensor cores: 7 items of 1 x TB / 8 tiles).
template <int TB, bool kTensorCores, int RU, int G, int MT, int NT, class V, class Init, class Epilogue>
__device__ void tile_product(int n_out, int n_k, const V W, const float* A, Init init, Epilogue epilogue,
                             int n_samples = TB) {
  if constexpr (kTensorCores) {
    tile_mma<TB, MT, NT>(n_out, n_k, W, A, init, epilogue, n_samples);
  } else {
    tile_gemm<TB, RU, G>(n_out, n_k, W, A, init, epilogue, n_samples);
  }
}

// h1[i][s] = relu(b_p[i] + sum_j W_p[i][j] p[s][j])
template <int TB, bool kTensorCores, class V>
__device__ void forward_layer1(const FoldedWeights& w, const V W, const TileSmem& s) {
  tile_product<TB, kTensorCores, TB / 8, 8, 2, TB / 8>(
      w.hidden1, w.classes, W, s.p, [&](int i, int) { return w.bp[i]; },
      [&](int i, int q, float a) { s.h1[at<TB>(i, q)] = a > 0.f ? a : 0.f; });
}

// a2[o][s] = c[label s][o] + sum_i W_a[o][i] h1[i][s]
template <int TB, bool kTensorCores, class V>
__device__ void forward_layer2(const FoldedWeights& w, const V W, const TileSmem& s) {
  tile_product<TB, kTensorCores, (TB >= 32 ? 2 : 1), 4, 1, (TB >= 16 ? TB / 16 : 1)>(
      w.hidden2, w.hidden1, W, s.h1, [&](int o, int q) { return w.table[(size_t)s.label[q] * w.hidden2 + o]; },
      [&](int o, int q, float a) { s.a2[at<TB>(o, q)] = a; });
}

// g1[i][s] = 1[h1 > 0] * sum_o W_a[o][i] g2[o][s]  (written over h1: each entry by the thread that read it).
// kEvents: for the n compacted columns (sample order[s]), with m1 from the mask bits (h1 is not read).
template <int TB, bool kTensorCores, bool kEvents, class V>
__device__ void backward_layer2(const FoldedWeights& w, const V W, const TileSmem& s, int n = TB) {
  const int words = mask_words(w.hidden1, w.hidden2);
  tile_product<TB, kTensorCores, TB / 8, 8, 2, TB / 8>(
      w.hidden1, w.hidden2, W, s.a2, [](int, int) { return 0.f; },
      [&](int i, int q, float a) {
        if constexpr (kEvents) {
          if (q < n) s.g1[at<TB>(i, q)] = (s.masks[s.order[q] * words + i / 32] >> (i % 32)) & 1u ? a : 0.f;
        } else {
          s.g1[at<TB>(i, q)] = s.h1[at<TB>(i, q)] > 0.f ? a : 0.f;
        }
      },
      n);
}

// dsign[j][s] = sign(sum_i W_p[i][j] g1[i][s]); kEvents: column s of the n compacted ones is sample order[s].
template <int TB, bool kTensorCores, bool kEvents, class V>
__device__ void backward_layer1(const FoldedWeights& w, const V W, const TileSmem& s, int n = TB) {
  tile_product<TB, kTensorCores, 2, 8, 1, TB / 8>(
      w.classes, w.hidden1, W, s.g1, [](int, int) { return 0.f; },
      [&](int j, int q, float a) {
        if (kEvents && q >= n) return;
        s.dsign[at<TB>(j, kEvents ? s.order[q] : q)] = (signed char)((a > 0.f) - (a < 0.f));
      },
      n);
}

// Event-driven kernel: sample q's masks m1 = 1[h1 > 0], m2 = 1[a2 > 0] of this forward pass into its mask
// words; returns (to every lane) whether they differ from the words there before.
template <int TB>
__device__ bool update_masks(const FoldedWeights& w, const TileSmem& s, int q, int lane) {
  const int words1 = (w.hidden1 + 31) / 32, words = mask_words(w.hidden1, w.hidden2);
  uint32_t* mine = s.masks + q * words;
  bool differ = false;
  for (int k = 0; k < words; ++k) {
    const int unit = (k < words1 ? k : k - words1) * 32 + lane;
    const bool on = k < words1 ? unit < w.hidden1 && s.h1[at<TB>(unit, q)] > 0.f
                               : unit < w.hidden2 && s.a2[at<TB>(unit, q)] > 0.f;
    const uint32_t bits = __ballot_sync(0xffffffffu, on);
    if (lane == k % 32) {
      differ |= mine[k] != bits;
      mine[k] = bits;
    }
  }
  return __ballot_sync(0xffffffffu, differ) != 0;
}

// Logit z = b3 + sum_o relu(a2[o]) w3[o] of sample q, reduced by one warp (all lanes get it).
template <int TB>
__device__ float warp_logit(const FoldedWeights& w, const TileSmem& s, int q, int lane) {
  float part = 0.f;
  for (int o = lane; o < w.hidden2; o += 32) {
    const float a = s.a2[at<TB>(o, q)];
    part = fmaf(a > 0.f ? a : 0.f, w.w3[o], part);
  }
  for (int off = 16; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
  return part + *w.b3;
}

// torch.argmax over j < classes of value(j), reduced by one warp: the first index of the maximum.
template <class Value>
__device__ int warp_argmax(int classes, int lane, Value value) {
  float best = -1.f;
  int best_j = 0x7fffffff;
  for (int j = lane; j < classes; j += 32) {
    const float x = value(j);
    if (x > best) { best = x; best_j = j; }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, off);
    const int oj = __shfl_xor_sync(0xffffffffu, best_j, off);
    if (ob > best || (ob == best && oj < best_j)) { best = ob; best_j = oj; }
  }
  return best_j < classes ? best_j : 0;
}

// Component j of sample q after this iteration's step: clip(p + step * sign, 0, 1).
template <int TB>
__device__ __forceinline__ float stepped(const TileSmem& s, int j, int q, float step) {
  return fminf(fmaxf(s.p[at<TB>(j, q)] + step * (float)s.dsign[at<TB>(j, q)], 0.f), 1.f);
}

template <int TB, bool kSmemWeights, bool kTensorCores, bool kEvents>
__global__ void __launch_bounds__(kThreads) aeppt_kernel(FoldedWeights w, AepptArgs a) {
  static_assert(!(kEvents && kTensorCores), "the event-driven kernel runs in fp32");
  TileSmem s;
  float *wp_s = nullptr, *wa_s = nullptr;
  smem_layout(TB, w.classes, w.hidden1, w.hidden2, kSmemWeights, kTensorCores, kEvents, &s, dynamic_smem, &wp_s,
              &wa_s);
  Views<kSmemWeights> v;
  if constexpr (kSmemWeights) {
    const int ld = smem_ld(w.hidden1, kTensorCores);
    for (int idx = threadIdx.x; idx < w.classes * w.hidden1; idx += kThreads)
      wp_s[(idx / w.hidden1) * ld + idx % w.hidden1] = w.wp_t[idx];
    for (int idx = threadIdx.x; idx < w.hidden2 * w.hidden1; idx += kThreads)
      wa_s[(idx / w.hidden1) * ld + idx % w.hidden1] = w.wa[idx];
    v = Views<true>{{wp_s, ld}, {wa_s, ld}, {wa_s, ld}, {wp_s, ld}};
  } else {
    v = Views<false>{{w.wp_t, w.hidden1}, {w.wa_t, w.hidden2}, {w.wa, w.hidden1}, {w.wp, w.classes}};
  }
  const int64_t b0 = (int64_t)blockIdx.x * TB;
  const int nvalid = (int)min((int64_t)TB, a.batch - b0);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int C = w.classes;

  // Load the tile transposed; pad samples past the batch end with zeros (inactive, never written).
  for (int idx = threadIdx.x; idx < C * TB; idx += kThreads) {
    const int q = idx / C, j = idx % C;
    s.p[at<TB>(j, q)] = q < nvalid ? a.probs[(b0 + q) * C + j] : 0.f;
  }
  __syncthreads();
  for (int q = warp; q < TB; q += kWarps) {
    const int label = warp_argmax(C, lane, [&](int j) { return s.p[at<TB>(j, q)]; });
    if (lane == 0) {
      s.label[q] = label;
      s.active[q] = q < nvalid;
    }
  }
  __syncthreads();

  // The event-driven kernel runs one more forward pass, on p_T, to count its mask change.
  const int passes = kEvents ? a.iters + 1 : (a.iters > 0 ? a.iters : 1);
  for (int t = 0; t < passes; ++t) {
    // This iteration's random steps, fetched now so their latency hides behind layer 1.
    if (threadIdx.x < TB) s.step[threadIdx.x] = t < a.iters && threadIdx.x < nvalid
                                                   ? a.steps[(int64_t)t * a.batch + b0 + threadIdx.x] : 0.f;
    forward_layer1<TB, kTensorCores>(w, v.layer1, s);
    __syncthreads();
    forward_layer2<TB, kTensorCores>(w, v.layer2, s);
    __syncthreads();
    for (int q = warp; q < TB; q += kWarps) {
      const float sig = sigmoidf(warp_logit<TB>(w, s, q, lane));
      __syncwarp();
      bool changed = false;
      if constexpr (kEvents) changed = update_masks<TB>(w, s, q, lane);
      float step = 0.f;
      bool need = false;
      if (q < nvalid) {
        if (t == 0 && lane == 0) {
          a.score_in[b0 + q] = sig;
          s.target[q] = sig >= 0.5f ? 1.f : 0.f;
        }
        __syncwarp();
        const float target = s.target[q];
        bool active = s.active[q] != 0;
        // Counted for every sample still running, as the CPU op counts (before the flip test).
        if (kEvents && t > 0 && active && changed && lane == 0) ++a.events[(b0 + q) * 3];
        if (active && a.stop_when_flipped && (sig >= 0.5f ? 1.f : 0.f) != target) active = false;
        const float dz_sign = (float)((sig > target) - (sig < target));
        if (active && t < a.iters) step = s.step[q] * dz_sign;
        // Masks of a running sample are stored every iteration, so its signs are stale exactly when
        // they changed.
        need = active && t < a.iters && (t == 0 || changed);
        __syncwarp();
        if (lane == 0) s.active[q] = active;
      }
      if (lane == 0) {
        s.step[q] = step;
        if constexpr (kEvents) s.need[q] = need;
      }
      for (int o = lane; o < w.hidden2; o += 32) s.a2[at<TB>(o, q)] = s.a2[at<TB>(o, q)] > 0.f ? w.w3[o] : 0.f;
    }
    __syncthreads();
    if (t >= a.iters) break;
    if constexpr (kEvents) {
      // The samples that need the backward pass, in order, then their columns of g2 moved to the front
      // (in place: column order[r] >= r is not overwritten before it is read).
      if (warp == 0) {
        const bool need = lane < TB && s.need[lane] != 0;
        const uint32_t bits = __ballot_sync(0xffffffffu, need);
        if (need) s.order[__popc(bits & ((1u << lane) - 1u))] = lane;
        if (lane == 0) *s.count = __popc(bits);
      }
      __syncthreads();
      const int n = *s.count;
      if (n > 0) {
        for (int o = threadIdx.x; o < w.hidden2; o += kThreads)
          for (int r = 0; r < n; ++r) s.a2[at<TB>(o, r)] = s.a2[at<TB>(o, s.order[r])];
        __syncthreads();
        backward_layer2<TB, false, true>(w, v.back2, s, n);
        __syncthreads();
        backward_layer1<TB, false, true>(w, v.back1, s, n);
        __syncthreads();
      }
    } else {
      backward_layer2<TB, kTensorCores, false>(w, v.back2, s);
      __syncthreads();
      backward_layer1<TB, kTensorCores, false>(w, v.back1, s);
      __syncthreads();
    }
    for (int q = warp; q < TB; q += kWarps) {
      const float step = s.step[q];
      if (step == 0.f) continue;  // inactive, padding, or sigmoid(z) == Y exactly
      if (a.preserve_label &&
          warp_argmax(C, lane, [&](int j) { return stepped<TB>(s, j, q, step); }) != s.label[q]) continue;
      bool reached = false;  // a component taken to a bound of [0, 1] by this step
      for (int j = lane; j < C; j += 32) {
        const float old = s.p[at<TB>(j, q)], next = stepped<TB>(s, j, q, step);
        reached |= next != old && (next == 0.f || next == 1.f);
        s.p[at<TB>(j, q)] = next;
      }
      if constexpr (kEvents) {
        if (__ballot_sync(0xffffffffu, reached) != 0 && lane == 0) ++a.events[(b0 + q) * 3 + 1];
      }
    }
    __syncthreads();
  }

  // Renormalise if asked, write the tile out, and score the final vectors.
  for (int q = warp; q < nvalid; q += kWarps) {
    float scale = 1.f;
    bool uniform = false;
    if (a.renormalize) {
      float part = 0.f;
      for (int j = lane; j < C; j += 32) part += s.p[at<TB>(j, q)];
      for (int off = 16; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
      uniform = !(part > 0.f);
      scale = part;
    }
    __syncwarp();
    for (int j = lane; j < C; j += 32) {
      float x = s.p[at<TB>(j, q)];
      if (a.renormalize) x = uniform ? 1.f / (float)C : x / scale;
      s.p[at<TB>(j, q)] = x;
      a.adv[(b0 + q) * C + j] = x;
    }
  }
  __syncthreads();
  forward_layer1<TB, kTensorCores>(w, v.layer1, s);
  __syncthreads();
  forward_layer2<TB, kTensorCores>(w, v.layer2, s);
  __syncthreads();
  for (int q = warp; q < nvalid; q += kWarps) {
    const float sig = sigmoidf(warp_logit<TB>(w, s, q, lane));
    if (lane == 0) a.score_out[b0 + q] = sig;
  }
}

// Selection: one block per original, one warp per candidate; the block then picks the lowest-loss
// qualifying candidate in index order (ties -> lowest index).
constexpr int kSelectThreads = 256;
constexpr size_t kDefaultSmemBytes = 48 * 1024;  // dynamic shared memory a kernel gets without opting in

__global__ void __launch_bounds__(kSelectThreads) select_kernel(SelectArgs a) {
  float* d2s = reinterpret_cast<float*>(dynamic_smem);  // [K]
  const int64_t n = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* orig = a.originals + n * a.d;
  // float4 loads when every row starts 16-byte aligned: not so for a tensor view whose storage offset is
  // not a multiple of 4 floats, which then takes the scalar loop.
  const bool vec = a.d % 4 == 0 && (reinterpret_cast<uintptr_t>(a.originals) |
                                    reinterpret_cast<uintptr_t>(a.candidates)) % 16 == 0;
  for (int k = warp; k < a.k; k += kSelectThreads / 32) {
    const float* cand = a.candidates + (n * a.k + k) * a.d;
    float acc = 0.f;
    if (vec) {
      const float4* c4 = reinterpret_cast<const float4*>(cand);
      const float4* o4 = reinterpret_cast<const float4*>(orig);
      for (int i = lane; i < a.d / 4; i += 32) {
        const float4 c = __ldcs(c4 + i), o = __ldg(o4 + i);
        const float dx = c.x - o.x, dy = c.y - o.y, dz = c.z - o.z, dw = c.w - o.w;
        acc = fmaf(dx, dx, acc);
        acc = fmaf(dy, dy, acc);
        acc = fmaf(dz, dz, acc);
        acc = fmaf(dw, dw, acc);
      }
    } else {
      for (int i = lane; i < a.d; i += 32) {
        const float dx = __ldcs(cand + i) - __ldg(orig + i);
        acc = fmaf(dx, dx, acc);
      }
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) {
      d2s[k] = acc;
      a.distances[n * a.k + k] = a.squared ? acc : sqrtf(acc);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t best = -1;
    float best_loss = 0.f;
    for (int k = 0; k < a.k; ++k) {
      const float l = a.losses[n * a.k + k];
      const bool ok = (a.valid == nullptr || a.valid[n * a.k + k]) && d2s[k] <= a.threshold && !isnan(l);
      if (ok && (best < 0 || l < best_loss)) {
        best = k;
        best_loss = l;
      }
    }
    a.index[n] = best;
  }
}

}  // namespace

size_t aeppt_smem_bytes(int tile, int classes, int hidden1, int hidden2, bool weights, bool tensor_cores,
                        bool events) {
  return smem_layout(tile, classes, hidden1, hidden2, weights, tensor_cores, events, nullptr, nullptr);
}

AepptPlan aeppt_plan(int64_t batch, int classes, int hidden1, int hidden2, bool tensor_cores, size_t smem_limit,
                     int multiprocessors, bool events) {
  // Weights in shared memory first (no L2 traffic in the loop); 32-sample tiles reuse each weight
  // read most, unless that leaves SMs idle at this batch size.
  auto fits = [&](int tb, bool weights) {
    return aeppt_smem_bytes(tb, classes, hidden1, hidden2, weights, tensor_cores, events) <= smem_limit;
  };
  for (bool weights : {true, false}) {
    for (int tb : {32, 16, 8}) {
      if (!fits(tb, weights)) continue;
      if (tb > 8 && (batch + tb - 1) / tb < multiprocessors / 2) continue;
      return AepptPlan{tb, weights, tensor_cores, events};
    }
    if (fits(8, weights)) return AepptPlan{8, weights, tensor_cores, events};
  }
  return AepptPlan{0, false, tensor_cores, events};
}

template <int TB, bool kSmemWeights, bool kTensorCores, bool kEvents>
static cudaError_t launch_tile(const FoldedWeights& w, const AepptArgs& a, cudaStream_t stream) {
  const size_t smem = aeppt_smem_bytes(TB, w.classes, w.hidden1, w.hidden2, kSmemWeights, kTensorCores, kEvents);
  auto* kernel = aeppt_kernel<TB, kSmemWeights, kTensorCores, kEvents>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  return launch(kernel, dim3((unsigned)((a.batch + TB - 1) / TB)), dim3(kThreads), smem, stream, w, a);
}

template <int TB>
static cudaError_t launch_tile(const FoldedWeights& w, const AepptArgs& a, AepptPlan plan, cudaStream_t stream) {
  if (plan.events) {
    return plan.weights_in_smem ? launch_tile<TB, true, false, true>(w, a, stream)
                                : launch_tile<TB, false, false, true>(w, a, stream);
  }
  if (plan.weights_in_smem) {
    return plan.tensor_cores ? launch_tile<TB, true, true, false>(w, a, stream)
                             : launch_tile<TB, true, false, false>(w, a, stream);
  }
  return plan.tensor_cores ? launch_tile<TB, false, true, false>(w, a, stream)
                           : launch_tile<TB, false, false, false>(w, a, stream);
}

cudaError_t launch_aeppt(const FoldedWeights& w, const AepptArgs& a, AepptPlan plan, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  // The event-driven kernel is fp32 only, and counts into a.events.
  if (plan.events != (a.events != nullptr) || (plan.events && plan.tensor_cores)) return cudaErrorInvalidValue;
  switch (plan.tile) {
    case 32: return launch_tile<32>(w, a, plan, stream);
    case 16: return launch_tile<16>(w, a, plan, stream);
    case 8: return launch_tile<8>(w, a, plan, stream);
    default: return cudaErrorInvalidValue;
  }
}

size_t select_smem_bytes(int64_t k) { return sizeof(float) * (size_t)k; }

cudaError_t launch_select(const SelectArgs& a, cudaStream_t stream) {
  if (a.n == 0 || a.k == 0) return cudaSuccess;
  const size_t smem = select_smem_bytes(a.k);
  if (smem > kDefaultSmemBytes) {  // K > 12288 candidates: opt in to more (up to the device's limit)
    const cudaError_t err = cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
  }
  return launch(select_kernel, dim3((unsigned)a.n), dim3(kSelectThreads), smem, stream, a);
}

}  // namespace cuda
}  // namespace mia_fast
