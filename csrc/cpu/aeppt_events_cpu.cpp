// Event-driven CPU kernel for AEPPT (Xue et al., Algorithm 1) on the label-folded substitute MIM:
// the same results as the dense kernel (aeppt_cpu.cpp), paying only for what changes between iterations.
//
// While the ReLU masks m1, m2 and the set of moving components hold, the input moves by steps[t] * d
// (d = the signed gradient direction, zero where a component is stuck at a bound), so with
// u = W_p d and w = W_a (m1 * u) the forward pass is a1 += steps[t] * u, a2 += steps[t] * w: O(H1 + H2)
// per iteration instead of O(C H1 + H1 H2). Every change is an exact low-rank correction:
//   - a component reaching a bound: one column of W_p out of u (H1), and W_a (m1 * column) for a2, w;
//   - a unit of m1 flipping: one column of W_a for a2 and w (H2), one row of W_p for v (C);
//   - a unit of m2 flipping: g1 and v are recomputed over the active units (as the dense kernel does);
//   - a component of d changing sign: its column of W_p in u and W_a (m1 * column) in w.
// Rounding drifts the incremental pre-activations away from what a fresh forward pass computes. Each
// sample carries a bound on that drift; whenever a pre-activation, the logit or a gradient component is
// within its bound of 0 (or of a decision threshold), the sample is recomputed exactly, so a mask, a
// flip or a step sign is never decided by drift. An exact refresh also runs every kRefreshEvery
// iterations. The op reports, per sample, the iterations with a mask change, those in which a
// component reached a bound, and the exact refreshes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include <atomic>
#include <cstring>

#include "folded_mim.h"

