"""Checks on confidence vectors before a defense touches them: one clear message per problem."""
from __future__ import annotations

import torch

from .errors import InputError

Tensor = torch.Tensor


def check_probabilities(probs: Tensor, *, num_classes: int | None = None, allow_unnormalized: bool = False,
                        name: str = "predictions", row_offset: int = 0) -> None:
    """Raise `InputError` unless ``probs`` is a non-empty float [N, C] tensor of probability vectors.

    Rows must be finite, within [0, 1] and (unless ``allow_unnormalized``) sum to 1 within 1e-3.
    """
    if not isinstance(probs, torch.Tensor):
        raise InputError(f"{name}: expected a tensor, got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise InputError(f"{name}: expected a float tensor of probabilities, got dtype {probs.dtype}")
    if probs.dim() != 2:
        raise InputError(f"{name}: expected a 2-D [N, C] array, got {probs.dim()}-D with shape {tuple(probs.shape)}")
    if probs.shape[0] == 0 or probs.shape[1] == 0:
        raise InputError(f"{name}: empty input, shape {tuple(probs.shape)}")
    if num_classes is not None and probs.shape[1] != num_classes:
        raise InputError(f"{name}: has {probs.shape[1]} classes but the membership model expects {num_classes}")
    finite = torch.isfinite(probs).all(1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0]) + row_offset
        raise InputError(f"{name}: row {row} contains NaN or Inf")
    outside = ((probs < 0) | (probs > 1)).any(1)
    if bool(outside.any()):
        row = int(outside.nonzero()[0, 0]) + row_offset
        raise InputError(f"{name}: row {row} has values outside [0, 1] (min {float(probs[row - row_offset].min()):.4g}, "
                         f"max {float(probs[row - row_offset].max()):.4g})")
    if not allow_unnormalized:
        sums = probs.double().sum(1)
        bad = (sums - 1).abs() > 1e-3
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise InputError(f"{name}: row {row + row_offset} sums to {float(sums[row]):.6g}, not 1 "
                             "(pass allow_unnormalized / --allow-unnormalized for scores that are not probabilities)")
