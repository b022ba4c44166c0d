"""MemGuard (Jia et al., "MemGuard: Defending against Black-Box Membership Inference Attacks via
Adversarial Examples", CCS 2019, sec. 4).

The defender trains its own membership classifier g on sorted confidence vectors (its members against
its non-members). Phase I finds, per answer, noise that drives g's output to 0.5 while the predicted
label stays and the answer stays a probability distribution: it works on logits z = log p, serves
softmax(z + e), and minimises (Algorithm 1)

    L(e) = |logit g(sort(softmax(z + e)))| + c2 * ReLU(max_{j != l} (z + e)_j - (z + e)_l)
           + c3 * ||softmax(z + e) - softmax(z)||_1

(|logit g| rather than |g - 0.5|: the same target, without the sigmoid's vanishing gradient far from
it) by normalised gradient steps until g's decision crosses 0.5 with the label kept, for c3 = c3_init,
10 c3_init, ... and keeps the result of the last c3 that still succeeded (less distortion).
Phase II serves the noisy answer with probability min(1, budget / ||r||_1) and the original
otherwise, so the expected L1 distortion stays within ``budget``. Batched over samples: every sample
runs the same loop under its own masks (no Python loop over samples).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ...training.substitute import train_substitute
from ..base import OutputDefense, check_positive, register_defense

Tensor = torch.Tensor


class SortedMLP(nn.Module):
    """MemGuard's defense classifier: a fully connected network on the sorted confidence vector
    (hidden layers 256, 128, 64, ReLU; the label is not used, as in the paper)."""

    def __init__(self, num_classes: int, hidden=(256, 128, 64)):
        super().__init__()
        self.num_classes, self.hidden = num_classes, list(hidden)
        widths, layers = [num_classes, *hidden], []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def logit(self, probs: Tensor, labels: Tensor = None) -> Tensor:
        return self.net(probs.sort(1, descending=True).values).squeeze(1)

    def forward(self, probs: Tensor, labels: Tensor = None) -> Tensor:
        return torch.sigmoid(self.logit(probs))


def memguard_noise(probs: Tensor, classifier: SortedMLP, *, iters: int, step: float, c2: float, c3_init: float,
                   rounds: int) -> tuple:
    """Phase I for a batch: (candidate answers softmax(z + e) [B, C], success mask [B]). A sample that
    never succeeds gets its original vector back. Uses autograd for the noise, also when called under
    torch.no_grad() (as a server does)."""
    with torch.enable_grad():
        return _search(probs, classifier, iters=iters, step=step, c2=c2, c3_init=c3_init, rounds=rounds)


def _search(probs: Tensor, classifier: SortedMLP, *, iters: int, step: float, c2: float, c3_init: float,
            rounds: int) -> tuple:
    z = torch.log(probs.clamp_min(1e-12))
    label = probs.argmax(1)
    others = torch.ones_like(probs, dtype=torch.bool).scatter_(1, label[:, None], False)
    with torch.no_grad():
        start_side = classifier.logit(probs) >= 0
    best = probs.clone()
    succeeded = torch.zeros(len(probs), dtype=torch.bool, device=probs.device)
    still_trying = torch.ones_like(succeeded)  # a sample stops raising c3 once a round fails for it
    c3 = c3_init
    for _ in range(rounds):
        e = torch.zeros_like(z)
        active = still_trying.clone()
        done = torch.zeros_like(succeeded)
        for _ in range(iters):
            rows = active.nonzero()[:, 0]  # work only on the samples still searching
            if len(rows) == 0:
                break
            e_rows = e[rows].requires_grad_(True)
            zz = z[rows] + e_rows
            served = torch.softmax(zz, 1)
            g = classifier.logit(served)
            margin = zz.masked_fill(~others[rows], float("-inf")).amax(1) - zz.gather(1, label[rows, None])[:, 0]
            loss = g.abs() + c2 * torch.relu(margin) + c3 * (served - probs[rows]).abs().sum(1)
            grad, = torch.autograd.grad(loss.sum(), e_rows)
            with torch.no_grad():
                crossed = ((g >= 0) != start_side[rows]) & (served.argmax(1) == label[rows])
                hit = rows[crossed]
                best[hit] = served[crossed]
                done[hit] = True
                active[hit] = False
                norm = grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                e[rows] = torch.where(crossed[:, None], e_rows, e_rows - step * grad / norm)
        succeeded |= done
        still_trying &= done
        if not bool(still_trying.any()):
            break
        c3 *= 10
    return best, succeeded


@register_defense
class MemGuard(OutputDefense):
    """MemGuard: noise that makes the defender's own membership classifier output 0.5, label kept,
    served with the probability the L1 ``budget`` allows (Jia et al., CCS 2019).

    Args:
        budget: the expected L1 distortion allowed (phase II); answers whose noise is smaller always get it.
        iters, step: phase I's normalised gradient steps per round, and their size (in logit space).
        c2, c3_init, rounds: the label-constraint weight, the first distortion weight (multiplied by 10
            per round) and the number of rounds.
        classifier_epochs: epochs of the defense classifier (BCE, Adam lr 1e-3).
        keyed: phase II's coin comes from a keyed hash of the query (`mia_fast.defenses.keyed`): the
            same query always gets the same answer.
    """

    name = "memguard"
    description = "noise that drives the defender's membership classifier to 0.5, label kept (Jia et al.)"
    keeps_label = True
    randomized = True
    uses = frozenset({"outputs"})

    def __init__(self, *, budget: float = 1.0, iters: int = 300, step: float = 0.1, c2: float = 10.0,
                 c3_init: float = 0.1, rounds: int = 3, classifier_epochs: int = 100, keyed: bool = False):
        check_positive(self.name, budget=budget, iters=iters, step=step, rounds=rounds,
                       classifier_epochs=classifier_epochs)
        if c2 < 0 or c3_init < 0:
            raise ValueError(f"memguard: c2 and c3_init must be >= 0, got c2={c2!r}, c3_init={c3_init!r}")
        self.budget, self.iters, self.step = float(budget), int(iters), float(step)
        self.c2, self.c3_init, self.rounds = float(c2), float(c3_init), int(rounds)
        self.classifier_epochs, self.keyed = int(classifier_epochs), bool(keyed)
        self.classifier = None

    def _fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, *, target, inputs, seed, device,
             progress):
        from ...seeding import stream_seed

        seed = stream_seed(seed, "memguard-classifier")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            classifier = SortedMLP(member_probs.shape[1])
        self.classifier, _ = train_substitute(member_probs, member_labels, nonmember_probs, nonmember_labels,
                                              epochs=self.classifier_epochs, seed=seed, device=device,
                                              progress=progress, model=classifier, desc="MemGuard classifier")
        self.classifier.requires_grad_(False)

    @property
    def num_classes(self):
        return self.classifier.num_classes if self.classifier is not None else None

    def state_dict(self) -> dict:
        return {"num_classes": self.classifier.num_classes, "hidden": self.classifier.hidden,
                "weights": self.classifier.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        classifier = SortedMLP(int(state["num_classes"]), tuple(state["hidden"]))
        classifier.load_state_dict(state["weights"])
        self.classifier = classifier.eval().requires_grad_(False)
        self._fitted = True

    def phase_one(self, probs: Tensor) -> tuple:
        """(noisy answers, success mask): Phase I alone, on ``probs``' device."""
        classifier = copy.deepcopy(self.classifier).to(probs.device) if probs.device.type != "cpu" else self.classifier
        return memguard_noise(probs, classifier, iters=self.iters, step=self.step, c2=self.c2,
                              c3_init=self.c3_init, rounds=self.rounds)

    def _defend(self, probs, generator):
        noisy, succeeded = self.phase_one(probs)
        l1 = (noisy - probs).abs().sum(1)
        keep_prob = torch.clamp(self.budget / l1.clamp_min(1e-12), max=1.0)
        coin = (self.keyed_uniform(probs, 1)[0] if self.keyed
                else torch.rand(len(probs), generator=generator).to(probs.device))
        add = coin < keep_prob
        return torch.where(add[:, None], noisy, probs), {"noise_found": succeeded, "noise_added": add & succeeded}
