// Operator schemas of the mia_fast extension. Kernels live in csrc/cpu and csrc/cuda.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing mia_fast._C loads this shared library, which runs the TORCH_LIBRARY registrations.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mia_fast, m) {
  // AEPPT (Xue et al., Algorithm 1) on the label-folded substitute MIM; see mia_fast/ops/reference.py.
  // precision: "fp32", or "3xtf32" (CUDA only: products on the tensor cores, about fp32 accuracy).
  m.def(
      "aeppt(Tensor probs, Tensor w_pred, Tensor b_pred, Tensor w_hidden, Tensor class_table, "
      "Tensor w_out, Tensor b_out, Tensor steps, bool preserve_label, bool stop_when_flipped, "
      "bool renormalize, str precision=\"fp32\") -> (Tensor, Tensor, Tensor)");
  // The same loop, event-driven (fp32). CPU: incremental forward passes with exact low-rank corrections;
  // CUDA: a dense forward pass, the backward pass only for samples whose ReLU masks changed.
  // events [B, 3] int32: iterations with a ReLU-mask change, iterations in which a component reached
  // a bound of [0, 1], exact refreshes.
  m.def(
      "aeppt_events(Tensor probs, Tensor w_pred, Tensor b_pred, Tensor w_hidden, Tensor class_table, "
      "Tensor w_out, Tensor b_out, Tensor steps, bool preserve_label, bool stop_when_flipped, "
      "bool renormalize) -> (Tensor, Tensor, Tensor, Tensor)");
  // Distance-constrained selection (Bai et al., Algorithm 1).
  m.def(
      "select_within_distance(Tensor originals, Tensor candidates, Tensor losses, float eps, "
      "Tensor? valid, bool squared) -> (Tensor, Tensor)");
  // Each row of values (sorted largest first) placed in the rank order of the same row of probs
  // (ties in index order): the rank-preserving output defenses (HAMP's output step, the rank template).
  m.def("place_in_rank_order(Tensor probs, Tensor values) -> Tensor");
}
