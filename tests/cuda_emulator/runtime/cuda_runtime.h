// CPU stand-in for <cuda_runtime.h>: just enough of CUDA to compile csrc/cuda/*.cu with g++ and run
// its kernels on the CPU, so their logic is tested on machines without a GPU.
//
// A launch runs the grid's blocks one after another; a block's threads are fibers on one OS thread
// (started with makecontext, switched with _setjmp/_longjmp, which make no system calls: a shuffle
// is a switch through all 32 lanes). A fiber runs until it reaches __syncthreads, a warp operation or its end, so the code
// between two barriers runs thread by thread, in an order the caller picks (forward, reverse or
// shuffled): a missing barrier then shows up as results that depend on the order. Shared memory is
// filled with NaN before each block; barriers that not every thread reaches, and warp operations
// the 32 lanes do not all execute together, end the launch with an error instead of hanging.
// Not modelled: memory races inside one segment, timing, occupancy, partial-warp masks.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Only namespace-scope `extern __shared__` arrays are supported (the emulator defines them); the
// section attribute makes a block-scope __shared__ variable a compile error instead of a silent
// per-thread copy.
#define __shared__ __attribute__((section(".cuda_emulator_shared")))

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9,
                   cudaErrorLaunchFailure = 719 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
typedef struct CUstream_st* cudaStream_t;

template <class T>
inline T min(T a, T b) { return b < a ? b : a; }
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }

namespace cuda_emulator {

constexpr size_t kSharedBytes = 228 * 1024;  // the H100's shared memory per SM
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kStackBytes = 256 * 1024;

enum class Order { forward = 0, reverse = 1, shuffled = 2 };

struct Fiber {
  ucontext_t start;  // entry into the kernel, used once
  jmp_buf resume;    // where it yielded
  bool started = false;
  std::unique_ptr<char[]> stack;
  uint3 index;
  enum { runnable, at_block_barrier, at_warp_barrier, done } state = runnable;
};

struct Warp {
  int arrived = 0;
  unsigned generation = 0;
  const char* op = nullptr;
  uint64_t slots[2][32];  // values a shuffle exchanges, double-buffered by generation
};

// Everything about the launch in progress; one launch at a time.
struct Launch {
  Order order = Order::forward;
  uint32_t seed = 0;
  std::map<const void*, size_t> max_dynamic_shared;  // cudaFuncAttributeMaxDynamicSharedMemorySize
  std::string error;                                 // the last launch's failure, "" if none
  dim3 grid, block;
  uint3 block_index;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Fiber* current = nullptr;
  jmp_buf scheduler;
  int live = 0, at_block_barrier = 0;
  void (*body)() = nullptr;  // runs the kernel for the current fiber
  std::vector<char*> shared;  // the dynamic shared memory arrays (see CUDA_EMULATOR_SHARED)
};

inline Launch& launch_state() {
  static Launch launch;
  return launch;
}

inline const uint3& thread_index() { return launch_state().current->index; }
inline const uint3& block_index() { return launch_state().block_index; }
inline uint3 as_uint3(dim3 d) { return uint3{d.x, d.y, d.z}; }

inline void yield() {
  Launch& l = launch_state();
  if (_setjmp(l.current->resume) == 0) _longjmp(l.scheduler, 1);
}

// Records the first error and parks the fiber for good; the scheduler then ends the launch.
[[noreturn]] inline void fail(const std::string& message) {
  Launch& l = launch_state();
  if (l.error.empty()) l.error = message;
  for (;;) yield();
}

inline int linear(const uint3& t) {
  const Launch& l = launch_state();
  return (int)(t.x + l.block.x * (t.y + l.block.y * t.z));
}

inline void release_block_barrier() {
  Launch& l = launch_state();
  l.at_block_barrier = 0;
  for (Fiber& f : l.fibers)
    if (f.state == Fiber::at_block_barrier) f.state = Fiber::runnable;
}

inline void syncthreads() {
  Launch& l = launch_state();
  // Every thread of the block must arrive: hardware from sm_70 on counts exited threads as arrived,
  // but CUDA leaves a barrier in divergent code undefined, so the emulator reports it as a deadlock.
  const int threads = (int)(l.block.x * l.block.y * l.block.z);
  if (++l.at_block_barrier == threads) return release_block_barrier();
  l.current->state = Fiber::at_block_barrier;
  yield();
}

// All 32 lanes of the warp must execute the same warp operation; returns the generation it completed.
inline unsigned warp_arrive(unsigned mask, const char* op) {
  Launch& l = launch_state();
  if (mask != 0xffffffffu) fail(std::string(op) + ": the emulator supports only full-warp masks");
  Warp& w = l.warps[linear(l.current->index) / 32];
  const unsigned generation = w.generation;
  if (w.arrived == 0) w.op = op;
  if (strcmp(w.op, op) != 0)
    fail("warp " + std::to_string(&w - l.warps.data()) + ": lanes meet at " + w.op + " and " + op);
  if (++w.arrived == 32) {
    w.arrived = 0;
    ++w.generation;
    for (int lane = 0; lane < 32; ++lane) {
      Fiber& f = l.fibers[(&w - l.warps.data()) * 32 + lane];
      if (f.state == Fiber::at_warp_barrier) f.state = Fiber::runnable;
    }
    return generation;
  }
  l.current->state = Fiber::at_warp_barrier;
  yield();
  return generation;
}

// `value` of lane source(lane), for every lane of the warp.
template <class T, class Source>
T shuffle(unsigned mask, T value, Source source, const char* op) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 8 bytes");
  Launch& l = launch_state();
  const int lane = linear(l.current->index) % 32;
  Warp& w = l.warps[linear(l.current->index) / 32];
  // A lane cannot run two generations ahead of another (the next warp operation waits for all), so
  // two slot buffers suffice.
  memcpy(&w.slots[w.generation & 1][lane], &value, sizeof(T));
  const unsigned generation = warp_arrive(mask, op);
  T out;
  memcpy(&out, &w.slots[generation & 1][source(lane) & 31], sizeof(T));
  return out;
}