namespace mia_fast {
namespace cpu {
namespace {

constexpr int64_t kRefreshEvery = 128;
// A block whose samples changed a mask in at least kDenseShare of the first 4, 8 or kProbe iterations
// goes on in the dense loop from there: when nearly every step is an event, the corrections cost more than the blocked
// dense forward pass (bench/README.md: C = 10-1000 at large eps change masks in 13-16 of the first 16
// iterations and the event loop is 0.6-0.8x as fast; the benchmark's cases change them in at most 8).
constexpr int64_t kProbe = 16;
constexpr double kDenseShare = 0.75;
// Pilot blocks, spread over a batch of more than 2 * kPilots blocks, run first; when every one of them
// hands over at the first probe, the batch is event-heavy throughout and the other blocks skip the event
// loop's setup and probe and run the dense loop from the start (counting events as they go). Decided by
// fixed blocks, so the result does not depend on the thread count.
constexpr int64_t kPilots = 8;
// Growth of the drift bounds (in ulps of the pre-activations) a linear segment may absorb.
constexpr float kSegmentSlack = 32.f;  // iterations between exact refreshes of a sample

// Sizes of the weights that bound how rounding errors propagate.
struct DriftScale {
  float wp_max;   // max |W_p|
  float wa_max;   // max |W_a|
  float wa_rows;  // max_o sum_i |W_a[o][i]|
  float wp_cols;  // max_j sum_i |W_p[i][j]|
  float w3_sum;   // sum_o |w3[o]|
};

DriftScale drift_scale(const PackedMim& m) {
  DriftScale d{0.f, 0.f, 0.f, 0.f, 0.f};
  std::vector<float> cols(m.Cp, 0.f);
  for (int64_t i = 0; i < m.H1p; ++i)
    for (int64_t j = 0; j < m.Cp; ++j) {
      d.wp_max = std::max(d.wp_max, std::fabs(m.wp[i * m.Cp + j]));
      cols[j] += std::fabs(m.wp[i * m.Cp + j]);
    }
  for (float c : cols) d.wp_cols = std::max(d.wp_cols, c);
  for (int64_t o = 0; o < m.H2p; ++o) {
    float row = 0.f;
    for (int64_t i = 0; i < m.H1p; ++i) {
      row += std::fabs(m.wa[o * m.H1p + i]);
      d.wa_max = std::max(d.wa_max, std::fabs(m.wa[o * m.H1p + i]));
    }
    d.wa_rows = std::max(d.wa_rows, row);
  }
  for (int64_t o = 0; o < m.H2p; ++o) d.w3_sum += std::fabs(m.w3[o]);
  return d;
}

inline vfloat vabs(vfloat v) {
  typedef uint32_t vuint __attribute__((vector_size(kVecWidth * sizeof(uint32_t))));
  return (vfloat)((vuint)v & 0x7fffffffu);
}
// Largest (kMax) or smallest lane, by halving (exact in any order; a chain over the lanes is 15
// dependent steps).
template <bool kMax>
inline float extreme_lane(vfloat v) {
  float r[kVecWidth];
  std::memcpy(r, &v, sizeof(v));
  for (int half = kVecWidth / 2; half > 0; half /= 2)
    for (int l = 0; l < half; ++l) r[l] = (kMax ? r[l + half] > r[l] : r[l + half] < r[l]) ? r[l + half] : r[l];
  return r[0];
}
inline float hmax(vfloat v) { return extreme_lane<true>(v); }
inline float hmin(vfloat v) { return extreme_lane<false>(v); }
// max |x[0:n]| (n a multiple of kVecWidth; pads are 0).
inline float abs_max(const float* x, int64_t n) {
  vfloat r = vbroadcast(0.f);
  for (int64_t i = 0; i < n; i += kVecWidth) {
    const vfloat a = vabs(vload(x + i));
    r = a > r ? a : r;
  }
  return hmax(r);
}
// min |x[0:n_real]| over a padded x[0:n] (n a multiple of kVecWidth).
inline float abs_min(const float* x, int64_t n, int64_t n_real) {
  const vfloat inf = vbroadcast(INFINITY);
  vfloat r = inf;
  vint lane;
  for (int l = 0; l < kVecWidth; ++l) lane[l] = l;
  const vint limit = lane - lane + int32_t(n_real);
  for (int64_t i = 0; i < n; i += kVecWidth, lane += kVecWidth) {
    const vfloat a = lane < limit ? vabs(vload(x + i)) : inf;
    r = a < r ? a : r;
  }
  return hmin(r);
}

// Keeps the sorted list of active units in step with one unit switching on or off.
inline void switch_unit(int32_t* list, int64_t* n, int32_t unit, bool on) {
  int32_t* at = std::lower_bound(list, list + *n, unit);
  if (on) {
    std::memmove(at + 1, at, sizeof(int32_t) * (list + *n - at));
    *at = unit;
    ++*n;
  } else {
    std::memmove(at, at + 1, sizeof(int32_t) * (list + *n - at - 1));
    --*n;
  }
}
// Positions i < n (a multiple of kVecWidth) where x and mask (1 = positive) disagree on the sign of x,
// into idx; returns how many.
inline int64_t sign_changes(const float* x, const float* mask, int64_t n, int32_t* idx) {
  const vfloat zero = vbroadcast(0.f);
  int64_t count = 0;
  for (int64_t i = 0; i < n; i += kVecWidth)
    append_set_lanes(lane_bits((vload(x + i) > zero) != (vload(mask + i) > zero)), int32_t(i), idx, &count);
  return count;
}
inline float sign_of(float x) { return float((x > 0.f) - (x < 0.f)); }

// y[0:n] += a * x[0:n], n a multiple of kVecWidth (explicit vectors: the buffers may alias for all the
// compiler knows).
inline void axpy(float* y, float a, const float* x, int64_t n) {
  const vfloat av = vbroadcast(a);
  for (int64_t i = 0; i < n; i += kVecWidth) vstore(y + i, vload(y + i) + av * vload(x + i));
}

// A component that does not move: no step direction, or the step pushes it further out of [0, 1].
inline bool stuck(float p, float dir) { return dir == 0.f || (dir > 0.f && p >= 1.f) || (dir < 0.f && p <= 0.f); }
// Lanes whose direction pushes p out of [0, 1] (p at or past the bound it heads for): `stuck` for nonzero dir.
inline vint pushes_out(vfloat dir, vfloat p) {
  const vfloat zero = vbroadcast(0.f), one = vbroadcast(1.f);
  return ((dir > zero) & (p >= one)) | ((dir < zero) & (p <= zero));
}

// x[0:n] += s * y (+ extra when given). Returns whether a real entry (index < n_real; the rest are
// pads) is within `bound` of 0, and how many entries' signs now differ from mask (1 = positive), their
// positions into flipped; n is a multiple of kVecWidth.
struct Scan {
  bool near_zero;
  int64_t flips;
};
Scan step_and_scan(float* x, const float* y, float s, const float* extra, const float* mask, int64_t n,
                   int64_t n_real, float bound, int32_t* flipped) {
  const vfloat zero = vbroadcast(0.f), sv = vbroadcast(s), bv = vbroadcast(bound);
  vint near = {}, lane;
  for (int l = 0; l < kVecWidth; ++l) lane[l] = l;
  const vint limit = lane - lane + int32_t(n_real);
  int64_t flips = 0;
  for (int64_t i = 0; i < n; i += kVecWidth, lane += kVecWidth) {
    vfloat xv = vload(x + i) + sv * vload(y + i);
    if (extra != nullptr) xv += vload(extra + i);
    vstore(x + i, xv);
    near |= (vabs(xv) <= bv) & (lane < limit);
    append_set_lanes(lane_bits((xv > zero) != (vload(mask + i) > zero)), int32_t(i), flipped, &flips);
  }
  return Scan{any_lane(near), flips};
}

// out_a = sum_q xa[idx[q]] w[idx[q]], out_b = sum_q xb[idx[q]] w[idx[q]] in one pass over the rows.
void gather_rows_pair(const int32_t* idx, int64_t n, const float* xa, const float* xb, const float* w,
                      int64_t width, float* out_a, float* out_b) {
  constexpr int kChunk = 4;
  int64_t c0 = 0;
  for (; c0 + kChunk * kVecWidth <= width; c0 += kChunk * kVecWidth) {
    vfloat acc_a[kChunk], acc_b[kChunk];
    for (int v = 0; v < kChunk; ++v) acc_a[v] = acc_b[v] = vbroadcast(0.f);
    for (int64_t q = 0; q < n; ++q) {
      const float ga = xa[idx[q]], gb = xb[idx[q]];
      const float* row = w + idx[q] * width + c0;
      for (int v = 0; v < kChunk; ++v) {
        const vfloat r = vload(row + v * kVecWidth);
        acc_a[v] += ga * r;
        acc_b[v] += gb * r;
      }
    }
    for (int v = 0; v < kChunk; ++v) {
      vstore(out_a + c0 + v * kVecWidth, acc_a[v]);
      vstore(out_b + c0 + v * kVecWidth, acc_b[v]);
    }
  }
  for (; c0 < width; c0 += kVecWidth) {
    vfloat acc_a = vbroadcast(0.f), acc_b = vbroadcast(0.f);
    for (int64_t q = 0; q < n; ++q) {
      const vfloat r = vload(w + idx[q] * width + c0);
      acc_a += xa[idx[q]] * r;
      acc_b += xb[idx[q]] * r;
    }
    vstore(out_a + c0, acc_a);
    vstore(out_b + c0, acc_b);
  }
}

constexpr float kUlp = 1.1920929e-7f;  // 2^-23: two unit roundoffs per accumulated operation

// One worker's state, reused sample after sample; every buffer padded like the packed weights.
class EventRunner {
 public:
  EventRunner(const PackedMim& m, const DriftScale& d, AepptOptions opt)
      : m_(m), d_(d), opt_(opt), p_(m.Cp), trial_(m.Cp), dir_(m.Cp), move_(m.Cp), v_(m.Cp), dv_(m.Cp),
        coef_(m.Cp), a1_(m.H1p), u_(m.H1p), g1_(m.H1p), m1_(m.H1p), col_(m.H1p), col2_(m.H1p), a2_(m.H2p),
        w_(m.H2p), m2_(m.H2p), tmp_(m.H2p), tmp2_(m.H2p), all_(m.Cp), act1_(m.H1p), act2_(m.H2p),
        flip1_(m.H1p), flip2_(m.H2p), idx_(m.Cp) {
    for (int64_t j = 0; j < m.Cp; ++j) all_[j] = int32_t(j);
  }

