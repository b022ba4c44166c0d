"""Fused ops of mia-fast and their dispatch.

The C++/CUDA extension ``mia_fast._C`` registers ``torch.ops.mia_fast.*``. When it is missing (a
source checkout that was never built) every op runs through its plain-PyTorch reference in
`mia_fast.ops.reference`, and a warning says so once.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch

from . import reference

Tensor = torch.Tensor

try:
    from mia_fast import _C  # noqa: F401  (loading it registers torch.ops.mia_fast)

    HAS_EXTENSION = True
except ImportError as _err:  # pragma: no cover - exercised only without a build
    HAS_EXTENSION = False
    _IMPORT_ERROR = _err

_warned = False


def _use_extension(device: torch.device) -> bool:
    global _warned
    if HAS_EXTENSION and (device.type == "cpu" or has_cuda_kernels()):
        return True
    if not _warned:
        why = "the extension mia_fast._C is not built" if not HAS_EXTENSION else f"it has no {device.type} kernels"
        warnings.warn(f"mia_fast: {why}; falling back to the plain-PyTorch reference (slow). "
                      "Build it with: pip install --no-build-isolation -e .", RuntimeWarning, stacklevel=3)
        _warned = True
    return False


def has_cuda_kernels() -> bool:
    """True if the extension was built with its CUDA kernels."""
    if not HAS_EXTENSION:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("mia_fast::aeppt", "CUDA")


def has_cuda_event_kernels() -> bool:
    """True if the extension was built with the CUDA kernel of the event-driven op."""
    return HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("mia_fast::aeppt_events", "CUDA")


#: Precisions of `aeppt`: "fp32" (default; every device) and "3xtf32" (CUDA, compute capability 8.0+).
PRECISIONS = ("fp32", "3xtf32")


def check_precision(precision: str) -> None:
    """ValueError unless ``precision`` is one of `PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


#: Algorithms of `aeppt`: "events" (pay only for what changes between iterations: on CPU incremental
#: forward passes with exact low-rank corrections on every event, same results up to float32 rounding; on
#: CUDA a dense forward pass and the backward pass only for samples whose ReLU masks changed, bit for bit
#: the dense kernel) and "dense" (a full forward and backward pass every iteration).
ALGORITHMS = ("events", "dense")


def default_algorithm(device: torch.device | str) -> str:
    """"events" on CPU, where it is measured faster (bench/README.md); "dense" on CUDA, where the
    event-driven kernel has not been timed on a GPU yet (it is tested only on the CPU emulator)."""
    return "dense" if torch.device(device).type == "cuda" else "events"


def check_algorithm(algorithm: str, precision: str = "fp32") -> None:
    """ValueError unless ``algorithm`` is one of `ALGORITHMS` and runs at ``precision``."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "events" and precision != "fp32":
        raise ValueError(f"algorithm='events' runs in fp32 only, got precision={precision!r}")


def aeppt(probs: Tensor, w_pred: Tensor, b_pred: Tensor, w_hidden: Tensor, class_table: Tensor, w_out: Tensor,
          b_out: Tensor, steps: Tensor, preserve_label: bool = False, stop_when_flipped: bool = False,
          renormalize: bool = False, *, precision: str = "fp32",
          algorithm: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """The whole AEPPT loop in one op; see `reference.aeppt_reference` for the definition.

    ``algorithm`` (`ALGORITHMS`; default `default_algorithm` of the device) picks the event-driven op
    (`aeppt_with_events`) or the dense one. ``precision="3xtf32"`` (CUDA only, dense only) runs the
    substitute MIM's products on the tensor cores, each operand split into two TF32 parts (three MMAs
    per product): about fp32 accuracy, sums in the hardware's order, so outputs differ from fp32 in the
    last bits. Experimental: see bench/README.md for whether it has been measured on a GPU. Under
    `torch.export` it is `reference.aeppt_closed_form` (aten ops, the T iterations unrolled).
    """
    check_precision(precision)
    args = (probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps,
            preserve_label, stop_when_flipped, renormalize)
    if torch.compiler.is_exporting():  # aten ops only, so an exported graph loads without mia-fast
        return reference.aeppt_closed_form(*args)
    if precision != "fp32" and probs.device.type != "cuda":
        raise ValueError(f"precision={precision!r} runs on CUDA tensor cores, but probs is on {probs.device}")
    if algorithm is None:
        algorithm = default_algorithm(probs.device) if precision == "fp32" else "dense"
    check_algorithm(algorithm, precision)
    if algorithm == "events":
        return aeppt_with_events(*args)[:3]
    if _use_extension(probs.device):
        return torch.ops.mia_fast.aeppt.default(*args, precision)
    if precision != "fp32":
        raise ValueError(f"precision={precision!r} needs the CUDA kernels of mia_fast._C")
    return reference.aeppt_reference(*args)


def aeppt_with_events(probs: Tensor, w_pred: Tensor, b_pred: Tensor, w_hidden: Tensor, class_table: Tensor,
                      w_out: Tensor, b_out: Tensor, steps: Tensor, preserve_label: bool = False,
                      stop_when_flipped: bool = False,
                      renormalize: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The event-driven AEPPT op: `aeppt`'s three outputs and ``events`` [B, 3] int32 per sample:
    iterations whose step changed a ReLU mask of the substitute, iterations whose step brought a moving
    component to a bound of [0, 1] (both as `reference.aeppt_event_counts` defines them), and exact
    refreshes of the incremental state (0 in the reference and on CUDA, whose forward passes are exact)."""
    args = (probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps,
            preserve_label, stop_when_flipped, renormalize)
    if probs.device.type == "cuda" and not has_cuda_event_kernels():
        raise ValueError("the event-driven AEPPT op has no CUDA kernel; use algorithm='dense' on CUDA")
    if _use_extension(probs.device):
        return torch.ops.mia_fast.aeppt_events.default(*args)
    adv, before, after = reference.aeppt_reference(*args)
    counts = reference.aeppt_event_counts(*args)
    return adv, before, after, torch.cat([counts, torch.zeros_like(counts[:, :1])], 1)


def select_within_distance(originals: Tensor, candidates: Tensor, losses: Tensor, eps: float,
                           valid: Optional[Tensor] = None, squared: bool = False) -> Tuple[Tensor, Tensor]:
    """Lowest-loss candidate within distance eps; see `reference.select_within_distance_reference`."""
    if _use_extension(originals.device):
        return torch.ops.mia_fast.select_within_distance.default(originals, candidates, losses, float(eps), valid,
                                                                 squared)
    return reference.select_within_distance_reference(originals, candidates, losses, eps, valid, squared)


def place_in_rank_order(probs: Tensor, values: Tensor) -> Tensor:
    """Each row of ``values`` [B, C] (sorted largest first) in the rank order of the same row of
    ``probs``; see `reference.place_in_rank_order_reference`. float32, contiguous, CPU or CUDA. Under
    `torch.export` it is the reference's aten ops, so an exported graph loads without mia-fast."""
    if _use_extension(probs.device) and not torch.compiler.is_exporting():
        return torch.ops.mia_fast.place_in_rank_order.default(probs, values)
    return reference.place_in_rank_order_reference(probs, values)


if HAS_EXTENSION:

    @torch.library.register_fake("mia_fast::aeppt")
    def _aeppt_fake(probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps, preserve_label,
                    stop_when_flipped, renormalize, precision="fp32"):
        torch._check(probs.dim() == 2, lambda: f"mia_fast::aeppt: probs must be 2-D, got {tuple(probs.shape)}")
        torch._check(steps.dim() == 2 and steps.shape[1] == probs.shape[0],
                     lambda: f"mia_fast::aeppt: steps must be [T, B={probs.shape[0]}], got {tuple(steps.shape)}")
        batch = probs.shape[0]
        return torch.empty_like(probs), probs.new_empty(batch), probs.new_empty(batch)

    @torch.library.register_fake("mia_fast::aeppt_events")
    def _aeppt_events_fake(probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps, preserve_label,
                           stop_when_flipped, renormalize):
        adv, before, after = _aeppt_fake(probs, w_pred, b_pred, w_hidden, class_table, w_out, b_out, steps,
                                         preserve_label, stop_when_flipped, renormalize)
        return adv, before, after, probs.new_empty(probs.shape[0], 3, dtype=torch.int32)

    @torch.library.register_fake("mia_fast::select_within_distance")
    def _select_fake(originals, candidates, losses, eps, valid, squared):
        torch._check(candidates.dim() == 3, lambda: "mia_fast::select_within_distance: candidates must be 3-D")
        n, k = candidates.shape[0], candidates.shape[1]
        return originals.new_empty(n, dtype=torch.long), originals.new_empty(n, k)

    @torch.library.register_fake("mia_fast::place_in_rank_order")
    def _rank_order_fake(probs, values):
        torch._check(probs.dim() == 2 and values.shape == probs.shape,
                     lambda: f"mia_fast::place_in_rank_order: probs and values must be the same [B, C], got "
                             f"{tuple(probs.shape)} and {tuple(values.shape)}")
        return torch.empty_like(values)


__all__ = ["aeppt", "aeppt_with_events", "select_within_distance", "place_in_rank_order", "has_cuda_kernels", "has_cuda_event_kernels",
           "HAS_EXTENSION", "PRECISIONS", "check_precision", "ALGORITHMS", "check_algorithm", "default_algorithm",
           "reference"]
