// The CUDA kernel file itself, compiled with g++ against runtime/cuda_runtime.h, behind a C API for
// ctypes (tests/cuda_emulator/__init__.py). Every entry point returns 0 or a cudaError_t; the
// message is then in cuda_emulator_error(). The kernels see copies of the host buffers in
// DeviceMemory (bounds-checked; inputs read-only and shifted `misalign` bytes off 16-byte alignment).
#include "../../csrc/cuda/aeppt_kernel.cu"
#include "../../csrc/cuda/rank_order_kernel.cu"

namespace mia_fast {
namespace cuda {
CUDA_EMULATOR_SHARED(dynamic_smem);
}  // namespace cuda
}  // namespace mia_fast

using namespace mia_fast::cuda;
using cuda_emulator::DeviceMemory;

extern "C" {

const char* cuda_emulator_error() { return cuda_emulator::launch_state().error.c_str(); }

void cuda_emulator_schedule(int order, uint32_t seed) {
  cuda_emulator::launch_state().order = static_cast<cuda_emulator::Order>(order);
  cuda_emulator::launch_state().seed = seed;
}

// `plan` = {tile, weights_in_smem, tensor_cores, events}: tensor_cores and events in, the rest chosen by
// aeppt_plan.
void cuda_emulator_plan(int64_t batch, int classes, int hidden1, int hidden2, size_t smem_limit, int multiprocessors,
                        int* plan) {
  const AepptPlan chosen =
      aeppt_plan(batch, classes, hidden1, hidden2, plan[2] != 0, smem_limit, multiprocessors, plan[3] != 0);
  plan[0] = chosen.tile;
  plan[1] = chosen.weights_in_smem;
}

// `plan` = {tile, weights_in_smem, tensor_cores, events}: as given when tile > 0, else tile and
// weights_in_smem chosen by aeppt_plan and written back. `weights` as FoldedWeights lists them; `events`
// [B][3] (zeroed) runs the event-driven kernel, null the dense one.
int cuda_emulator_aeppt(const float* const* weights, int classes, int hidden1, int hidden2, const float* probs,
                        const float* steps, float* adv, float* score_in, float* score_out, int32_t* events,
                        int64_t batch, int iters, int preserve_label, int stop_when_flipped, int renormalize, int* plan,
                        size_t smem_limit, int multiprocessors, size_t misalign) {
  const size_t c = classes, h1 = hidden1, h2 = hidden2, b = batch;
  DeviceMemory m(misalign);
  const FoldedWeights w{m.input("wp_t", weights[0], c * h1), m.input("wp", weights[1], h1 * c),
                        m.input("wa_t", weights[2], h1 * h2), m.input("wa", weights[3], h2 * h1),
                        m.input("bp", weights[4], h1), m.input("table", weights[5], c * h2),
                        m.input("w3", weights[6], h2), m.input("b3", weights[7], 1), classes, hidden1, hidden2};
  const AepptArgs a{m.input("probs", probs, b * c), m.input("steps", steps, (size_t)iters * b),
                    m.output("adv", adv, b * c), m.output("score_in", score_in, b),
                    m.output("score_out", score_out, b), batch, iters, preserve_label != 0,
                    stop_when_flipped != 0, renormalize != 0,
                    events != nullptr ? m.output("events", events, b * 3) : nullptr};
  plan[3] = events != nullptr;
  if (plan[0] <= 0) cuda_emulator_plan(batch, classes, hidden1, hidden2, smem_limit, multiprocessors, plan);
  return m.finish(launch_aeppt(w, a, AepptPlan{plan[0], plan[1] != 0, plan[2] != 0, plan[3] != 0}, nullptr));
}

int cuda_emulator_select(const float* originals, const float* candidates, const float* losses, const bool* valid,
                         int64_t* index, float* distances, int64_t n, int k, int d, float threshold, int squared,
                         size_t misalign) {
  const size_t nk = (size_t)n * k;
  DeviceMemory m(misalign);
  const SelectArgs a{m.input("originals", originals, (size_t)n * d), m.input("candidates", candidates, nk * d),
                     m.input("losses", losses, nk), m.input("valid", valid, nk), m.output("index", index, (size_t)n),
                     m.output("distances", distances, nk), n, k, d, threshold, squared != 0};
  return m.finish(launch_select(a, nullptr));
}

int cuda_emulator_place_in_rank_order(const float* probs, const float* values, float* out, int64_t rows, int classes,
                                      size_t misalign) {
  const size_t n = (size_t)rows * classes;
  DeviceMemory m(misalign);
  const RankOrderArgs a{m.input("probs", probs, n), m.input("values", values, n), m.output("out", out, n), rows,
                        classes};
  return m.finish(launch_place_in_rank_order(a, nullptr));
}

}  // extern "C"