  // Algorithm 1 on one sample from its first forward pass (a1, a2, z of the dense block forward), in
  // three calls: start, advance (to any iteration, as often as wanted), finish. p [Cp] holds the input
  // and, at finish, receives the vector after the last step (before renormalising); events = {iterations
  // with a mask change, iterations in which a component reached a bound, exact refreshes}.
  void start(const float* p, int64_t label, const float* a1, const float* a2, float z0, const float* steps,
             int64_t stride, int64_t T, float* score_in, float* target) {
    std::copy_n(p, m_.Cp, p_.begin());
    label_ = label;
    std::copy_n(a1, m_.H1p, a1_.begin());
    std::copy_n(a2, m_.H2p, a2_.begin());
    take_masks();
    sig_ = sigmoid(z0);
    *score_in = sig_;
    target_ = *target = sig_ >= 0.5f ? 1.f : 0.f;
    sigma_ = target_ > 0.f ? -1.f : 1.f;  // sign(sigmoid(z) - Y) whenever it is not 0
    direction_exact();
    steps_ = steps;
    stride_ = stride;
    T_ = T;
    t_ = 0;
    counted_ = false;
    mask_events_ = bound_events_ = refreshes_ = 0;
    track_maxima();  // the first segment's limits (later ones take the maxima their predecessor ended with)
    begin_segment();
  }

  void finish(float* p, int32_t* events) const {
    std::copy_n(p_.begin(), m_.Cp, p);
    events[0] = mask_events_;
    events[1] = bound_events_;
    events[2] = refreshes_;
  }

  // Iterations so far that changed a mask.
  int32_t mask_events() const { return mask_events_; }
  // The next iteration to run (T once the loop ended or the sample stopped).
  int64_t position() const { return t_; }