inline void fiber_entry() {
  Launch& l = launch_state();
  l.body();
  l.current->state = Fiber::done;
  --l.live;
  _longjmp(l.scheduler, 1);  // back to the scheduler for good
}

inline std::string describe_stall() {
  const Launch& l = launch_state();
  int block_waiting = 0, warp_waiting = 0, done = 0;
  for (const Fiber& f : l.fibers) {
    block_waiting += f.state == Fiber::at_block_barrier;
    warp_waiting += f.state == Fiber::at_warp_barrier;
    done += f.state == Fiber::done;
  }
  return "deadlock in block (" + std::to_string(l.block_index.x) + ", " + std::to_string(l.block_index.y) + ", " +
         std::to_string(l.block_index.z) + "): " + std::to_string(block_waiting) + " threads at __syncthreads, " +
         std::to_string(warp_waiting) + " at a warp operation, " + std::to_string(done) + " exited";
}

// Runs one block to completion; false (with l.error set) if it failed.
inline bool run_block(std::mt19937& rng) {
  Launch& l = launch_state();
  const unsigned threads = l.block.x * l.block.y * l.block.z;
  l.live = (int)threads;
  l.at_block_barrier = 0;
  for (Warp& w : l.warps) w = Warp{};
  for (unsigned i = 0; i < threads; ++i) {
    Fiber& f = l.fibers[i];
    f.state = Fiber::runnable;
    f.index = uint3{i % l.block.x, (i / l.block.x) % l.block.y, i / (l.block.x * l.block.y)};
    f.started = false;
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = f.stack.get();
    f.start.uc_stack.ss_size = kStackBytes;
    f.start.uc_link = nullptr;
    makecontext(&f.start, fiber_entry, 0);
  }
  std::vector<unsigned> order(threads);
  for (unsigned i = 0; i < threads; ++i) order[i] = l.order == Order::reverse ? threads - 1 - i : i;
  while (l.live > 0) {
    if (l.order == Order::shuffled) std::shuffle(order.begin(), order.end(), rng);
    bool ran = false;
    for (unsigned i : order) {
      Fiber& f = l.fibers[i];
      if (f.state != Fiber::runnable) continue;
      ran = true;
      l.current = &f;
      if (_setjmp(l.scheduler) == 0) {
        if (f.started) _longjmp(f.resume, 1);
        f.started = true;
        setcontext(&f.start);
      }
      if (!l.error.empty()) return false;
    }
    if (!ran) {
      l.error = describe_stall();
      return false;
    }
  }
  return true;
}

}  // namespace cuda_emulator

