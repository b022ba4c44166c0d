"""The CUDA kernels of csrc/cuda run on the CPU: the kernel source compiled with g++ against a stand-in
CUDA runtime (runtime/cuda_runtime.h: blocks in turn, a block's threads as fibers), loaded with ctypes.

It tests the kernels' logic, indexing, barriers and memory accesses (bounds of every global buffer and of the
launch's shared memory, writes to inputs, alignment of vector loads) on machines without a GPU; not their
speed, and not races inside one barrier interval (that is compute-sanitizer's job on a GPU).
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Tuple

import torch

HERE = Path(__file__).resolve().parent
ORDERS = {"forward": 0, "reverse": 1, "shuffled": 2}
H100_SHARED_OPTIN = 232448  # bytes per block (sharedMemPerBlockOptin)
H100_SMS = 132

Tensor = torch.Tensor


class EmulatorError(RuntimeError):
    """A launch the emulator refused or a kernel that failed (deadlock, bad warp operation)."""


def compiler() -> Optional[str]:
    return shutil.which("g++") or shutil.which("c++")


def build(directory: Path) -> "Emulator":
    """Compile emulate.cpp (which includes the kernel file) into `directory` and load it."""
    library = directory / "cuda_emulator.so"
    sources = [str(HERE / "emulate.cpp"), str(HERE / "selftest.cpp")]
    # _FORTIFY_SOURCE's longjmp refuses to jump to another stack, which is what a fiber switch does.
    cmd = [compiler(), "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Wno-sign-compare", "-Wno-unknown-pragmas",
           "-Werror", "-U_FORTIFY_SOURCE", f"-I{HERE / 'runtime'}", *sources, "-o", str(library)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise EmulatorError(f"building the CUDA emulator failed:\n{done.stderr[-4000:]}")
    return Emulator(ctypes.CDLL(str(library)))


def _ptr(t: Optional[Tensor]):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


class Emulator:
    def __init__(self, lib: ctypes.CDLL):
        self._lib = lib
        lib.cuda_emulator_error.restype = ctypes.c_char_p

    def _check(self, status: int) -> None:
        if status != 0:
            raise EmulatorError(self._lib.cuda_emulator_error().decode())

    def schedule(self, order: str = "forward", seed: int = 0) -> None:
        """The order in which a block's runnable threads run between barriers."""
        self._lib.cuda_emulator_schedule(ctypes.c_int(ORDERS[order]), ctypes.c_uint32(seed))

    def plan(self, batch: int, classes: int, hidden1: int = 256, hidden2: int = 64, *,
             tensor_cores: bool = False, events: bool = False) -> Tuple[int, bool]:
        """`aeppt_plan` for an H100: (samples per block, weights in shared memory)."""
        plan = (ctypes.c_int * 4)(0, 0, int(tensor_cores), int(events))
        self._lib.cuda_emulator_plan(ctypes.c_int64(batch), classes, hidden1, hidden2,
                                     ctypes.c_size_t(H100_SHARED_OPTIN), H100_SMS, plan)
        return plan[0], bool(plan[1])

    def aeppt(self, probs: Tensor, w_pred: Tensor, b_pred: Tensor, w_hidden: Tensor, class_table: Tensor,
              w_out: Tensor, b_out: Tensor, steps: Tensor, preserve_label: bool = False,
              stop_when_flipped: bool = False, renormalize: bool = False, *, tensor_cores: bool = False,
              tile: int = 0, weights_in_smem: bool = True, misalign: int = 0,
              events: bool = False) -> Tuple[Tensor, ...]:
        """`launch_aeppt` on CPU tensors, with the glue of aeppt_cuda.cpp; tile 0 lets `aeppt_plan` choose
        (for an H100); inputs sit `misalign` bytes off 16-byte alignment. Returns (adv, score_in, score_out,
        (tile, weights_in_smem)), and with `events` (the event-driven kernel) its event counts [B, 3] last."""
        probs, steps = probs.contiguous(), steps.contiguous()
        batch, classes = probs.shape
        hidden1, hidden2 = w_pred.shape[0], w_hidden.shape[0]
        weights = [w_pred.t().contiguous(), w_pred, w_hidden.t().contiguous(), w_hidden, b_pred, class_table, w_out,
                   b_out]
        weights = [t.contiguous().float() for t in weights]
        adv = torch.full_like(probs, float("nan"))  # poisoned: every element must be written
        score_in, score_out = torch.full((batch,), float("nan")), torch.full((batch,), float("nan"))
        pointers = (ctypes.c_void_p * 8)(*[t.data_ptr() for t in weights])
        plan = (ctypes.c_int * 4)(tile, int(weights_in_smem), int(tensor_cores), int(events))
        counts = torch.zeros(batch, 3, dtype=torch.int32) if events else None  # zeroed, as the glue does
        self._check(self._lib.cuda_emulator_aeppt(
            pointers, classes, hidden1, hidden2, _ptr(probs), _ptr(steps), _ptr(adv),
            _ptr(score_in), _ptr(score_out), _ptr(counts), ctypes.c_int64(batch), steps.shape[0],
            int(preserve_label), int(stop_when_flipped), int(renormalize), plan,
            ctypes.c_size_t(H100_SHARED_OPTIN), H100_SMS, ctypes.c_size_t(misalign)))
        out = (adv, score_in, score_out, (plan[0], bool(plan[1])))
        return out + (counts,) if events else out

    def selftest(self, kernel: str, threads: int = 64) -> Tensor:
        """Runs one of selftest.cpp's buggy or correct kernels; returns its int output per thread."""
        out = torch.full((threads,), -1, dtype=torch.int32)
        names = ["neighbour_no_barrier", "neighbour", "divergent_barrier", "warp_sum", "warp_sum_lane_missing",
                 "copy", "write_past_end", "read_past_end", "write_to_input", "misaligned_float4",
                 "shared_write_past_end", "shared_read_past_end", "ballot"]
        self._check(self._lib.cuda_emulator_selftest(names.index(kernel), _ptr(out), threads))
        return out

    def select_within_distance(self, originals: Tensor, candidates: Tensor, losses: Tensor, eps: float,
                               valid: Optional[Tensor] = None, squared: bool = False,
                               misalign: int = 0) -> Tuple[Tensor, Tensor]:
        """`launch_select` with the glue of aeppt_cuda.cpp (threshold eps**2 unless `squared`); inputs sit
        `misalign` bytes off 16-byte alignment."""
        n, k, d = candidates.shape
        index = torch.full((n,), -7, dtype=torch.int64)
        distances = torch.full((n, k), float("nan"))
        threshold = eps if squared else eps * eps
        self._check(self._lib.cuda_emulator_select(
            _ptr(originals), _ptr(candidates), _ptr(losses), _ptr(valid), _ptr(index), _ptr(distances),
            ctypes.c_int64(n), k, d, ctypes.c_float(threshold), int(squared), ctypes.c_size_t(misalign)))
        return index, distances

    def place_in_rank_order(self, probs: Tensor, values: Tensor, misalign: int = 0) -> Tensor:
        """`launch_place_in_rank_order` (rank_order_kernel.cu); unwritten outputs stay NaN."""
        rows, classes = probs.shape
        out = torch.full((rows, classes), float("nan"))
        self._check(self._lib.cuda_emulator_place_in_rank_order(
            _ptr(probs.contiguous()), _ptr(values.contiguous()), _ptr(out), ctypes.c_int64(rows), classes,
            ctypes.c_size_t(misalign)))
        return out