  // Iterations up to t_end (or T, or the sample's stop).
  void advance(int64_t t_end) {
    const int64_t C = m_.C, T = std::min(t_end, T_);
    const float* steps = steps_;
    const int64_t stride = stride_;
    float sig = sig_;
    bool counted = counted_;  // whether the latest iteration was counted as a mask change
    int64_t& t = t_;
    for (; t < T; ++t) {
      if (t > 0) {
        float z = z_base_ + pending_ * z_slope_;
        if (ambiguous(z)) {
          refresh(counted);  // the masks of p_t belong to the previous iteration
          z = z_base_;
        }
        sig = sigmoid(z);
      }
      if (opt_.stop_when_flipped && (sig >= 0.5f ? 1.f : 0.f) != target_) {
        t = T_;  // stopped for good
        break;
      }
      counted = false;
      // sign(dJ/dz) = sign(sigmoid(z) - Y); zero when sigmoid(z) rounds to Y exactly: no step.
      if (float((sig > target_) - (sig < target_)) == 0.f) continue;
      const float s = steps[t * stride];
      const bool reaches_bound = propose(s);
      if (opt_.preserve_label && !argmax_is(trial_.data(), C, label_)) continue;
      // Drift of this step: rounding of a1 += s u and of p's own update (|dp - s move| <= ulp(p)),
      // carried into a2 through W_a; u and w carry their own bounds.
      a1_max_ += s * u_max_;
      a2_max_ += s * w_max_;
      e1_ += kUlp * (a1_max_ + s * u_max_ + d_.wp_max * psum_) + s * eu_;
      e2_ += kUlp * (a2_max_ + s * w_max_ + d_.wa_rows * d_.wp_max * psum_) + s * ew_;
      const bool periodic = (t + 1) % kRefreshEvery == 0 && t + 1 < T_;
      if (!reaches_bound && !periodic && pending_ + s < horizon_ && e1_ < e1_limit_ && e2_ < e2_limit_) {
        // Inside the segment no unit can reach 0: a1, a2 and z move linearly, applied when it ends.
        p_.swap(trial_);  // trial is rewritten whole by the next proposal
        pending_ += s;
        continue;
      }
      const int64_t nbound = reaches_bound ? take_bounds(s) : 0;
      p_.swap(trial_);
      const float moved = pending_ + s;
      const Scan s1 = step_and_scan(a1_.data(), u_.data(), moved, nbound > 0 ? col_.data() : nullptr, m1_.data(),
                                    m_.H1p, m_.H1, e1_, flip1_.data());
      const Scan s2 = step_and_scan(a2_.data(), w_.data(), moved, nullptr, m2_.data(), m_.H2p, m_.H2, e2_,
                                    flip2_.data());
      pending_ = 0.f;
      if (nbound > 0) {
        // a2 += W_a (m1 * residual columns); the stuck columns leave u and w (m1 as before this step).
        // One component (the usual case): both are multiples of W_a (m1 * its column), one product.
        if (nbound == 1) {
          gather_rows(act1_.data(), n1_, col2_.data(), m_.wa_t.data(), m_.H2p, tmp2_.data());
          const int32_t j = idx_[0];
          axpy(a2_.data(), coef_[j] * dir_[j], tmp2_.data(), m_.H2p);  // col = coef_j * dir_j * col2
        } else {
          gather_rows_pair(act1_.data(), n1_, col_.data(), col2_.data(), m_.wa_t.data(), m_.H2p, tmp_.data(),
                           tmp2_.data());
          axpy(a2_.data(), 1.f, tmp_.data(), m_.H2p);
        }
        axpy(w_.data(), -1.f, tmp2_.data(), m_.H2p);
        axpy(u_.data(), -1.f, col2_.data(), m_.H1p);
        e2_ += kUlp * d_.wa_rows * abs_max(col_.data(), m_.H1p);
        eu_ += kUlp * float(nbound) * d_.wp_max;
        ew_ += kUlp * float(nbound) * d_.wa_rows * d_.wp_max;
        ++bound_events_;
      }
      if (s1.near_zero) {  // a unit of a1 too close to 0 for the incremental value to decide its mask
        refresh(false);
        continue;
      }
      // Units of m1 that flipped: a2 and w gain or lose their column of W_a.
      const int64_t nflip1 = s1.flips;
      for (int64_t q = 0; q < nflip1; ++q) {
        const int64_t i = flip1_[q];
        const float sgn = a1_[i] > 0.f ? 1.f : -1.f;
        const float* col = &m_.wa_t[i * m_.H2p];
        axpy(a2_.data(), sgn * a1_[i], col, m_.H2p);
        axpy(w_.data(), sgn * u_[i], col, m_.H2p);
        e2_ += d_.wa_max * (e1_ + kUlp * std::fabs(a1_[i]));
        ew_ += kUlp * std::fabs(u_[i]) * d_.wa_max;
      }
      int64_t nflip2 = s2.flips;  // their positions in flip2_
      bool near2 = s2.near_zero;
      if (nbound > 0 || nflip1 > 0) {  // a2 changed after its scan
        nflip2 = sign_changes(a2_.data(), m2_.data(), m_.H2p, flip2_.data());
        near2 = abs_min(a2_.data(), m_.H2p, m_.H2) <= e2_;
      }
      if (near2) {
        refresh(false);
        continue;
      }
      if (nflip1 > 0 || nflip2 > 0) {
        update_gradient(nflip1, nflip2);
        redirect();
        ++mask_events_;
        counted = true;
      }
      if (periodic) {
        refresh(counted, true);
      } else {
        begin_segment();
      }
    }
    sig_ = sig;
    counted_ = counted;
  }

 private:

  float logit() const {
    vfloat acc = vbroadcast(0.f);
    const vfloat zero = vbroadcast(0.f);
    for (int64_t o = 0; o < m_.H2p; o += kVecWidth) {
      const vfloat a = vload(&a2_[o]);
      acc += (a > zero ? a : zero) * vload(&m_.w3[o]);
    }
    float total = m_.b3;
    for (int l = 0; l < kVecWidth; ++l) total += acc[l];
    return total;
  }

