"""The rank template: every answer is one fixed vector, placed in the rank order of the target's own
output. The label and the ranking of the classes stay; the confidence values no longer depend on the
query, so no score computed from them (confidence, entropy, modified entropy, a learned attack) can
tell members from non-members beyond what the label and the ranking say.

The fixed vector is the one that moves the defender's own outputs least in L1: the coordinatewise
median of their sorted values (renormalised to sum to 1). It is label-only serving with the one-hot
vector replaced by the L1-cheapest constant. It is deterministic: repeating a query teaches nothing.
"""
from __future__ import annotations

import torch

from ... import ops
from ..base import OutputDefense, register_defense

Tensor = torch.Tensor

#: A class needs this many defender outputs predicted as it for its own template (``per_class``);
#: the others use the template of all outputs.
MIN_CLASS_ROWS = 20


def median_template(probs: Tensor) -> Tensor:
    """The coordinatewise median of the rows of ``probs`` [N, C] sorted largest first, renormalised to
    sum to 1 [C] (ValueError when its largest value is not strictly the largest: the label would not stay)."""
    values = probs.float().sort(1, descending=True).values.median(0).values
    values = values / values.sum().clamp_min(torch.finfo(values.dtype).tiny)
    if values.numel() > 1 and not values[0] > values[1]:
        raise ValueError("rank-template: the defender's outputs have no clear top class (the median template's two "
                         f"largest values are {float(values[0]):.4g} and {float(values[1]):.4g})")
    return values


@register_defense
class RankTemplate(OutputDefense):
    """Serve a fixed vector in the rank order of each answer (`mia_fast.ops.place_in_rank_order`). ``fit``
    takes the coordinatewise median of the defender's sorted outputs (members and non-members);
    ``per_class``: one template per predicted class (classes with fewer than `MIN_CLASS_ROWS` outputs use
    the global one), which moves the outputs slightly less and lets the values depend on the label.

    >>> d = RankTemplate()
    >>> d.load_state_dict({"templates": torch.tensor([[0.7, 0.2, 0.1]])})
    >>> d.defend(torch.tensor([[0.05, 0.9, 0.05], [0.2, 0.1, 0.7]])).defended.mul(10).round().tolist()
    [[2.0, 7.0, 1.0], [2.0, 1.0, 7.0]]
    """

    name = "rank-template"
    description = "one fixed vector (the L1-cheapest) in the rank order of each answer: label and ranking kept"
    keeps_label = True
    uses = frozenset({"outputs"})

    def __init__(self, *, per_class: bool = False):
        self.per_class = bool(per_class)
        self.templates = None

    def _fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, *, target, inputs, seed, device,
             progress):
        probs = torch.cat([member_probs, nonmember_probs]).float().cpu()
        overall = median_template(probs)
        if not self.per_class:
            self.templates = overall[None]
            return
        predicted = probs.argmax(1)
        counts = torch.bincount(predicted, minlength=probs.shape[1])
        self.templates = torch.stack([median_template(probs[predicted == c]) if counts[c] >= MIN_CLASS_ROWS else overall
                                      for c in range(probs.shape[1])])

    @property
    def num_classes(self):
        return self.templates.shape[1] if self.templates is not None else None

    def state_dict(self) -> dict:
        return {"templates": self.templates}

    def load_state_dict(self, state: dict) -> None:
        templates = state["templates"]
        if (not isinstance(templates, torch.Tensor) or templates.dim() != 2
                or templates.shape[0] not in (1, templates.shape[1])):
            raise ValueError("rank-template: state 'templates' must be a [1, C] or [C, C] tensor")
        self.templates = templates.float()
        self._fitted = True

    def _defend(self, probs, generator):
        if self.templates.shape[1] != probs.shape[1]:
            raise ValueError(f"rank-template: fitted on {self.templates.shape[1]} classes, got {probs.shape[1]}")
        templates = self.templates.to(probs.device)
        values = templates[probs.argmax(1)] if templates.shape[0] > 1 else templates.expand(probs.shape[0], -1)
        return ops.place_in_rank_order(probs.contiguous(), values.contiguous())
