// Torch glue for the CUDA kernels: checks, weight layouts, launch on the current stream, no host sync.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "aeppt_kernel.cuh"

namespace mia_fast {
namespace cuda {
namespace {

// Both AEPPT ops: the dense kernel, or with `events` ([B][3] int32, zeroed) the event-driven one.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_aeppt(const at::Tensor& probs, const at::Tensor& w_pred,
                                                         const at::Tensor& b_pred, const at::Tensor& w_hidden,
                                                         const at::Tensor& class_table, const at::Tensor& w_out,
                                                         const at::Tensor& b_out, const at::Tensor& steps,
                                                         bool preserve_label, bool stop_when_flipped, bool renormalize,
                                                         bool tensor_cores, int32_t* events, const AepptShape& s) {
  const char* op = events != nullptr ? "mia_fast::aeppt_events" : "mia_fast::aeppt";
  const c10::cuda::CUDAGuard guard(probs.device());
  auto adv = at::empty_like(probs);
  auto score_in = at::empty({s.batch}, probs.options());
  auto score_out = at::empty({s.batch}, probs.options());
  if (s.batch == 0) return {adv, score_in, score_out};
  const auto& prop = *at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(!tensor_cores || prop.major >= 8, op, ": precision='3xtf32' needs TF32 tensor cores "
              "(compute capability 8.0 or later), this GPU is ", prop.major, ".", prop.minor);
  const AepptPlan plan = aeppt_plan(s.batch, int(s.classes), int(s.hidden1), int(s.hidden2), tensor_cores,
                                    prop.sharedMemPerBlockOptin, prop.multiProcessorCount, events != nullptr);
  TORCH_CHECK(plan.tile > 0, op, " (CUDA): C=", s.classes, ", H1=", s.hidden1, ", H2=", s.hidden2,
              " need more shared memory per block than this GPU has (", prop.sharedMemPerBlockOptin, " bytes)");
  // Transposed copies for coalesced reads in each phase (small: O(C * H1 + H1 * H2)).
  const auto wp_t = w_pred.t().contiguous();
  const auto wa_t = w_hidden.t().contiguous();
  FoldedWeights w{wp_t.data_ptr<float>(), w_pred.data_ptr<float>(), wa_t.data_ptr<float>(), w_hidden.data_ptr<float>(),
                  b_pred.data_ptr<float>(), class_table.data_ptr<float>(), w_out.data_ptr<float>(),
                  b_out.data_ptr<float>(), int(s.classes), int(s.hidden1), int(s.hidden2)};
  AepptArgs a{probs.data_ptr<float>(), steps.data_ptr<float>(), adv.data_ptr<float>(), score_in.data_ptr<float>(),
              score_out.data_ptr<float>(), s.batch, int(s.iters), preserve_label, stop_when_flipped, renormalize,
              events};
  const cudaError_t err = launch_aeppt(w, a, plan, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, " (CUDA): launch failed: ", cudaGetErrorString(err));
  return {adv, score_in, score_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> aeppt_cuda(const at::Tensor& probs, const at::Tensor& w_pred,
                                                          const at::Tensor& b_pred, const at::Tensor& w_hidden,
                                                          const at::Tensor& class_table, const at::Tensor& w_out,
                                                          const at::Tensor& b_out, const at::Tensor& steps,
                                                          bool preserve_label, bool stop_when_flipped,
                                                          bool renormalize, c10::string_view precision) {
  const AepptShape s = check_aeppt_args(probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps);
  const bool tensor_cores = check_aeppt_precision(precision, probs);
  return run_aeppt(probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps, preserve_label,
                   stop_when_flipped, renormalize, tensor_cores, nullptr, s);
}

// The event-driven kernel: a dense forward pass, the backward pass only for samples whose ReLU masks
// changed (see aeppt_kernel.cu); the same outputs as the dense kernel, bit for bit, and the event counts.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> aeppt_events_cuda(
    const at::Tensor& probs, const at::Tensor& w_pred, const at::Tensor& b_pred, const at::Tensor& w_hidden,
    const at::Tensor& class_table, const at::Tensor& w_out, const at::Tensor& b_out, const at::Tensor& steps,
    bool preserve_label, bool stop_when_flipped, bool renormalize) {
  const AepptShape s = check_aeppt_args(probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps);
  auto events = at::zeros({s.batch, 3}, probs.options().dtype(at::kInt));
  auto [adv, score_in, score_out] =
      run_aeppt(probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps, preserve_label, stop_when_flipped,
                renormalize, false, events.data_ptr<int32_t>(), s);
  return {adv, score_in, score_out, events};
}

std::tuple<at::Tensor, at::Tensor> select_within_distance_cuda(const at::Tensor& originals,
                                                               const at::Tensor& candidates,
                                                               const at::Tensor& losses, double eps,
                                                               const c10::optional<at::Tensor>& valid,
                                                               bool squared) {
  const SelectShape s = check_select_args(originals, candidates, losses, valid);
  const c10::cuda::CUDAGuard guard(originals.device());
  const size_t smem_limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(select_smem_bytes(s.k) <= smem_limit, "mia_fast::select_within_distance (CUDA): K=", s.k,
              " candidates per original need ", select_smem_bytes(s.k), " bytes of shared memory, this GPU has ",
              smem_limit, " per block (at most ", smem_limit / sizeof(float), " candidates; the CPU op has no limit)");
  auto index = at::empty({s.n}, originals.options().dtype(at::kLong));
  auto distances = at::empty({s.n, s.k}, originals.options());
  SelectArgs a{originals.data_ptr<float>(), candidates.data_ptr<float>(), losses.data_ptr<float>(),
               valid.has_value() ? valid->data_ptr<bool>() : nullptr, index.data_ptr<int64_t>(),
               distances.data_ptr<float>(), s.n, int(s.k), int(s.d),
               squared ? float(eps) : float(eps * eps), squared};
  const cudaError_t err = launch_select(a, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "mia_fast::select_within_distance (CUDA): launch failed: ", cudaGetErrorString(err));
  return {index, distances};
}

}  // namespace
}  // namespace cuda
}  // namespace mia_fast

TORCH_LIBRARY_IMPL(mia_fast, CUDA, m) {
  m.impl("aeppt", &mia_fast::cuda::aeppt_cuda);
  m.impl("aeppt_events", &mia_fast::cuda::aeppt_events_cuda);
  m.impl("select_within_distance", &mia_fast::cuda::select_within_distance_cuda);
}
