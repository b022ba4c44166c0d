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
// Memory is checked like compute-sanitizer's memcheck, with page protection: global buffers made by
// DeviceMemory end at an inaccessible page and inputs are read-only, shared memory beyond the bytes
// the launch asked for is inaccessible, fiber stacks have guard pages, and __ldg/__ldcs check
// alignment. A bad access ends the launch with an error naming the buffer and the byte.
// Not modelled: memory races inside one segment, timing, occupancy, partial-warp masks.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

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

namespace cuda_emulator {

constexpr size_t kSharedBytes = 228 * 1024;  // the H100's shared memory per SM
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kStackBytes = 256 * 1024;

enum class Order { forward = 0, reverse = 1, shuffled = 2 };

inline size_t page_bytes() {
  static const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return page;
}
inline size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Anonymous read-write mapping, unmapped with the object.
class Mapping {
 public:
  explicit Mapping(size_t bytes) : bytes_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cuda emulator: mmap of " + std::to_string(bytes) + " bytes failed");
    base_ = static_cast<char*>(p);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { munmap(base_, bytes_); }
  char* base() const { return base_; }
  size_t bytes() const { return bytes_; }
  void protect(size_t offset, size_t bytes, int prot) const { mprotect(base_ + offset, bytes, prot); }

 private:
  char* base_;
  size_t bytes_;
};

constexpr unsigned char kPoison = 0xff;  // fills unwritten memory: NaN as a float

// A fiber's stack with an inaccessible page below it, so an overflow faults instead of corrupting.
struct FiberStack {
  Mapping mapping{page_bytes() + kStackBytes};
  FiberStack() { mapping.protect(0, page_bytes(), PROT_NONE); }
  char* bottom() const { return mapping.base() + page_bytes(); }
};

struct Fiber {
  ucontext_t start;  // entry into the kernel, used once
  jmp_buf resume;    // where it yielded
  bool started = false;
  std::unique_ptr<FiberStack> stack;
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
  size_t shared_bytes = 0;    // the launch's dynamic shared memory
  // Global buffers (DeviceMemory) by name, for naming a faulting address.
  struct Buffer {
    std::string name;
    const char *begin, *end;             // the data
    const char *mapped_begin, *mapped_end;  // with the slack and the guard pages around it
  };
  std::vector<Buffer> buffers;
  // A memory fault inside the launch: where, and whether it was a write (x86-64 only; else unknown).
  sigjmp_buf fault_return;
  void* fault_address = nullptr;
  int fault_write = -1;
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

// Bit k set when lane k's predicate is true, for every lane of the warp.
inline unsigned ballot(unsigned mask, int predicate) {
  Launch& l = launch_state();
  const int lane = linear(l.current->index) % 32;
  Warp& w = l.warps[linear(l.current->index) / 32];
  const uint64_t mine = predicate != 0;
  memcpy(&w.slots[w.generation & 1][lane], &mine, sizeof mine);
  const unsigned generation = warp_arrive(mask, "__ballot_sync");
  unsigned bits = 0;
  for (int k = 0; k < 32; ++k) {
    uint64_t v;
    memcpy(&v, &w.slots[generation & 1][k], sizeof v);
    bits |= unsigned(v != 0) << k;
  }
  return bits;
}

template <class T>
inline T checked_load(const T* p, const char* op) {
  // The hardware needs natural alignment for a load of sizeof(T) bytes (a float4 needs 16).
  if (reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0)
    fail(std::string(op) + ": misaligned address " + std::to_string(reinterpret_cast<uintptr_t>(p)) + " for a " +
         std::to_string(sizeof(T)) + "-byte load");
  return *p;
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
    f.start.uc_stack.ss_sp = f.stack->bottom();
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

inline std::string out_of_bounds(const std::string& access, const std::string& buffer, long byte, size_t bytes) {
  return "memory fault: out-of-bounds " + access + " of '" + buffer + "' at byte " + std::to_string(byte) + " (it has " +
         std::to_string(bytes) + " bytes)";
}
inline std::string shared_out_of_bounds(const std::string& access, size_t byte) {
  return "memory fault: out-of-bounds shared-memory " + access + " at byte " + std::to_string(byte) +
         " (the launch asked for " + std::to_string(launch_state().shared_bytes) + " bytes of dynamic shared memory)";
}

// Names the byte at a faulting address: which buffer, shared memory or fiber stack it belongs to.
inline std::string describe_fault() {
  const Launch& l = launch_state();
  const char* at = static_cast<const char*>(l.fault_address);
  const std::string access = l.fault_write == 1 ? "write" : l.fault_write == 0 ? "read" : "access";
  for (const Launch::Buffer& b : l.buffers) {
    if (at < b.mapped_begin || at >= b.mapped_end) continue;
    const long offset = (long)(at - b.begin);
    if (at >= b.begin && at < b.end)
      return "memory fault: " + access + " of byte " + std::to_string(offset) + " of read-only input '" + b.name + "'";
    return out_of_bounds(access, b.name, offset, b.end - b.begin);
  }
  for (char* shared : l.shared)
    if (at >= shared && at < shared + kSharedBytes) return shared_out_of_bounds(access, at - shared);
  for (const Fiber& f : l.fibers)
    if (at >= f.stack->mapping.base() && at < f.stack->bottom())
      return "memory fault: stack overflow of an emulated thread (" + std::to_string(kStackBytes) + " bytes)";
  if (reinterpret_cast<uintptr_t>(at) < page_bytes())
    return "memory fault: " + access + " through a null pointer (address " +
           std::to_string(reinterpret_cast<uintptr_t>(at)) + "; empty tensors have no data)";
  return "memory fault: " + access + " of address " + std::to_string(reinterpret_cast<uintptr_t>(at)) +
         " outside every buffer the emulator knows";
}

inline void on_fault(int, siginfo_t* info, void* context) {
  Launch& l = launch_state();
  l.fault_address = info->si_addr;
#if defined(__x86_64__)
  l.fault_write = (static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
  (void)context;
  l.fault_write = -1;
#endif
  siglongjmp(l.fault_return, 1);
}

// While a launch runs: SIGSEGV/SIGBUS jump back to it (on a stack of their own, so a fiber's stack
// overflow is caught too), and shared memory past the launch's bytes is inaccessible.
class FaultGuard {
 public:
  explicit FaultGuard(size_t shared_bytes) : altstack_(SIGSTKSZ * 4) {
    Launch& l = launch_state();
    l.shared_bytes = shared_bytes;
    stack_t stack{};
    stack.ss_sp = altstack_.base();
    stack.ss_size = altstack_.bytes();
    sigaltstack(&stack, &old_stack_);
    struct sigaction action {};
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &old_segv_);
    sigaction(SIGBUS, &action, &old_bus_);
    used_ = round_up(shared_bytes, page_bytes());
    for (char* shared : l.shared)
      if (used_ < kSharedBytes) mprotect(shared + used_, kSharedBytes - used_, PROT_NONE);
  }
  ~FaultGuard() {
    for (char* shared : launch_state().shared)
      if (used_ < kSharedBytes) mprotect(shared + used_, kSharedBytes - used_, PROT_READ | PROT_WRITE);
    sigaction(SIGSEGV, &old_segv_, nullptr);
    sigaction(SIGBUS, &old_bus_, nullptr);
    sigaltstack(&old_stack_, nullptr);
  }
  // Bytes of each shared array that stay accessible (the launch's, rounded up to a page).
  size_t accessible() const { return used_; }

 private:
  Mapping altstack_;
  stack_t old_stack_{};
  struct sigaction old_segv_ {}, old_bus_ {};
  size_t used_ = 0;
};

// Global memory for one launch, like cudaMalloc'd buffers: each buffer is a copy of host data whose
// end abuts an inaccessible page (up to 16-byte alignment; the few bytes of slack are poison that
// must stay untouched), and inputs are read-only. `misalign` shifts inputs off 16-byte alignment,
// as a tensor view with a storage offset would be.
class DeviceMemory {
 public:
  explicit DeviceMemory(size_t misalign = 0) : misalign_(misalign) {}
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory() { launch_state().buffers.clear(); }

  template <class T>
  const T* input(const char* name, const T* host, size_t count) {
    if (host == nullptr) return nullptr;  // an absent optional input (or an empty tensor's data)
    Slot& s = place(name, host, count * sizeof(T), misalign_);
    s.mapping->protect(page_bytes(), s.mapping->bytes() - 2 * page_bytes(), PROT_READ);
    return reinterpret_cast<const T*>(s.begin);
  }
  // Copied in (callers poison it) and back by finish().
  template <class T>
  T* output(const char* name, T* host, size_t count) {
    Slot& s = place(name, host, count * sizeof(T), 0);
    s.host = host;
    return reinterpret_cast<T*>(s.begin);
  }
  // After the launch: outputs back to the host, and the slack around every buffer checked.
  cudaError_t finish(cudaError_t status) {
    if (status != cudaSuccess) return status;
    for (Slot& s : slots_) {
      const char* first = s.mapping->base() + page_bytes();
      const char* last = s.mapping->base() + s.mapping->bytes() - page_bytes();
      for (const char* p = first; p < last; ++p) {
        if (p == s.begin) p = s.end;
        if (p < last && (unsigned char)*p != kPoison) {
          launch_state().error = out_of_bounds("write", s.name, p - s.begin, s.end - s.begin);
          return cudaErrorLaunchFailure;
        }
      }
      if (s.host != nullptr) memcpy(s.host, s.begin, s.end - s.begin);
    }
    return cudaSuccess;
  }

 private:
  struct Slot {
    std::string name;
    std::unique_ptr<Mapping> mapping;
    char *begin, *end;
    void* host = nullptr;
  };
  Slot& place(const char* name, const void* host, size_t bytes, size_t misalign) {
    const size_t page = page_bytes();
    auto mapping = std::make_unique<Mapping>(page + round_up(bytes + 16 + misalign, page) + page);
    char* guard = mapping->base() + mapping->bytes() - page;
    char* begin = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(guard) - bytes - misalign) / 16 * 16 + misalign);
    memset(mapping->base() + page, kPoison, guard - mapping->base() - page);
    memcpy(begin, host, bytes);
    mapping->protect(0, page, PROT_NONE);
    mapping->protect(mapping->bytes() - page, page, PROT_NONE);
    launch_state().buffers.push_back({name, begin, begin + bytes, mapping->base(), mapping->base() + mapping->bytes()});
    slots_.push_back(Slot{name, std::move(mapping), begin, begin + bytes});
    return slots_.back();
  }
  size_t misalign_;
  std::vector<Slot> slots_;
};

}  // namespace cuda_emulator

