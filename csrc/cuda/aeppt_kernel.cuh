// Pure CUDA kernels of mia_fast: raw pointers and a stream, CUDA headers only (nvcc -c compiles
// this without torch). The torch glue lives in *_cuda.cpp.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace mia_fast {
namespace cuda {

// Label-folded substitute MIM in the layouts the kernel reads (all float32, row-major).
struct FoldedWeights {
  const float* wp_t;   // [C][H1]   W_p transposed (forward layer 1)
  const float* wp;     // [H1][C]   W_p (backward to the input)
  const float* wa_t;   // [H1][H2]  W_a transposed (forward layer 2)
  const float* wa;     // [H2][H1]  W_a (backward to hidden 1)
  const float* bp;     // [H1]
  const float* table;  // [C][H2]   class table c[k]
  const float* w3;     // [H2]
  const float* b3;     // [1]
  int classes, hidden1, hidden2;
};

struct AepptArgs {
  const float* probs;  // [B][C]
  const float* steps;  // [T][B], eps * U(0,1)
  float* adv;          // [B][C]
  float* score_in;     // [B]
  float* score_out;    // [B]
  int64_t batch;
  int iters;
  bool preserve_label, stop_when_flipped, renormalize;
  // [B][3], zeroed: the event-driven kernel counts, per sample, the iterations whose step changed a ReLU
  // mask and those whose step took a component to a bound (the third column, exact refreshes, stays 0:
  // its forward passes are exact). Null: the dense kernel.
  int32_t* events = nullptr;
};

// How a launch is laid out: samples per block, whether the weights are copied to shared memory, and
// whether the products run on the tensor cores in 3xTF32 (sm_80 and later) or on the FMA units in fp32.
// events: the event-driven kernel (fp32 only), which needs more shared memory per sample.
struct AepptPlan {
  int tile;  // 32, 16 or 8; 0 when nothing fits
  bool weights_in_smem;
  bool tensor_cores;
  bool events = false;
};
// Shared memory one block needs (bytes).
size_t aeppt_smem_bytes(int tile, int classes, int hidden1, int hidden2, bool weights, bool tensor_cores,
                        bool events = false);
AepptPlan aeppt_plan(int64_t batch, int classes, int hidden1, int hidden2, bool tensor_cores, size_t smem_limit,
                     int multiprocessors, bool events = false);
cudaError_t launch_aeppt(const FoldedWeights& w, const AepptArgs& a, AepptPlan plan, cudaStream_t stream);

struct SelectArgs {
  const float* originals;   // [N][D]
  const float* candidates;  // [N][K][D]
  const float* losses;      // [N][K]
  const bool* valid;        // [N][K] or null
  int64_t* index;           // [N]
  float* distances;         // [N][K]
  int64_t n;
  int k, d;
  float threshold;          // compared with squared distances
  bool squared;             // report squared distances
};
// Shared memory the selection kernel needs for K candidates per original (bytes).
size_t select_smem_bytes(int64_t k);
cudaError_t launch_select(const SelectArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace mia_fast