  // A new linear segment from the current (exact or incremental) state: z and its slope along w, and
  // the horizon: the accumulated step after which a unit of a1 or a2 heading for 0 could be within
  // the drift bound of it (the bound may grow by its slack, then the segment ends anyway).
  void begin_segment() {
    pending_ = 0.f;
    z_base_ = logit();
    vfloat slope = vbroadcast(0.f);
    for (int64_t o = 0; o < m_.H2p; o += kVecWidth) slope += vload(&m2_[o]) * vload(&m_.w3[o]) * vload(&w_[o]);
    z_slope_ = 0.f;
    for (int l = 0; l < kVecWidth; ++l) z_slope_ += slope[l];
    // The limits take the maxima as they were (any slack is valid: the horizon keeps every unit farther
    // than its limit from 0); the maxima for the drift of this segment's steps come from the same pass.
    e1_limit_ = e1_ + kSegmentSlack * kUlp * (a1_max_ + d_.wp_max);
    e2_limit_ = e2_ + kSegmentSlack * kUlp * (a2_max_ + d_.wa_rows * d_.wp_max);
    horizon_ = std::min(horizon(a1_.data(), u_.data(), m_.H1p, m_.H1, e1_limit_, &a1_max_, &u_max_),
                        horizon(a2_.data(), w_.data(), m_.H2p, m_.H2, e2_limit_, &a2_max_, &w_max_));
  }

  // min over entries with x * y < 0 of (|x| - guard) / |y|: how far x can move along y before an entry
  // comes within guard of 0 (0 when one is there already, infinity when none heads for 0); and, from the
  // same pass, max |x| and max |y| into *x_max, *y_max. n is a multiple of kVecWidth; entries from
  // n_real on are pads (0).
  static float horizon(const float* x, const float* y, int64_t n, int64_t n_real, float guard, float* x_max,
                       float* y_max) {
    const vfloat zero = vbroadcast(0.f), inf = vbroadcast(INFINITY), g = vbroadcast(guard);
    vfloat h = inf, xm = zero, ym = zero;
    vint there = {}, lane;
    for (int l = 0; l < kVecWidth; ++l) lane[l] = l;
    const vint limit = lane - lane + int32_t(n_real);
    for (int64_t i = 0; i < n; i += kVecWidth, lane += kVecWidth) {
      const vfloat xv = vload(x + i), yv = vload(y + i), xa = vabs(xv), ya = vabs(yv);
      xm = xa > xm ? xa : xm;
      ym = ya > ym ? ya : ym;
      const vint real = lane < limit;
      const vfloat room = xa - g;
      there |= (room <= zero) & real;
      const vfloat reach = (xv * yv < zero) & real ? room / ya : inf;
      h = reach < h ? reach : h;
    }
    *x_max = hmax(xm);
    *y_max = hmax(ym);
    return any_lane(there) ? 0.f : hmin(h);
  }

  // True when drift could change what the logit decides: the flip test (z >= 0) or whether
  // sigmoid(z) rounds to the target (no step).
  bool ambiguous(float z) const {
    const float ez = d_.w3_sum * e2_ + kUlp * std::fabs(z);
    if (e2_ == 0.f) return false;
    // The decisions change only near z = 0 and where sigmoid saturates (z > 16.6, z < -88.7).
    if (std::fabs(z) > ez && std::fabs(z) + ez < 15.f) return false;
    auto decide = [&](float zz) {
      const float sg = sigmoid(zz);
      return int(sg >= 0.5f) * 4 + int(sg > target_) * 2 + int(sg < target_);
    };
    return decide(z - ez) != decide(z + ez);
  }

  // trial = clip(p + s * move, 0, 1), psum = its sum; true when a moving component reaches a bound.
  bool propose(float s) {
    const vfloat sv = vbroadcast(s), zero = vbroadcast(0.f), one = vbroadcast(1.f);
    vfloat sum = zero;
    vint hit = {};
    for (int64_t j = 0; j < m_.Cp; j += kVecWidth) {
      const vfloat mv = vload(&move_[j]);
      vfloat tv = vload(&p_[j]) + sv * mv;
      tv = tv < zero ? zero : tv;
      tv = tv > one ? one : tv;
      vstore(&trial_[j], tv);
      sum += tv;
      hit |= pushes_out(mv, tv);
    }
    psum_ = 0.f;
    bool any = false;
    for (int l = 0; l < kVecWidth; ++l) {
      psum_ += sum[l];
      any |= hit[l] != 0;
    }
    return any;
  }