template <class T>
inline T __ldg(const T* p) { return cuda_emulator::checked_load(p, "__ldg"); }
template <class T>
inline T __ldcs(const T* p) { return cuda_emulator::checked_load(p, "__ldcs"); }

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
inline unsigned __ballot_sync(unsigned mask, int predicate) { return cuda_emulator::ballot(mask, predicate); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
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
// Page-aligned, so the part past a launch's bytes can be made inaccessible.
#define CUDA_EMULATOR_SHARED(name)                                         \
  __shared__ __align__(4096) char name[cuda_emulator::kSharedBytes];       \
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
    for (Fiber& f : l.fibers) f.stack = std::make_unique<FiberStack>();
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
  const FaultGuard guard(shared_bytes);
  if (sigsetjmp(l.fault_return, 1) != 0) {
    l.error = describe_fault();
    return cudaErrorLaunchFailure;
  }
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        // Poison (NaN floats): reads of unwritten shared memory show. The accessible slack past the
        // launch's bytes must still be poison after the block.
        for (char* shared : l.shared) memset(shared, kPoison, guard.accessible());
        l.block_index = uint3{x, y, z};
        if (!run_block(rng)) return cudaErrorLaunchFailure;
        for (char* shared : l.shared)
          for (size_t i = shared_bytes; i < guard.accessible(); ++i)
            if ((unsigned char)shared[i] != kPoison) {
              l.error = shared_out_of_bounds("write", i);
              return cudaErrorLaunchFailure;
            }
      }
  return cudaSuccess;
}
