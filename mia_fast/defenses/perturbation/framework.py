"""Algorithm 1 of Bai et al. 2021 ("Synthesis of the uploading data"), in one consistent reading of it:

    S <- a seeded subset of floor(alpha * N) records; R <- the rest
    f <- simulator trained on X; leakage <- g(f) on X vs X_infer          (reported as "before")
    best[S] <- none
    for each of m rounds:
        h.fit(f, g, X[S], Y[S]); cand <- h.propose(X[S], Y[S], K) ++ best[S]  (the previous pick competes)
        loss <- CE of f on cand vs the original label, mean over f's models
        valid <- argmax f(cand) == argmax f(X[S])                           (eq. 2)
        best[S] <- the lowest-loss valid candidate within eps (eqs. 1, 4: the fused op); none -> X[S]
        f.fit(best[S] U X[R]); leakage <- g(f)
        stop when leakage is within target, else strengthen h              (the feedback)

Ambiguities, and the choices (the design note's numbering): (1) h is applied to the chosen records;
(2, 4) each record keeps a running minimum of its loss over rounds, so the previous pick competes with
the new candidates; (3) a record with no candidate within eps keeps its original (``fallback="original"``,
counted) or its previous pick even if it no longer qualifies (``"previous"``); (5) the loss is the
cross-entropy with the original label averaged over the simulator's models; (6) eq. 2 compares with the
simulator's label of the original (``label_reference="simulator"``) or with the true label (``"true"``);
(8) eps is a squared L2 distance on the data's scale by default (``distance="l2"``: plain L2).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ...errors import InputError
from ...ops import select_within_distance
from ...seeding import stream
from .base import Generator, check_distance
from .simulator import Feedback, Leakage, LeakageEvaluator, Simulator

Tensor = torch.Tensor
FALLBACKS = ("original", "previous")
LABEL_REFERENCES = ("simulator", "true")


@dataclass
class Protection:
    """The upload and what was done to each record.

    Attributes:
        x: the records to upload, in the input's order [N, ...].
        selected: the record was in the perturbed subset S [N].
        perturbed: it is uploaded perturbed (selected and a candidate qualified) [N].
        distance: its distance to the original, in eps's unit (0 when not perturbed) [N].
        loss: the simulator's loss on what is uploaded, at the last round it changed [N].
        round_chosen: the round its upload was picked in (-1: not perturbed) [N].
        before: the evaluator's leakage on a simulator trained on the originals.
        eps, unit: the distance threshold and its unit ("squared-l2" or "l2").
        rounds: per round: strength, leakage, fallbacks, mean distance, seconds.
    """

    x: Tensor
    selected: Tensor
    perturbed: Tensor
    distance: Tensor
    loss: Tensor
    round_chosen: Tensor
    before: dict
    eps: float
    unit: str
    rounds: list = field(default_factory=list)

    @property
    def fallbacks(self) -> int:
        """Selected records uploaded as their original: no candidate within eps kept the label."""
        return int((self.selected & ~self.perturbed).sum())

    def summary(self) -> dict:
        n_sel = int(self.selected.sum())
        d = self.distance[self.perturbed]
        return {"eps": self.eps, "distance_unit": self.unit, "records": len(self.selected), "selected": n_sel, "perturbed": int(self.perturbed.sum()),
                "fallbacks": self.fallbacks, "mean_distance": float(d.mean()) if len(d) else 0.0,
                "max_distance": float(d.max()) if len(d) else 0.0, "before": self.before,
                "after": self.rounds[-1]["leakage"] if self.rounds else self.before, "rounds": self.rounds}


def check_records(x: Tensor, data_range, what: str = "records") -> None:
    lo, hi = data_range
    if not torch.isfinite(x).all():
        raise InputError(f"{what}: not finite")
    if len(x) and (float(x.min()) < lo or float(x.max()) > hi):
        raise InputError(f"{what}: values {float(x.min()):g}..{float(x.max()):g} outside the data range {lo:g}..{hi:g}")


def check_protection_args(eps: float, alpha: float, rounds: int, candidates: int, distance: str, fallback: str,
                          label_reference: str) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    if rounds < 1 or candidates < 1:
        raise ValueError(f"rounds and candidates must be >= 1, got {rounds}, {candidates}")
    check_distance(distance)
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    if label_reference not in LABEL_REFERENCES:
        raise ValueError(f"label_reference must be one of {', '.join(LABEL_REFERENCES)}, got {label_reference!r}")


def _distance(a: Tensor, b: Tensor, squared: bool) -> Tensor:
    d2 = (a - b).flatten(1).pow(2).sum(1)
    return d2 if squared else d2.sqrt()


def _floor(generator: Generator, squared: bool) -> float:
    """The feedback floor as a distance in eps's unit."""
    r = generator.strength * generator.radius
    return r * r if squared else r


def perturbed_subset(n: int, alpha: float, seed: int) -> Tensor:
    """The floor(alpha * n) record indices S, drawn from a stream of ``seed`` (sorted)."""
    size = int(alpha * n + 1e-9)
    return torch.randperm(n, generator=stream(seed, "perturbation-subset")).narrow(0, 0, size).sort().values


