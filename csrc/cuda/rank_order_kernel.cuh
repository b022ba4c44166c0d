// Pure CUDA kernel of place_in_rank_order: raw pointers and a stream, CUDA headers only.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace mia_fast {
namespace cuda {

struct RankOrderArgs {
  const float* probs;   // [B][C]
  const float* values;  // [B][C], each row sorted largest first
  float* out;           // [B][C]
  int64_t rows;
  int classes;
};

// out[b, j] = values[b, rank of probs[b, j]] (ranks from the largest, ties in index order).
cudaError_t launch_place_in_rank_order(const RankOrderArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace mia_fast
