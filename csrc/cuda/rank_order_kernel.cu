// place_in_rank_order on the GPU: one thread per element, which counts the larger elements of its row
// (ties in index order) and copies values[rank]. A row is C floats read C times: from L1 for the
// class counts it is used for (the glue sorts above 128). Rank in [0, C) for any input, NaN included.
#include "launch.cuh"
#include "rank_order_kernel.cuh"

namespace mia_fast {
namespace cuda {
namespace {

constexpr int kRankThreads = 256;
constexpr int64_t kRankMaxBlocks = 65535LL * 32;

__global__ void __launch_bounds__(kRankThreads) rank_order_kernel(RankOrderArgs a) {
  const int64_t total = a.rows * a.classes;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = idx / a.classes;
    const int j = (int)(idx - row * a.classes);
    const float* p = a.probs + row * a.classes;
    const float pj = __ldg(p + j);
    int rank = 0;
    for (int k = 0; k < j; ++k) rank += __ldg(p + k) >= pj;
    for (int k = j + 1; k < a.classes; ++k) rank += __ldg(p + k) > pj;
    a.out[idx] = __ldg(a.values + row * a.classes + rank);
  }
}

}  // namespace

cudaError_t launch_place_in_rank_order(const RankOrderArgs& a, cudaStream_t stream) {
  const int64_t total = a.rows * a.classes;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = (total + kRankThreads - 1) / kRankThreads;
  const unsigned grid = (unsigned)(blocks < kRankMaxBlocks ? blocks : kRankMaxBlocks);
  return launch(rank_order_kernel, dim3(grid), dim3(kRankThreads), 0, stream, a);
}

}  // namespace cuda
}  // namespace mia_fast
