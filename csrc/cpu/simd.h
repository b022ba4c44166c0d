// A float vector of the widest width the compiler targets (GCC/Clang vector extensions), so one
// source serves SSE, AVX2 and AVX-512 builds.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace mia_fast {
namespace cpu {

#if defined(MIA_FAST_VEC_WIDTH)  // forced (setup.py: MIA_FAST_VEC_WIDTH=4|8|16), to test every width anywhere
#define MIA_FAST_VEC_FLOATS MIA_FAST_VEC_WIDTH
#elif defined(__AVX512F__)
#define MIA_FAST_VEC_FLOATS 16
#elif defined(__AVX__)
#define MIA_FAST_VEC_FLOATS 8
#else
#define MIA_FAST_VEC_FLOATS 4
#endif
constexpr int kVecWidth = MIA_FAST_VEC_FLOATS;

typedef float vfloat __attribute__((vector_size(kVecWidth * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kVecWidth * sizeof(int32_t))));

inline vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }
inline vfloat vbroadcast(float x) {
  vfloat v;
  for (int i = 0; i < kVecWidth; ++i) v[i] = x;
  return v;
}
// Whether any lane of a comparison mask is set: an OR over 64-bit words, not over lanes (a few instructions).
inline bool any_lane(vint v) {
  uint64_t words[kVecWidth / 2];
  std::memcpy(words, &v, sizeof(v));
  uint64_t r = 0;
  for (int l = 0; l < kVecWidth / 2; ++l) r |= words[l];
  return r != 0;
}
// Bit l set where lane l of a comparison mask (lanes 0 or -1) is: one instruction where the vector is
// the machine's own (the generic loop compiles to a reduction tree, 5x slower in a scan).
inline uint32_t lane_bits(vint v) {
#if MIA_FAST_VEC_FLOATS == 16 && defined(__AVX512F__)
  return uint32_t(_mm512_test_epi32_mask((__m512i)v, (__m512i)v));
#elif MIA_FAST_VEC_FLOATS == 8 && defined(__AVX__)
  return uint32_t(_mm256_movemask_ps((__m256)v));
#elif MIA_FAST_VEC_FLOATS == 4 && defined(__SSE__)
  return uint32_t(_mm_movemask_ps((__m128)v));
#else
  uint32_t bits = 0;
  for (int l = 0; l < kVecWidth; ++l) bits |= uint32_t(v[l] != 0) << l;
  return bits;
#endif
}
// Appends base + l for every set bit l of `bits` to idx[*count...], lowest first.
inline void append_set_lanes(uint32_t bits, int32_t base, int32_t* idx, int64_t* count) {
  for (; bits != 0; bits &= bits - 1) idx[(*count)++] = base + __builtin_ctz(bits);
}
inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

}  // namespace cpu
}  // namespace mia_fast
