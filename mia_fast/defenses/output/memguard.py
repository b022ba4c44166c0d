"""MemGuard (Jia et al., "MemGuard: Defending against Black-Box Membership Inference Attacks via
Adversarial Examples", CCS 2019, sec. 4).

The defender trains its own membership classifier g on sorted confidence vectors (its members against
its non-members). Phase I finds, per answer, noise that drives g's output to 0.5 while the predicted
label stays and the answer stays a probability distribution: it works on logits z = log p, serves
softmax(z + e), and minimises (Algorithm 1)

    L(e) = |logit g(sort(softmax(z + e)))| + c2 * ReLU(max_{j != l} (z + e)_j - (z + e)_l)
           + c3 * ||softmax(z + e) - softmax(z)||_1

(|logit g| rather than |g - 0.5|: the same target, without the sigmoid's vanishing gradient far from
it; a component of the distortion below float rounding contributes no gradient, `ROUNDING`) by
normalised gradient steps until g's decision crosses 0.5 with the label kept, for c3 = c3_init,
10 c3_init, ... and keeps the result of the last c3 that still succeeded (less distortion).
Phase II serves the noisy answer with probability min(1, budget / ||r||_1) and the original
otherwise, so the expected L1 distortion stays within ``budget``. Batched over samples: every sample
runs the same loop under its own masks (no Python loop over samples).

`memguard_noise` (autograd, only the rows still searching) defines phase I; `memguard_noise_graph` is
the same search as one ``while_loop`` over masked rows with the gradient written out, which is what
`torch.export` traces (`mia_fast.serving.export`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch._higher_order_ops.while_loop import while_loop

from ...training.substitute import train_substitute
from ..base import OutputDefense, check_positive, register_defense

Tensor = torch.Tensor

#: softmax(log p) differs from p by float32 rounding, which each backend rounds its own way; the
#: distortion term's gradient treats a component that moved by less than this fraction of itself as not
#: moved (the subgradient 0 of |.| at 0), so the first step does not follow rounding noise
ROUNDING = 1e-5


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


def phase_one_loss(z: Tensor, e: Tensor, probs: Tensor, label: Tensor, others: Tensor, classifier: SortedMLP,
                   c2: float, c3) -> tuple:
    """(served answers, g's logit, loss L(e) per row), the loss as autograd differentiates it."""
    zz = z + e
    served = torch.softmax(zz, 1)
    g = classifier.logit(served)
    margin = zz.masked_fill(~others, float("-inf")).amax(1) - zz.gather(1, label[:, None])[:, 0]
    moved = served - probs
    moved = torch.where(moved.abs() > ROUNDING * probs, moved, moved.detach())  # no gradient below rounding
    return served, g, g.abs() + c2 * torch.relu(margin) + c3 * moved.abs().sum(1)


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
            served, g, loss = phase_one_loss(z[rows], e_rows, probs[rows], label[rows], others[rows], classifier,
                                             c2, c3)
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


def _logit_and_gradient(classifier: SortedMLP, served: Tensor) -> tuple:
    """(g = classifier.logit(served) [B], dg/dserved [B, C]): the ReLU network's backward pass written out,
    the sort undone by scattering through its indices."""
    ordered, order = served.sort(1, descending=True)
    layers = [m for m in classifier.net if isinstance(m, nn.Linear)]
    h, masks = ordered, []
    for layer in layers[:-1]:
        a = layer(h)
        masks.append(a > 0)
        h = torch.relu(a)
    g = layers[-1](h).squeeze(1)
    grad = layers[-1].weight.expand(h.shape[0], -1)
    for layer, mask in zip(reversed(layers[:-1]), reversed(masks)):
        grad = (grad * mask) @ layer.weight
    return g, torch.zeros_like(served).scatter(1, order, grad)


def _loss_gradient(z: Tensor, e: Tensor, probs: Tensor, label: Tensor, others: Tensor, classifier: SortedMLP,
                   c2: float, c3: Tensor) -> tuple:
    """(served, g, dL/de): `phase_one_loss` with its gradient in closed form (what autograd computes,
    ties of the rival logit aside)."""
    zz = z + e
    served = torch.softmax(zz, 1)
    g, dg = _logit_and_gradient(classifier, served)
    moved = served - probs
    d_served = torch.sign(g)[:, None] * dg + c3 * torch.sign(moved) * (moved.abs() > ROUNDING * probs)
    d_zz = served * (d_served - (d_served * served).sum(1, keepdim=True))
    rival = zz.masked_fill(~others, float("-inf")).argmax(1)
    margin = zz.gather(1, rival[:, None])[:, 0] - zz.gather(1, label[:, None])[:, 0]
    pull = c2 * (margin > 0).to(zz.dtype)[:, None]
    d_zz = d_zz + pull * (torch.nn.functional.one_hot(rival, zz.shape[1]) - torch.nn.functional.one_hot(label, zz.shape[1]))
    return served, g, d_zz


def memguard_noise_graph(probs: Tensor, classifier: SortedMLP, *, iters: int, step: float, c2: float,
                         c3_init: float, rounds: int) -> tuple:
    """`memguard_noise` as one traceable loop: every row takes every step under masks (a row that has
    crossed keeps its noise, a row that is not searching is left alone), the rounds run one after
    another in the same ``while_loop``, and the loop ends when no row is searching. Under `torch.export`
    it is a ``while_loop``; in eager mode the same body runs in a Python loop."""
    z = torch.log(probs.clamp_min(1e-12))
    label = probs.argmax(1)
    others = torch.ones_like(probs, dtype=torch.bool).scatter(1, label[:, None], False)
    start_side = classifier.logit(probs) >= 0
    no_rows = torch.zeros(probs.shape[0], dtype=torch.bool, device=probs.device)  # not len(): it fixes the batch

    def searching(round_, i, e, best, done, succeeded, trying, c3):
        return (round_ < rounds) & trying.any()

    def one_step(round_, i, e, best, done, succeeded, trying, c3):
        served, g, grad = _loss_gradient(z, e, probs, label, others, classifier, c2, c3)
        crossed = ((g >= 0) != start_side) & (served.argmax(1) == label) & trying & ~done
        best = torch.where(crossed[:, None], served, best)
        done = done | crossed
        moving = trying & ~done
        norm = grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
        e = torch.where(moving[:, None], e - step * grad / norm, e)
        i = i + 1
        over = (i >= iters) | ~moving.any()  # the round ends: a row that failed it stops raising c3
        succeeded = torch.where(over, succeeded | done, succeeded)
        trying = torch.where(over, trying & done, trying)
        return (round_ + over.long(), torch.where(over, torch.zeros_like(i), i), torch.where(over, torch.zeros_like(e), e),
                best, torch.where(over, no_rows, done), succeeded, trying, torch.where(over, c3 * 10, c3))

    state = (torch.zeros((), dtype=torch.int64, device=probs.device), torch.zeros((), dtype=torch.int64, device=probs.device),
             torch.zeros_like(z), probs.clone(), no_rows.clone(), no_rows.clone(), ~no_rows,  # no aliases: while_loop
             torch.full((), c3_init, dtype=probs.dtype, device=probs.device))
    if torch.compiler.is_exporting():
        state = while_loop(searching, one_step, state)
    else:
        while bool(searching(*state)):
            state = one_step(*state)
    return state[3], state[5]


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
        search = memguard_noise_graph if torch.compiler.is_exporting() else memguard_noise
        return search(probs, classifier, iters=self.iters, step=self.step, c2=self.c2, c3_init=self.c3_init,
                      rounds=self.rounds)

    def _defend(self, probs, generator):
        coin = (self.keyed_uniform(probs, 1)[0] if self.keyed
                else torch.rand(len(probs), generator=generator).to(probs.device))
        return self._phase_two(probs, coin)

    @property
    def uniforms_per_answer(self) -> int:
        return 1  # phase II's coin for answer i: noise added when uniforms[i, 0] < budget / L1

    def _defend_drawn(self, probs, uniforms):
        return self._phase_two(probs, uniforms[:, 0])[0]

    def _phase_two(self, probs, coin):
        noisy, succeeded = self.phase_one(probs)
        l1 = (noisy - probs).abs().sum(1)
        keep_prob = torch.clamp(self.budget / l1.clamp_min(1e-12), max=1.0)
        add = coin < keep_prob
        return torch.where(add[:, None], noisy, probs), {"noise_found": succeeded, "noise_added": add & succeeded}
