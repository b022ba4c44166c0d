"""HAMP's output modification (Chen & Pattabiraman, "Overconfidence is a Dangerous Thing: Mitigating
Membership Inference Attacks by Enforcing Less Confident Prediction", NDSS 2024, sec. IV-C).

Each served vector's values are replaced by the sorted values of the target's output on a random input,
placed in the original's rank order: the label and the ranking stay, the confidence values no longer
come from the queried record. HAMP pairs this with high-entropy training (the training-time defense);
this is the output step alone.
"""
from __future__ import annotations

import torch

from ... import ops
from ...training.target import predict_proba
from ..base import OutputDefense, check_positive, register_defense


def random_inputs(like: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random inputs shaped like the rows of ``like``: each feature uniform over its range in
    ``like``, or a fair coin where every feature is 0 or 1 (binary tabular data)."""
    like = like.float()
    shape = (count, *like.shape[1:])
    u = torch.rand(shape, generator=generator)
    if bool(((like == 0) | (like == 1)).all()):
        return (u < 0.5).float()
    low, high = like.amin(0), like.amax(0)
    return low + u * (high - low)


@register_defense
class HAMPOutput(OutputDefense):
    """Replace each vector's values by those of the target's output on a random input, in the original's
    rank order (label and ranking kept). ``fit`` queries the target on ``bank_size`` random inputs
    (`random_inputs`) and keeps their sorted outputs; ``defend`` draws one per answer (``keyed``: the
    draw comes from a keyed hash of the query, so the same query always gets the same values).

    >>> d = HAMPOutput(bank_size=4)
    >>> d.load_state_dict({"bank": torch.tensor([[0.6, 0.3, 0.1]]).repeat(4, 1)})
    >>> d.defend(torch.tensor([[0.05, 0.9, 0.05], [0.2, 0.1, 0.7]])).defended.tolist()
    [[0.30000001192092896, 0.6000000238418579, 0.10000000149011612], [0.30000001192092896, 0.10000000149011612, 0.6000000238418579]]
    """

    name = "hamp-output"
    description = "values of the target's output on a random input, in the original's rank order (HAMP)"
    keeps_label = True
    randomized = True
    uses = frozenset({"target"})

    def __init__(self, *, bank_size: int = 5000, keyed: bool = False):
        check_positive(self.name, bank_size=bank_size)
        self.bank_size, self.keyed = int(bank_size), bool(keyed)
        self.bank = None

    def _fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, *, target, inputs, seed, device,
             progress):
        from ...seeding import stream

        x = random_inputs(torch.as_tensor(inputs), self.bank_size, stream(seed, "hamp-inputs"))
        self.bank = predict_proba(target, x, device=device).sort(1, descending=True).values

    @property
    def num_classes(self):
        return self.bank.shape[1] if self.bank is not None else None

    def state_dict(self) -> dict:
        return {"bank": self.bank}

    def load_state_dict(self, state: dict) -> None:
        bank = state["bank"]
        if not isinstance(bank, torch.Tensor) or bank.dim() != 2:
            raise ValueError("hamp-output: state 'bank' must be a [N, C] tensor")
        self.bank = bank.float()
        self._fitted = True

    def _defend(self, probs, generator):
        if self.keyed:
            return self._defend_drawn(probs, self.keyed_uniform(probs, 1).T.to(probs.device))
        return self._with_bank_rows(probs, torch.randint(len(self.bank), (probs.shape[0],), generator=generator))

    @property
    def uniforms_per_answer(self) -> int:
        return 1  # the bank row of answer i: floor(uniforms[i, 0] * bank size)

    def _defend_drawn(self, probs, uniforms):
        return self._with_bank_rows(probs, (uniforms[:, 0] * len(self.bank)).long().clamp_max(len(self.bank) - 1))

    def _with_bank_rows(self, probs, rows):
        if self.bank.shape[1] != probs.shape[1]:
            raise ValueError(f"hamp-output: fitted on {self.bank.shape[1]} classes, got {probs.shape[1]}")
        bank = self.bank.to(probs.device)
        return ops.place_in_rank_order(probs.contiguous(), bank[rows.to(probs.device)].contiguous())