  // Components that reach a bound this step: col = W_p (clipped part of their step), col2 = W_p (their
  // old direction); they stop moving. Returns how many.
  int64_t take_bounds(float s) {
    int64_t n = 0;
    for (int64_t j0 = 0; j0 < m_.Cp; j0 += kVecWidth) {
      const vfloat mv = vload(&move_[j0]), tv = vload(&trial_[j0]);
      append_set_lanes(lane_bits(pushes_out(mv, tv)), int32_t(j0), idx_.data(), &n);
    }
    for (int64_t q = 0; q < n; ++q) {
      const int64_t j = idx_[q];
      coef_[j] = (trial_[j] - p_[j]) - s * move_[j];
    }
    gather_rows_pair(idx_.data(), n, coef_.data(), move_.data(), m_.wp_t.data(), m_.H1p, col_.data(),
                     col2_.data());
    for (int64_t q = 0; q < n; ++q) move_[idx_[q]] = 0.f;
    return n;
  }

  // The masks take their new values (the flipped units in flip1_, flip2_); v follows: a flipped unit of
  // m1 adds or removes its row of W_p (times the old g1), a flipped unit of m2 changes g1 by its row of
  // W_a, which reaches v through W_p^T over the new m1. v is recomputed exactly when drift could decide
  // one of its signs.
  void update_gradient(int64_t nflip1, int64_t nflip2) {
    for (int64_t q = 0; q < nflip1; ++q) {
      const int64_t i = flip1_[q];
      const float sgn = a1_[i] > 0.f ? 1.f : -1.f;
      m1_[i] = a1_[i] > 0.f ? 1.f : 0.f;
      switch_unit(act1_.data(), &n1_, int32_t(i), a1_[i] > 0.f);
      const float* row = &m_.wp[i * m_.Cp];
      axpy(v_.data(), sgn * g1_[i], row, m_.Cp);
      ev_ += kUlp * std::fabs(g1_[i]) * d_.wp_max;
    }
    for (int64_t q = 0; q < nflip2; ++q) {
      const int32_t o = flip2_[q];
      m2_[o] = a2_[o] > 0.f ? 1.f : 0.f;
      switch_unit(act2_.data(), &n2_, o, a2_[o] > 0.f);
    }
    if (nflip2 > 0) {
      std::fill(col_.begin(), col_.end(), 0.f);
      for (int64_t q = 0; q < nflip2; ++q) {
        const int64_t o = flip2_[q];
        const float g = (m2_[o] > 0.f ? 1.f : -1.f) * m_.w3[o];
        const float* row = &m_.wa[o * m_.H1p];
        axpy(col_.data(), g, row, m_.H1p);
      }
      axpy(g1_.data(), 1.f, col_.data(), m_.H1p);
      gather_rows(act1_.data(), n1_, col_.data(), m_.wp.data(), m_.Cp, dv_.data());
      axpy(v_.data(), 1.f, dv_.data(), m_.Cp);
      ev_ += kUlp * d_.wp_cols * (abs_max(col_.data(), m_.H1p) + abs_max(g1_.data(), m_.H1p));
    }
    ev_ += kUlp * abs_max(v_.data(), m_.Cp);
    if (abs_min(v_.data(), m_.Cp, m_.C) <= ev_) gradient_exact();
  }

  // Maxima of |a1|, |a2|, |u|, |w| (in a segment a1, a2 grow by at most s u, s w per step).
  void track_maxima() {
    a1_max_ = abs_max(a1_.data(), m_.H1p);
    a2_max_ = abs_max(a2_.data(), m_.H2p);
    u_max_ = abs_max(u_.data(), m_.H1p);
    w_max_ = abs_max(w_.data(), m_.H2p);
  }

  // a1, a2 and the masks from p, as a fresh forward pass; their drift bounds back to 0.
  void forward_exact() {
    gather_rows(all_.data(), m_.C, p_.data(), m_.wp_t.data(), m_.H1p, a1_.data());
    for (int64_t i = 0; i < m_.H1p; ++i) a1_[i] += m_.bp[i];
    take_mask1();
    gather_rows(act1_.data(), n1_, a1_.data(), m_.wa_t.data(), m_.H2p, a2_.data());
    const float* c = &m_.table[label_ * m_.H2p];
    for (int64_t o = 0; o < m_.H2p; ++o) a2_[o] += c[o];
    take_mask2();
  }

  // The masks and active-unit lists of the current a1, a2, which are exact: drift bounds back to 0.
  void take_masks() {
    take_mask1();
    take_mask2();
  }
  void take_mask1() {
    for (int64_t i = 0; i < m_.H1p; ++i) m1_[i] = a1_[i] > 0.f ? 1.f : 0.f;
    n1_ = active_units(m1_.data(), m_.H1p, act1_.data());
    e1_ = 0.f;
  }
  void take_mask2() {
    for (int64_t o = 0; o < m_.H2p; ++o) m2_[o] = a2_[o] > 0.f ? 1.f : 0.f;
    n2_ = active_units(m2_.data(), m_.H2p, act2_.data());
    e2_ = 0.f;
  }

  // g1 = W_a^T(m2 * w3) and v = W_p^T(m1 * g1) over the active units, as the dense kernel computes them.
  void gradient_exact() {
    gather_rows(act2_.data(), n2_, m_.w3.data(), m_.wa.data(), m_.H1p, g1_.data());
    gather_rows(act1_.data(), n1_, g1_.data(), m_.wp.data(), m_.Cp, v_.data());
    ev_ = 0.f;
  }

