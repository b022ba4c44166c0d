"""The defended model as one graph: target + softmax + output defense, exported with `torch.export` and
compiled into an AOTInductor package (.pt2) that serving stacks load without mia-fast's Python code.

Every deterministic output defense exports (rounding, top-k, label-only, the rank template), and so do
the randomized ones whose randomness can be given (`OutputDefense.uniforms_per_answer`: AEPPT, HAMP's
output step, MemGuard). Their package takes a second input, uniforms [B, n] in [0, 1), one row per answer
(`OutputDefense.defend_drawn`): fresh draws per answer are the defense as published; draws from a keyed
hash of the query give a repeated query the same answer. The fused ops trace as their references' aten
ops (AEPPT's T iterations unrolled, its gradient in closed form), and MemGuard's search as one
``while_loop`` (`memguard_noise_graph`), so the package needs no mia-fast extension. A randomized
defense whose draws cannot be given is refused with one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..defenses import OutputDefense
from ..errors import InputError
from ..io import atomic_path


class DefendedModel(torch.nn.Module):
    """features (and, for a randomized defense, its uniforms [B, n]) -> the target's softmax -> the
    defense's answer (no input checks: an exported graph cannot raise on data; a server in front of it
    validates)."""

    def __init__(self, target: torch.nn.Module, defense: Optional[OutputDefense]):
        super().__init__()
        self.target, self.defense = target.eval(), defense

    def forward(self, x: torch.Tensor, uniforms: Optional[torch.Tensor] = None) -> torch.Tensor:
        probs = torch.softmax(self.target(x), 1)
        if self.defense is None:
            return probs
        if self.defense.randomized:
            return self.defense.defend_drawn(probs, uniforms)
        return self.defense.defend(probs, check_inputs=False).defended


def check_exportable(defense: Optional[OutputDefense]) -> None:
    """InputError for a randomized defense whose randomness cannot be given (checked before fitting it,
    which can take long)."""
    if defense is not None and defense.randomized and defense.uniforms_per_answer is None:
        raise InputError(f"export: {defense.name} does not export as one graph yet (it is randomized and its "
                         "draws cannot be given as an input; serve it with `mia-fast serve`)")


def export_defended(target: torch.nn.Module, defense: Optional[OutputDefense], example: torch.Tensor,
                    package_path, *, max_batch: int = 65536) -> Path:
    """Export ``DefendedModel(target, defense)`` with a dynamic batch dimension (2..``max_batch`` rows
    shaped like ``example``; a randomized defense's uniforms [rows, n] as the second input) and compile
    it into an AOTInductor package at ``package_path``, written atomically. Load it with
    ``torch._inductor.aoti_load_package(path)``."""
    path = Path(package_path)
    if path.suffix != ".pt2":
        raise InputError(f"package {path}: AOTInductor packages are .pt2 files")
    check_exportable(defense)
    model = DefendedModel(target, defense).eval()
    example = example[:2] if len(example) >= 2 else example.expand(2, *example.shape[1:])
    batch = torch.export.Dim("batch", min=2, max=max_batch)
    inputs, shapes = (example,), {"x": {0: batch}}
    if defense is not None and defense.randomized:
        inputs, shapes = (example, torch.full((2, defense.uniforms_per_answer), 0.5)), {**shapes, "uniforms": {0: batch}}
    name = "no defense" if defense is None else defense.name
    try:
        program = torch.export.export(model, inputs, dynamic_shapes=shapes)
    except Exception as err:  # torch.export raises many types; the first line says why
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise InputError(f"export: {name} does not export as one graph yet ({first.strip()[:160]})") from None
    with atomic_path(path) as tmp:  # tmp ends in .pt2 too, as AOTInductor wants
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
    return path
