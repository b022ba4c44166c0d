"""OPTMARGIN (He, Li and Song, "Decision Boundary Analysis of Adversarial Examples", ICLR 2018), as Bai
et al. use it (eqs. 9-10): an optimisation against a region classifier, the simulator on ``copies``
noisy copies x' + v_i of the candidate, in C&W's tanh space with Adam.

He et al. minimise ||x' - x||^2 + c * sum_i l_i(x') with l_i a misclassification loss; Bai et al. want
candidates that keep the label and sit at the feedback radius. So here l_i(x') = max(max_{j != t}
z_j(x' + v_i) - z_t(x' + v_i) + kappa, 0) with t the simulator's label of x (z: log-probabilities),
which is zero once every noisy copy keeps t with margin kappa, and the distance term is
((||x' - x|| - r) / R)^2, r = strength * R the feedback radius, R the eps radius; each restart starts
from a random point at distance r. Records whose result loses the label get c x 10 for the next of
``search_steps`` rounds (the binary search over c, coarsened). The defaults (20 Adam steps, 4 noisy
copies, one model, one restart and one c) are far below He et al.'s so that a few thousand records
take minutes on 2 cores; raise them for a closer reading.
"""
from __future__ import annotations

import torch

from .base import Generator, register_generator
from .simulator import true_class


@register_generator
class OptMargin(Generator):
    """``restarts`` optimisations per record; the K candidates are their results x + t * (x' - x) for t
    evenly in [1, 1 + ``spread``] (restarts taken in turn), clipped to the data range, so the cost is
    that of the restarts, not of K. ``models``: how many of the simulator's models the region loss uses
    (the cost is linear in it), ``noise``: the noisy copies' L2 size as a fraction of R."""

    name = "optmargin"
    description = "OPTMARGIN: label-keeping optimisation against noisy copies (He et al. 2018)"

    def __init__(self, *, steps: int = 20, lr: float = 0.05, c: float = 1.0, kappa: float = 0.5, copies: int = 4,
                 noise: float = 0.1, search_steps: int = 1, restarts: int = 1, models: int = 1, spread: float = 0.5,
                 batch_size: int = 256):
        super().__init__()
        if min(steps, copies, search_steps, restarts, models, batch_size) < 1 or lr <= 0 or c <= 0 \
                or min(kappa, noise, spread) < 0:
            raise ValueError("optmargin: steps, copies, search_steps, restarts, models, batch_size >= 1, lr > 0, "
                             "c > 0, kappa, noise, spread >= 0")
        self.steps, self.lr, self.c, self.kappa, self.copies, self.noise = steps, lr, c, kappa, copies, noise
        self.search_steps, self.restarts, self.models, self.spread = search_steps, restarts, models, spread
        self.batch_size = batch_size

    def _to_tanh(self, x):
        lo, hi = self.data_range
        unit = ((x - lo) / (hi - lo)).clamp(1e-6, 1 - 1e-6)
        return torch.atanh(2 * unit - 1)

    def _from_tanh(self, w):
        lo, hi = self.data_range
        return lo + (hi - lo) * (torch.tanh(w) + 1) / 2

    def _margin(self, simulator, points, labels):
        """max(max_{j != t} z_j - z_t + kappa, 0) of the first ``models`` simulator models, averaged [B]."""
        lp = torch.stack([torch.log_softmax(m(points), 1) for m in simulator.models[:self.models]])
        true = true_class(lp, labels)
        other = lp.masked_fill(torch.nn.functional.one_hot(labels, lp.shape[2]).bool()[None], float("-inf")).amax(2)
        return (other - true + self.kappa).clamp_min(0).mean(0)

    def _optimise(self, simulator, x, labels, start, noise, c):
        shape = x.shape[1:]
        w = self._to_tanh(start).requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        floor, big_r = self.strength * self.radius, self.radius
        for _ in range(self.steps):
            point = self._from_tanh(w)
            dist = (point - x).flatten(1).norm(dim=1)
            noisy = (point[:, None] + noise).reshape(-1, *shape)
            region = self._margin(simulator, noisy, labels.repeat_interleave(self.copies)).view(len(x), -1).mean(1)
            loss = (((dist - floor) / big_r) ** 2 + c * region).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return self._from_tanh(w).detach()

    def _restart(self, simulator, xb, lab, generator):
        """One optimisation for a batch of records: a random start at the feedback radius, the binary
        search over c coarsened to x10 for records whose result loses the label."""
        device = simulator.device
        flat = lambda t: t.flatten(1)  # noqa: E731
        direction = torch.randn(xb.shape, generator=generator)
        direction = direction / flat(direction).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (xb.dim() - 1))
        first = self.clip(xb + self.strength * self.radius * direction)
        noise = torch.randn(len(xb), self.copies, *xb.shape[1:], generator=generator)
        noise = noise / noise.flatten(2).norm(dim=2).clamp_min(1e-12).view(len(xb), self.copies, *[1] * (xb.dim() - 1))
        noise = noise * self.noise * self.radius
        c = torch.full((len(xb),), self.c)
        result, todo = first.clone(), torch.ones(len(xb), dtype=torch.bool)
        for _ in range(self.search_steps):
            rows = todo.nonzero()[:, 0]
            got = self._optimise(simulator, xb[rows].to(device), lab[rows].to(device), first[rows].to(device),
                                 noise[rows].to(device), c[rows].to(device)).cpu()
            result[rows] = got
            with torch.no_grad():
                kept = torch.stack([m(got.to(device)).softmax(1) for m in simulator.models]).mean(0).argmax(1).cpu()
            kept = kept == lab[rows]
            todo[rows[kept]] = False
            c[rows[~kept]] *= 10
            if not todo.any():
                break
        return result

    def propose(self, simulator, x, y, k, *, generator):
        labels = simulator.evaluate(x, y)[1].argmax(1)
        scales = torch.linspace(1.0, 1.0 + self.spread, k) if k > 1 else torch.ones(1)
        out = torch.empty(len(x), k, *x.shape[1:])
        for start in range(0, len(x), self.batch_size):
            xb, lab = x[start:start + self.batch_size].float(), labels[start:start + self.batch_size]
            results = [self._restart(simulator, xb, lab, generator) for _ in range(self.restarts)]
            for j, t in enumerate(scales.tolist()):
                out[start:start + len(xb), j] = self.clip(xb + t * (results[j % self.restarts] - xb))
        return out