  // The step direction from the gradient, then u = W_p move and w = W_a (m1 * u).
  void direction_exact() {
    gradient_exact();
    int64_t nmove = 0;
    for (int64_t j = 0; j < m_.C; ++j) {
      dir_[j] = sigma_ * sign_of(v_[j]);
      move_[j] = stuck(p_[j], dir_[j]) ? 0.f : dir_[j];
      if (move_[j] != 0.f) idx_[nmove++] = int32_t(j);
    }
    gather_rows(idx_.data(), nmove, move_.data(), m_.wp_t.data(), m_.H1p, u_.data());
    gather_rows(act1_.data(), n1_, u_.data(), m_.wa_t.data(), m_.H2p, w_.data());
    eu_ = ew_ = 0.f;
  }

  // After v changed: components whose direction changed move u by their column and w by W_a (m1 * it).
  void redirect() {
    const vfloat zero = vbroadcast(0.f), sigma = vbroadcast(sigma_);
    int64_t n = 0;
    for (int64_t j0 = 0; j0 < m_.Cp; j0 += kVecWidth) {
      const vfloat v = vload(&v_[j0]), p = vload(&p_[j0]), old = vload(&move_[j0]);
      const vfloat dir = sigma * __builtin_convertvector((v < zero) - (v > zero), vfloat);
      const vfloat move = pushes_out(dir, p) ? zero : dir;  // `stuck` for the new directions
      vstore(&dir_[j0], dir);
      vstore(&move_[j0], move);
      vstore(&coef_[j0], move - old);
      append_set_lanes(lane_bits(move != old), int32_t(j0), idx_.data(), &n);
    }
    if (n == 0) return;
    gather_rows(idx_.data(), n, coef_.data(), m_.wp_t.data(), m_.H1p, col_.data());
    axpy(u_.data(), 1.f, col_.data(), m_.H1p);
    gather_rows(act1_.data(), n1_, col_.data(), m_.wa_t.data(), m_.H2p, tmp_.data());
    axpy(w_.data(), 1.f, tmp_.data(), m_.H2p);
    eu_ += kUlp * float(n) * d_.wp_max;
    ew_ += kUlp * float(n) * d_.wa_rows * d_.wp_max;
  }

  // a1, a2 recomputed from p and, when the exact masks differ from the tracked ones (a mask change of
  // the latest iteration, counted unless it was already) or `periodic`, the gradient and direction too;
  // with the same masks the tracked gradient and direction are still right, within their own bounds.
  void refresh(bool counted, bool periodic = false) {
    std::copy(m1_.begin(), m1_.end(), col_.begin());
    std::copy(m2_.begin(), m2_.end(), tmp_.begin());
    forward_exact();
    const bool differ = !std::equal(m1_.begin(), m1_.end(), col_.begin()) ||
                        !std::equal(m2_.begin(), m2_.end(), tmp_.begin());
    if (differ || periodic) direction_exact();
    begin_segment();
    if (differ && !counted) ++mask_events_;
    ++refreshes_;
  }

