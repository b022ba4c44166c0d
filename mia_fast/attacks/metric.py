"""Metric-based attacks with per-class thresholds (Song & Mittal, "Systematic Evaluation of Privacy Risks
of Machine Learning Models", USENIX Security 2021, sec. 3)."""
from __future__ import annotations

import numpy as np
import torch

from .base import Attack

Tensor = torch.Tensor
_TINY = 1e-30


def metric_scores(metric: str, probs: Tensor, labels: Tensor) -> np.ndarray:
    """Membership scores (higher = member) of one metric.

    correctness: 1[argmax p = y]; confidence: p_y; entropy: -H(p);
    modified_entropy: -Mentr(p, y), Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i).
    """
    p = probs.double().clamp(0, 1)
    y = labels.long()
    py = p.gather(1, y[:, None])[:, 0]
    if metric == "correctness":
        s = (p.argmax(1) == y).double()
    elif metric == "confidence":
        s = py
    elif metric == "entropy":
        s = (p * torch.log(p.clamp_min(_TINY))).sum(1)
    elif metric == "modified_entropy":
        log_1mp = torch.log((1 - p).clamp_min(_TINY))
        others = (p * log_1mp).sum(1) - py * log_1mp.gather(1, y[:, None])[:, 0]
        s = -(-(1 - py) * torch.log(py.clamp_min(_TINY)) - others)
    else:
        raise ValueError(f"metric must be correctness, confidence, entropy or modified_entropy; got {metric!r}")
    return s.numpy()


def _best_threshold(s_in: np.ndarray, s_out: np.ndarray):
    """(t, balanced accuracy) of the threshold t maximising the balanced accuracy of 1[s >= t]."""
    if len(s_in) == 0 or len(s_out) == 0:
        return (float("-inf") if len(s_in) else float("inf")), 0.5
    candidates = np.unique(np.concatenate([s_in, s_out]))
    s_in, s_out = np.sort(s_in), np.sort(s_out)
    tpr = 1 - np.searchsorted(s_in, candidates, side="left") / len(s_in)
    tnr = np.searchsorted(s_out, candidates, side="left") / len(s_out)
    best = int(np.argmax(tpr + tnr))
    return float(candidates[best]), float((tpr[best] + tnr[best]) / 2)


def _best_rule(s_in: np.ndarray, s_out: np.ndarray):
    """(direction, t): member when direction * s >= t, for the direction (+1 or -1) that separates better.
    A defense can turn a metric around (defended members look less confident than non-members); an
    attacker that calibrates on defended outputs notices."""
    up, down = _best_threshold(s_in, s_out), _best_threshold(-s_in, -s_out)
    return (1.0, up[0]) if up[1] >= down[1] else (-1.0, down[0])


class MetricAttack(Attack):
    """Threshold one metric, with a threshold per class learned on the attacker's known records.

    Each class gets a direction too (member when the metric is high, or when it is low), fitted with the
    threshold. ``score`` returns direction * metric minus the class threshold, so 0 is the decision
    boundary and scores stay comparable across classes (for ROC curves). Correctness needs no fitting.

    A class without fitting records uses the threshold fitted on all classes (here 0.9):

    >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.05, 0.95]])
    >>> attack = MetricAttack("confidence").fit(p[:1], torch.tensor([0]), p[1:2], torch.tensor([0]))
    >>> attack.infer(p, torch.tensor([0, 0, 1]))
    array([ True, False,  True])
    """

    threshold = 0.0

    def __init__(self, metric: str = "modified_entropy"):
        metric_scores(metric, torch.ones(1, 1), torch.zeros(1, dtype=torch.long))  # validates the name
        self.metric = metric
        self._thresholds: dict = {}
        self._global = (1.0, 0.5) if metric == "correctness" else None

    def fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels) -> "MetricAttack":
        if self.metric == "correctness":
            return self
        s_in = metric_scores(self.metric, member_probs, member_labels)
        s_out = metric_scores(self.metric, nonmember_probs, nonmember_labels)
        l_in, l_out = member_labels.numpy(), nonmember_labels.numpy()
        self._global = _best_rule(s_in, s_out)
        self._thresholds = {int(c): _best_rule(s_in[l_in == c], s_out[l_out == c]) for c in np.union1d(l_in, l_out)}
        return self

    def score(self, probs, labels) -> np.ndarray:
        if self._global is None:
            raise RuntimeError(f"{self!r} is not fitted: call fit() first")
        s = metric_scores(self.metric, probs, labels)
        rules = np.array([self._thresholds.get(int(c), self._global) for c in labels.numpy()]).reshape(-1, 2)
        return rules[:, 0] * s - rules[:, 1]
