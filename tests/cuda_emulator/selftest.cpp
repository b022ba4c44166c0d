// Kernels with the bugs the emulator is there to catch, so its own tests can show it catches them.
#include <cuda_runtime.h>

#include <vector>

namespace selftest {

extern __shared__ __align__(16) char shared[];
CUDA_EMULATOR_SHARED(shared);

// Each thread writes its index to shared memory and reads its right neighbour's: correct with the
// barrier, order-dependent without it.
__global__ void neighbour(int* out, bool barrier) {
  int* s = reinterpret_cast<int*>(shared);
  s[threadIdx.x] = (int)threadIdx.x;
  if (barrier) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// A barrier only the first warp reaches.
__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1;
}

// Warp sum by shuffles; with `diverge`, lane 0 skips it.
__global__ void warp_sum(int* out, bool diverge) {
  int v = (int)threadIdx.x;
  if (!(diverge && threadIdx.x % 32 == 0))
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  out[threadIdx.x] = v;
}

// Votes of the lanes divisible by 3: how many voted, plus 100 where this lane's bit is set.
__global__ void ballot(int* out) {
  const unsigned lane = threadIdx.x % 32, bits = __ballot_sync(0xffffffffu, lane % 3 == 0);
  out[threadIdx.x] = __popc(bits) + 100 * (int)((bits >> lane) & 1u);
}

// Memory bugs, one per `bug`: 0 none (out[i] = in[i]), 1 the last thread also writes one past the end of
// `out`, 2 reads one past the end of `in`, 3 writes to the input, 4 a float4 load off 16-byte alignment,
// 5 writes one int past the launch's shared memory, 6 reads a page past it.
__global__ void memory(int* out, const int* in, int bug) {
  int* s = reinterpret_cast<int*>(shared);
  const unsigned i = threadIdx.x, n = blockDim.x;
  int v = __ldg(in + i);
  if (bug == 1 && i == n - 1) out[n] = v;
  if (bug == 2 && i == n - 1) v = in[n];
  if (bug == 3 && i == 0) const_cast<int*>(in)[0] = 7;
  if (bug == 4 && i == 0) v = (int)__ldg(reinterpret_cast<const float4*>(in + 1)).x;
  if (bug == 5 && i == n - 1) s[n] = v;
  if (bug == 6 && i == n - 1) v = s[n + 1024];
  out[i] = v;
}

}  // namespace selftest

extern "C" {

// kernel: 0 neighbour without barrier, 1 neighbour with barrier, 2 divergent barrier, 3 warp sum,
// 4 warp sum with a lane missing, 5 + bug: `memory` with that bug (on `out` and an input of
// 0, 1, ... in device memory), 12 ballot. One block of `threads`.
int cuda_emulator_selftest(int kernel, int* out, int threads) {
  using namespace selftest;
  const dim3 grid(1), block((unsigned)threads);
  bool flag = kernel == 1 || kernel == 4;
  void* args[] = {&out, &flag};
  switch (kernel) {
    case 0:
    case 1: return cudaLaunchKernel(neighbour, grid, block, args, sizeof(int) * threads, nullptr);
    case 2: return cudaLaunchKernel(divergent_barrier, grid, block, args, 0, nullptr);
    case 3:
    case 4: return cudaLaunchKernel(warp_sum, grid, block, args, 0, nullptr);
    case 12: return cudaLaunchKernel(ballot, grid, block, args, 0, nullptr);
    default: break;
  }
  if (kernel > 11) return cudaErrorInvalidValue;
  std::vector<int> host_in(threads);
  for (int i = 0; i < threads; ++i) host_in[i] = i;
  cuda_emulator::DeviceMemory m;
  const int* in = m.input("in", host_in.data(), host_in.size());
  int* device_out = m.output("out", out, (size_t)threads);
  int bug = kernel - 5;
  void* memory_args[] = {&device_out, &in, &bug};
  return m.finish(cudaLaunchKernel(memory, grid, block, memory_args, sizeof(int) * threads, nullptr));
}

}  // extern "C"
