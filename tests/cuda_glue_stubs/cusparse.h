// Stand-in for a CUDA library header that this machine (CUDA runtime headers only) lacks: just enough
// for ATen/cuda/CUDAContext.h to parse, so .ci/run can syntax-check csrc/cuda/*_cuda.cpp. Never linked.
#pragma once
typedef struct cusparseContext* cusparseHandle_t;
typedef int cusparseStatus_t;