#define threadIdx (::cuda_emulator::thread_index())
#define blockIdx (::cuda_emulator::block_index())
#define blockDim (::cuda_emulator::as_uint3(::cuda_emulator::launch_state().block))
#define gridDim (::cuda_emulator::as_uint3(::cuda_emulator::launch_state().grid))

inline void __syncthreads() { cuda_emulator::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { cuda_emulator::warp_arrive(mask, "__syncwarp"); }
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return cuda_emulator::shuffle(mask, v, [=](int lane) { return lane ^ lane_mask; }, "__shfl_xor_sync");
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane) {
  return cuda_emulator::shuffle(mask, v, [=](int) { return src_lane; }, "__shfl_sync");
}
inline unsigned __float_as_uint(float x) {
  unsigned u;
  memcpy(&u, &x, sizeof u);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

inline const char* cudaGetErrorString(cudaError_t err) {
  return err == cudaSuccess ? "no error" : cuda_emulator::launch_state().error.c_str();
}

template <class... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attribute, int value) {
  auto& l = cuda_emulator::launch_state();
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      (size_t)value > cuda_emulator::kSharedBytes) {
    l.error = "cudaFuncSetAttribute: unsupported attribute or value " + std::to_string(value);
    return cudaErrorInvalidValue;
  }
  l.max_dynamic_shared[(const void*)kernel] = (size_t)value;
  return cudaSuccess;
}

// The kernel file's dynamic shared memory (its namespace-scope `extern __shared__` array) is defined
// by the file that includes the kernels, with CUDA_EMULATOR_SHARED(name) in the same namespace.
#define CUDA_EMULATOR_SHARED(name)                                         \
  __shared__ __align__(16) char name[cuda_emulator::kSharedBytes];         \
  static const bool name##_registered = (cuda_emulator::launch_state().shared.push_back(name), true)

namespace cuda_emulator {
template <class... Params, size_t... I>
void call_kernel(void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::decay_t<Params>*>(args[I])...);
}
}  // namespace cuda_emulator

// Runs the whole grid before returning.
template <class... Params>
cudaError_t cudaLaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, void** args, size_t shared_bytes,
                             cudaStream_t) {
  using namespace cuda_emulator;
  Launch& l = launch_state();
  l.error.clear();
  const unsigned threads = block.x * block.y * block.z;
  const auto attr = l.max_dynamic_shared.find((const void*)kernel);
  const size_t allowed = attr == l.max_dynamic_shared.end() ? kDefaultDynamicShared : attr->second;
  if (threads == 0 || threads > 1024 || threads % 32 != 0 || grid.x * grid.y * grid.z == 0) {
    l.error = "cudaLaunchKernel: bad launch configuration (" + std::to_string(threads) + " threads per block)";
    return cudaErrorInvalidConfiguration;
  }
  if (shared_bytes > allowed) {
    l.error = "cudaLaunchKernel: " + std::to_string(shared_bytes) + " bytes of dynamic shared memory, the kernel " +
              "allows " + std::to_string(allowed) + " (cudaFuncSetAttribute)";
    return cudaErrorInvalidValue;
  }
  l.grid = grid;
  l.block = block;
  if (l.fibers.size() < threads) {
    l.fibers = std::vector<Fiber>(threads);
    for (Fiber& f : l.fibers) f.stack.reset(new char[kStackBytes]);
  }
  l.warps.assign(threads / 32, Warp{});
  // body is a plain function pointer (fibers start without arguments), so the launch's kernel and
  // arguments wait in statics of this instantiation.
  static void (*kernel_now)(Params...);
  static void** args_now;
  kernel_now = kernel;
  args_now = args;
  l.body = [] { call_kernel(kernel_now, args_now, std::index_sequence_for<Params...>{}); };
  std::mt19937 rng(l.seed);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        for (char* shared : l.shared) memset(shared, 0xff, kSharedBytes);  // NaN floats: unwritten reads show
        l.block_index = uint3{x, y, z};
        if (!run_block(rng)) return cudaErrorLaunchFailure;
      }
  return cudaSuccess;
}
