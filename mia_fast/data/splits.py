"""Member / non-member splits of the AEPPT experiments (Xue et al., sec. 5.2, 5.6, 5.9).

D_tar trains the target model; D_tar-bar is data it never saw. The defender's substitute MIM is trained
on the target's outputs on D_tar (members) vs D_tar-bar (non-members). The adversary knows a fraction
of each (1/4, 1/2 or 3/4, sec. 5.6) and trains its MIM on those; attacks are scored on the rest.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np


@dataclass
class Splits:
    """Index lists into one dataset. Deterministic from ``seed``; saved with every run."""

    seed: int
    members: List[int]            # D_tar
    nonmembers: List[int]         # D_tar-bar
    adversary_members: List[int]  # the adversary's known part of D_tar
    adversary_nonmembers: List[int]
    eval_members: List[int]       # the rest of D_tar, scored by attacks
    eval_nonmembers: List[int]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Splits":
        return cls(**json.loads(text))

    def sizes(self) -> Dict[str, int]:
        return {k: len(v) for k, v in asdict(self).items() if isinstance(v, list)}


def make_splits(n: int, *, members: Optional[int] = None, nonmembers: Optional[int] = None,
                adversary_fraction: float = 0.5, seed: int = 0) -> Splits:
    """Shuffle 0..n-1 with ``seed`` and cut D_tar (``members``) and D_tar-bar (``nonmembers``).

    Defaults split the data in two halves. Table 1 of the paper uses 50,000 / 10,000 for CIFAR-100 and
    20,000 / 20,000 for Purchase-100. Scored sets are cut to equal sizes (the paper's metrics assume
    balanced members and non-members).
    """
    if not 0 < adversary_fraction < 1:
        raise ValueError(f"adversary_fraction must be in (0, 1), got {adversary_fraction}")
    members = n // 2 if members is None else members
    nonmembers = n - members if nonmembers is None else nonmembers
    if members < 2 or nonmembers < 2 or members + nonmembers > n:
        raise ValueError(f"need 2 <= members, nonmembers and members + nonmembers <= {n}; got {members} + {nonmembers}")
    order = np.random.default_rng(seed).permutation(n)
    d_in, d_out = order[:members], order[members:members + nonmembers]
    k_in, k_out = max(1, int(len(d_in) * adversary_fraction)), max(1, int(len(d_out) * adversary_fraction))
    e_in, e_out = d_in[k_in:], d_out[k_out:]
    m = min(len(e_in), len(e_out))
    return Splits(seed, d_in.tolist(), d_out.tolist(), d_in[:k_in].tolist(), d_out[:k_out].tolist(),
                  e_in[:m].tolist(), e_out[:m].tolist())
