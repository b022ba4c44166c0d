// The CUDA kernel file itself, compiled with g++ against runtime/cuda_runtime.h, behind a C API for
// ctypes (tests/cuda_emulator/__init__.py). Every entry point returns 0 or a cudaError_t; the
// message is then in cuda_emulator_error().
#include "../../csrc/cuda/aeppt_kernel.cu"

namespace mia_fast {
namespace cuda {
CUDA_EMULATOR_SHARED(dynamic_smem);
}  // namespace cuda
}  // namespace mia_fast

using namespace mia_fast::cuda;

extern "C" {

const char* cuda_emulator_error() { return cuda_emulator::launch_state().error.c_str(); }

void cuda_emulator_schedule(int order, uint32_t seed) {
  cuda_emulator::launch_state().order = static_cast<cuda_emulator::Order>(order);
  cuda_emulator::launch_state().seed = seed;
}

// `plan` = {tile, weights_in_smem, tensor_cores}: tensor_cores in, the rest chosen by aeppt_plan.
void cuda_emulator_plan(int64_t batch, int classes, int hidden1, int hidden2, size_t smem_limit, int multiprocessors,
                        int* plan) {
  const AepptPlan chosen = aeppt_plan(batch, classes, hidden1, hidden2, plan[2] != 0, smem_limit, multiprocessors);
  plan[0] = chosen.tile;
  plan[1] = chosen.weights_in_smem;
}

// `plan` = {tile, weights_in_smem, tensor_cores}: as given when tile > 0, else tile and weights_in_smem
// chosen by aeppt_plan and written back.
int cuda_emulator_aeppt(const float* const* weights, int classes, int hidden1, int hidden2, const float* probs,
                        const float* steps, float* adv, float* score_in, float* score_out, int64_t batch, int iters,
                        int preserve_label, int stop_when_flipped, int renormalize, int* plan, size_t smem_limit,
                        int multiprocessors) {
  const FoldedWeights w{weights[0], weights[1], weights[2], weights[3], weights[4], weights[5], weights[6],
                        weights[7], classes, hidden1, hidden2};
  const AepptArgs a{probs, steps, adv, score_in, score_out, batch, iters, preserve_label != 0,
                    stop_when_flipped != 0, renormalize != 0};
  if (plan[0] <= 0) cuda_emulator_plan(batch, classes, hidden1, hidden2, smem_limit, multiprocessors, plan);
  return launch_aeppt(w, a, AepptPlan{plan[0], plan[1] != 0, plan[2] != 0}, nullptr);
}

int cuda_emulator_select(const float* originals, const float* candidates, const float* losses, const bool* valid,
                         int64_t* index, float* distances, int64_t n, int k, int d, float threshold, int squared) {
  const SelectArgs a{originals, candidates, losses, valid, index, distances, n, k, d, threshold, squared != 0};
  return launch_select(a, nullptr);
}

}  // extern "C"
