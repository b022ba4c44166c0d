// Kernels with the bugs the emulator is there to catch, so its own tests can show it catches them.
#include <cuda_runtime.h>

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

}  // namespace selftest

extern "C" {

// kernel: 0 neighbour without barrier, 1 neighbour with barrier, 2 divergent barrier, 3 warp sum,
// 4 warp sum with a lane missing. One block of `threads`.
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
    default: return cudaErrorInvalidValue;
  }
}

}  // extern "C"