def protect_data(x: Tensor, y: Tensor, x_infer: Tensor, y_infer: Tensor, *, generator: Generator,
                 simulator: Simulator, evaluator: LeakageEvaluator, feedback: Feedback, eps: float,
                 alpha: float = 1.0, rounds: int = 3, candidates: int = 8, distance: str = "squared-l2",
                 strength: float = 0.25, fallback: str = "original", label_reference: str = "simulator",
                 data_range=(0.0, 1.0), constrained: bool = True, seed: int = 0,
                 log: Optional[Callable[[str], None]] = None, progress: bool = False) -> Protection:
    """Algorithm 1 (module doc) on records ``x`` [N, ...] with labels ``y``; ``x_infer`` / ``y_infer``:
    records outside the upload, the evaluator's non-members. Deterministic from ``seed``.

    ``constrained=False`` drops the constraints of sec. 4.2 (eps and eq. 2: the lowest-loss candidate is
    taken wherever it lies, Fig. 4(a)). A ``simulator`` that is already fitted is taken as trained on
    ``x`` (experiments that compare settings fit it once and hand in copies)."""
    check_protection_args(eps, alpha, rounds, candidates, distance, fallback, label_reference)
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    x, y = torch.as_tensor(x).float(), torch.as_tensor(y).long()
    x_infer, y_infer = torch.as_tensor(x_infer).float(), torch.as_tensor(y_infer).long()
    check_records(x, data_range)
    if len(x) < 4 or len(x_infer) < 4:
        raise InputError(f"input perturbation needs at least 4 records to upload and 4 held out, got "
                         f"{len(x)} and {len(x_infer)}")
    say = log or (lambda message: None)
    generator.configure(eps=eps, distance=distance, data_range=data_range, strength=strength)
    squared = distance == "squared-l2"
    n = len(x)
    chosen = perturbed_subset(n, alpha, seed)
    if len(chosen) == 0:
        raise InputError(f"alpha {alpha:g} of {n} records perturbs none: raise alpha to at least {1 / n:.3g}")
    xs, ys = x[chosen], y[chosen]
    say(f"input perturbation: {len(chosen)} of {n} records (alpha {alpha:g}), {generator!r}, eps {eps:g} "
        f"({distance}), {rounds} rounds of {candidates} candidates")
    if not simulator.models:
        simulator.fit(x, y, progress=progress)
    before = evaluator.evaluate(simulator, x, y, x_infer, y_infer)
    say(f"  before: evaluator accuracy {before.accuracy:.3f}, simulator train/test {before.train_accuracy:.3f}/"
        f"{before.test_accuracy:.3f}")
    best = xs.clone()
    best_loss = torch.full((len(xs),), float("nan"))
    best_round = torch.full((len(xs),), -1, dtype=torch.long)
    upload = x.clone()
    history, leakage = [], before
    for r in range(rounds):
        started = time.perf_counter()
        generator.fit(simulator, evaluator, xs, ys, seed=seed, progress=progress)
        cand = generator.propose(simulator, xs, ys, candidates, generator=stream(seed, "perturbation-candidates", r))
        cand = torch.cat([cand, best[:, None]], 1)  # the previous pick competes (NaN loss until there is one)
        flat = cand.flatten(0, 1)
        losses, means = simulator.evaluate(flat, ys.repeat_interleave(cand.shape[1]))
        losses, labels = losses.view(len(xs), -1), means.argmax(1).view(len(xs), -1)
        losses[:, -1] = torch.where(best_round >= 0, losses[:, -1], torch.full_like(best_loss, float("nan")))
        reference_labels = simulator.evaluate(xs, ys)[1].argmax(1) if label_reference == "simulator" else ys
        valid = labels == reference_labels[:, None]
        # The previous pick stays only while it is above the current floor: otherwise its lower loss would
        # undo every strengthening the feedback asks for.
        valid[:, -1] &= _distance(best, xs, squared) >= _floor(generator, squared) * (1 - 1e-6)
        if not constrained:
            valid[:, :-1] = True
        index, _ = select_within_distance(xs.flatten(1), cand.flatten(2), losses, eps if constrained else math.inf,
                                          valid, squared)
        found = index >= 0
        rows = found.nonzero()[:, 0]
        new = found & (index < candidates)
        best[rows] = cand[rows, index[rows]]
        best_loss[rows] = losses[rows, index[rows]]
        best_round[new] = r
        if fallback == "original":
            best[~found], best_loss[~found], best_round[~found] = xs[~found], float("nan"), -1
        upload[chosen] = best
        simulator.fit(upload, y, progress=progress)
        leakage = evaluator.evaluate(simulator, x, y, x_infer, y_infer)
        d = _distance(best, xs, squared)
        kept = best_round >= 0
        history.append({"round": r, "strength": generator.strength, "leakage": leakage.as_dict(),
                        "perturbed": int(kept.sum()), "fallbacks": int((~kept).sum()),
                        "mean_distance": float(d[kept].mean()) if kept.any() else 0.0,
                        "seconds": time.perf_counter() - started})
        say(f"  round {r + 1}/{rounds}: strength {generator.strength:.3f}, {int(kept.sum())} perturbed, "
            f"{int((~kept).sum())} kept original, mean distance {history[-1]['mean_distance']:.3g}; evaluator "
            f"accuracy {leakage.accuracy:.3f}, simulator train/test {leakage.train_accuracy:.3f}/{leakage.test_accuracy:.3f}")
        if feedback.within_target(leakage):
            break
        generator.strength = feedback.next_strength(generator.strength, leakage)
    selected = torch.zeros(n, dtype=torch.bool)
    selected[chosen] = True
    perturbed, distances, loss, round_chosen = (torch.zeros(n, dtype=torch.bool), torch.zeros(n),
                                               torch.full((n,), float("nan")), torch.full((n,), -1, dtype=torch.long))
    kept = best_round >= 0
    perturbed[chosen] = kept
    distances[chosen] = torch.where(kept, _distance(best, xs, squared), torch.zeros(len(xs)))
    loss[chosen], round_chosen[chosen] = best_loss, best_round
    return Protection(upload, selected, perturbed, distances, loss, round_chosen, before.as_dict(), eps, distance,
                      history)


__all__ = ["Protection", "protect_data", "perturbed_subset", "check_protection_args", "Leakage", "FALLBACKS",
           "LABEL_REFERENCES"]
