"""Combinations: at most one training defense and one output defense, named ``TRAINING+OUTPUT`` (either
part alone is a combination too), and named combinations a paper defines as one defense (``hamp``).

>>> parse_spec("advreg+aeppt")
DefenseSpec(label='advreg+aeppt', training='advreg', output='aeppt')
>>> parse_spec("hamp")
DefenseSpec(label='hamp', training='hamp-training', output='hamp-output')
>>> parse_spec("aeppt+memguard")
Traceback (most recent call last):
...
ValueError: aeppt+memguard: at most one output defense (got aeppt, memguard)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import DEFENSES

#: name -> (training defense, output defense): defenses published as the two together
COMBINATIONS = {"hamp": ("hamp-training", "hamp-output")}


@dataclass(frozen=True)
class DefenseSpec:
    """One point of a comparison: its ``label`` and the training and output defense it combines."""

    label: str
    training: Optional[str] = None
    output: Optional[str] = None

    @property
    def names(self) -> tuple:
        return tuple(n for n in (self.training, self.output) if n)


def parse_spec(text: str) -> DefenseSpec:
    """``TRAINING``, ``OUTPUT``, ``TRAINING+OUTPUT`` or a named combination (`COMBINATIONS`)."""
    text = text.strip()
    if text in COMBINATIONS:
        return DefenseSpec(text, *COMBINATIONS[text])
    parts = [p.strip() for p in text.split("+")]
    chosen = {"training": [], "output": []}
    for part in parts:
        if part not in DEFENSES:
            known = ", ".join([*DEFENSES, *COMBINATIONS])
            raise ValueError(f"{text}: unknown defense {part!r}; known: {known}")
        chosen[DEFENSES[part].kind].append(part)
    for kind, names in chosen.items():
        if len(names) > 1:
            raise ValueError(f"{text}: at most one {kind} defense (got {', '.join(names)})")
    return DefenseSpec(text, (chosen["training"] or [None])[0], (chosen["output"] or [None])[0])