  const PackedMim& m_;
  const DriftScale& d_;
  const AepptOptions opt_;
  std::vector<float> p_, trial_, dir_, move_, v_, dv_, coef_;  // [Cp]
  std::vector<float> a1_, u_, g1_, m1_, col_, col2_;           // [H1p]
  std::vector<float> a2_, w_, m2_, tmp_, tmp2_;                // [H2p]
  std::vector<int32_t> all_, act1_, act2_, flip1_, flip2_, idx_;
  int64_t n1_ = 0, n2_ = 0, label_ = 0;
  float target_ = 0.f, sigma_ = 0.f, psum_ = 0.f, sig_ = 0.f;
  const float* steps_ = nullptr;
  int64_t stride_ = 0, T_ = 0, t_ = 0;
  bool counted_ = false;
  float a1_max_ = 0.f, a2_max_ = 0.f, u_max_ = 0.f, w_max_ = 0.f;
  // The current linear segment: step accumulated since a1, a2 were last updated, the logit at its
  // start and its slope, the horizon and the drift bounds at which it ends.
  float pending_ = 0.f, z_base_ = 0.f, z_slope_ = 0.f, horizon_ = 0.f, e1_limit_ = 0.f, e2_limit_ = 0.f;
  int32_t mask_events_ = 0, bound_events_ = 0, refreshes_ = 0;
  // Drift bounds: of a1, a2 (against a fresh forward pass), of u, w and v (against fresh sums).
  float e1_ = 0.f, e2_ = 0.f, eu_ = 0.f, ew_ = 0.f, ev_ = 0.f;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> aeppt_events_cpu(
    const at::Tensor& probs, const at::Tensor& w_pred, const at::Tensor& b_pred, const at::Tensor& w_hidden,
    const at::Tensor& class_table, const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& steps,
    bool preserve_label, bool stop_when_flipped, bool renormalize) {
  const AepptShape s = check_aeppt_args(probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps);
  const PackedMim m = pack(w_pred, b_pred, w_hidden, class_table, w_out, b_out);
  const DriftScale d = drift_scale(m);
  auto adv = at::empty_like(probs);
  auto score_in = at::empty({s.batch}, probs.options());
  auto score_out = at::empty({s.batch}, probs.options());
  auto events = at::zeros({s.batch, 3}, probs.options().dtype(at::kInt));
  const AepptOptions opt{preserve_label, stop_when_flipped, renormalize};
  const float* pp = probs.data_ptr<float>();
  const float* st = steps.data_ptr<float>();
  float *ap = adv.data_ptr<float>(), *si = score_in.data_ptr<float>(), *so = score_out.data_ptr<float>();
  int32_t* ev = events.data_ptr<int32_t>();
  const int64_t B = s.batch, C = s.classes, T = s.iters;
  const int64_t Cp = m.Cp, H1p = m.H1p, H2p = m.H2p;
  // One worker's buffers, reused block after block.
  struct Worker {
    std::vector<EventRunner> runners;
    DenseBlock dense;
    std::vector<float> p;
    Worker(const PackedMim& m, const DriftScale& d, AepptOptions opt) : dense(m), p(kBlock * m.Cp) {
      for (int k = 0; k < kBlock; ++k) runners.emplace_back(m, d, opt);
    }
  };
  // Per block of kBlock samples, the first and the last forward pass run dense (as in the dense
  // kernel), everything in between in per-sample event loops, unless events are the rule in the
  // block's first iterations (kDenseShare, checked after 4, 8 and kProbe): then it goes on densely.
  // Returns the iteration at which the block went on densely (T: never).
  auto run_event_block = [&](Worker& wk, int64_t blk) -> int64_t {
    DenseBlock& dense = wk.dense;
    float* p = wk.p.data();
    const int64_t b0 = blk * kBlock;
    const int nvalid = int(std::min<int64_t>(kBlock, B - b0));
    int64_t label[kBlock] = {0};
    float target[kBlock] = {0};
    load_block(pp, C, Cp, b0, nvalid, p, label);
    dense.forward(p, label);
    for (int k = 0; k < nvalid; ++k)
      wk.runners[k].start(&p[k * Cp], label[k], &dense.a1[k * H1p], &dense.a2[k * H2p], dense.z[k], st + b0 + k, B, T,
                          si + b0 + k, &target[k]);
    int64_t dense_from = T;
    for (int64_t probe = kProbe / 4; probe <= kProbe && probe < T && dense_from == T; probe *= 2) {
      int64_t mask_events = 0;
      for (int k = 0; k < nvalid; ++k) {
        wk.runners[k].advance(probe);
        mask_events += wk.runners[k].mask_events();
      }
      if (double(mask_events) >= kDenseShare * double(probe * nvalid)) dense_from = probe;
    }
    bool active[kBlock] = {false, false, false, false, false};
    for (int k = 0; k < nvalid; ++k) {
      if (dense_from == T) wk.runners[k].advance(T);
      active[k] = wk.runners[k].position() < T;  // handed over, not stopped
      wk.runners[k].finish(&p[k * Cp], ev + (b0 + k) * 3);
    }
    dense.z_current = false;  // the event loops moved p
    if (dense_from < T)
      dense.iterate(p, label, target, active, nvalid, dense_from, T, st, B, b0, opt, false, ev + b0 * 3);
    finish_block(dense, p, label, nvalid, C, opt, ap + b0 * C, so + b0);
    return dense_from;
  };
  const int64_t nblocks = (B + kBlock - 1) / kBlock;
  std::vector<int64_t> pilots;
  std::vector<char> is_pilot(nblocks, 0);
  if (nblocks > 2 * kPilots && T > kProbe / 4) {
    for (int64_t i = 0; i < kPilots; ++i) pilots.push_back(i * nblocks / kPilots);
    for (int64_t blk : pilots) is_pilot[blk] = 1;
  }
  std::atomic<int64_t> early{0};  // pilots that handed over at the first probe
  at::parallel_for(0, int64_t(pilots.size()), 1, [&](int64_t begin, int64_t end) {
    Worker wk(m, d, opt);
    for (int64_t i = begin; i < end; ++i) early += run_event_block(wk, pilots[i]) == kProbe / 4;
  });
  const bool dense_only = !pilots.empty() && early.load() == int64_t(pilots.size());
  at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
    Worker wk(m, d, opt);
    for (int64_t blk = begin; blk < end; ++blk) {
      if (is_pilot[blk]) continue;
      if (dense_only) {  // the dense kernel's loop from the start, counting events
        run_dense_block(wk.dense, wk.p.data(), pp, st, B, T, blk * kBlock, opt, ap, si, so, ev);
      } else {
        run_event_block(wk, blk);
      }
    }
  });
  return {adv, score_in, score_out, events};
}

}  // namespace
}  // namespace cpu
}  // namespace mia_fast

TORCH_LIBRARY_IMPL(mia_fast, CPU, m) { m.impl("aeppt_events", &mia_fast::cpu::aeppt_events_cpu); }
