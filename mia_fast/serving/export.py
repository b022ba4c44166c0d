"""The defended model as one graph: target + softmax + output defense, exported with `torch.export` and
compiled into an AOTInductor package (.pt2) that serving stacks load without mia-fast's Python code.

Every deterministic output defense exports (rounding, top-k, label-only, the rank template: its
`place_in_rank_order` op is traced as the reference's aten ops, so the package needs no mia-fast
extension). A randomized defense (AEPPT, MemGuard, HAMP's output step) is refused with one line: its
draws come from mia-fast's named streams or its keyed query hash, which a compiled graph does not
reproduce; serve it with ``mia-fast serve``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..defenses import OutputDefense
from ..errors import InputError
from ..io import atomic_path


class DefendedModel(torch.nn.Module):
    """features -> the target's softmax -> the defense's answer (no input checks: an exported graph
    cannot raise on data; a server in front of it validates)."""

    def __init__(self, target: torch.nn.Module, defense: Optional[OutputDefense]):
        super().__init__()
        self.target, self.defense = target.eval(), defense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.target(x), 1)
        return probs if self.defense is None else self.defense.defend(probs, check_inputs=False).defended


def check_exportable(defense: Optional[OutputDefense]) -> None:
    """InputError for a randomized defense (checked before fitting it, which can take long)."""
    if defense is not None and defense.randomized:
        raise InputError(f"export: {defense.name} does not export as one graph yet (it is randomized: its draws come "
                         "from mia-fast's seeded streams or keyed query hash; serve it with `mia-fast serve`)")


def export_defended(target: torch.nn.Module, defense: Optional[OutputDefense], example: torch.Tensor,
                    package_path, *, max_batch: int = 65536) -> Path:
    """Export ``DefendedModel(target, defense)`` with a dynamic batch dimension (2..``max_batch`` rows
    shaped like ``example``) and compile it into an AOTInductor package at ``package_path``, written
    atomically. Load it with ``torch._inductor.aoti_load_package(path)``."""
    path = Path(package_path)
    if path.suffix != ".pt2":
        raise InputError(f"package {path}: AOTInductor packages are .pt2 files")
    model = DefendedModel(target, defense).eval()
    example = example[:2] if len(example) >= 2 else example.expand(2, *example.shape[1:])
    check_exportable(defense)
    name = "no defense" if defense is None else defense.name
    try:
        program = torch.export.export(model, (example,),
                                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2, max=max_batch)}})
    except Exception as err:  # torch.export raises many types; the first line says why
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise InputError(f"export: {name} does not export as one graph yet ({first.strip()[:160]})") from None
    with atomic_path(path) as tmp:  # tmp ends in .pt2 too, as AOTInductor wants
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
    return path
