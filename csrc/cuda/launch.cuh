// kernel<<<grid, block, smem, stream>>>(args...) through the runtime API, which reports launch errors
// itself (and which the CPU emulator in tests/cuda_emulator implements). Shared by the kernel files.
#pragma once
#include <cuda_runtime.h>

namespace mia_fast {
namespace cuda {

template <class T>
struct Same {
  using type = T;
};

template <class... Params>
inline cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          typename Same<Params>::type... args) {
  void* params[] = {&args...};
  return cudaLaunchKernel(kernel, grid, block, params, smem, stream);
}

}  // namespace cuda
}  // namespace mia_fast
