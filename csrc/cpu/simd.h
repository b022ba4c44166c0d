// A float vector of the widest width the compiler targets (GCC/Clang vector extensions), so one
// source serves SSE, AVX2 and AVX-512 builds.
#pragma once
#include <cstdint>
#include <cstring>

namespace mia_fast {
namespace cpu {

#if defined(MIA_FAST_VEC_WIDTH)  // forced (setup.py: MIA_FAST_VEC_WIDTH=4|8|16), to test every width anywhere
constexpr int kVecWidth = MIA_FAST_VEC_WIDTH;
#elif defined(__AVX512F__)
constexpr int kVecWidth = 16;
#elif defined(__AVX__)
constexpr int kVecWidth = 8;
#else
constexpr int kVecWidth = 4;
#endif

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
// Bit l set where lane l of a comparison mask is (AVX-512 builds make this one mask move).
inline uint32_t lane_bits(vint v) {
  uint32_t bits = 0;
  for (int l = 0; l < kVecWidth; ++l) bits |= uint32_t(v[l] != 0) << l;
  return bits;
}
// Appends base + l for every set bit l of `bits` to idx[*count...], lowest first.
inline void append_set_lanes(uint32_t bits, int32_t base, int32_t* idx, int64_t* count) {
  for (; bits != 0; bits &= bits - 1) idx[(*count)++] = base + __builtin_ctz(bits);
}
inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

}  // namespace cpu
}  // namespace mia_fast
