"""AdvGAN (Xiao, Li, Zhu, He, Liu and Song, "Generating Adversarial Examples with Adversarial Networks",
IJCAI 2018), with Bai et al.'s adaptation (sec. 5.1.1, eq. 6): the generator G maps a record to a
perturbation, x + G(x) should keep the simulator's label (f(x) = f(x + G(x))), look real to a
discriminator D (LSGAN losses), keep its size between the feedback floor and the eps radius (Xiao's
hinge, on both sides), and look like a non-member to the privacy-leakage evaluator g."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from ...seeding import stream_seed
from .base import Generator, register_generator


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels))

    def forward(self, x):
        return x + self.body(x)


def perturbation_network(shape) -> nn.Module:
    """G: Xiao et al.'s encoder (two stride-2 convolutions), residual blocks and decoder for images
    [C, H, W] with H and W divisible by 4, the decoder upsampling then convolving instead of their
    transposed convolutions, which left a checkerboard on every record (Odena et al., Distill 2016);
    a two-layer MLP for other records. Output in [-1, 1]."""
    if len(shape) == 3 and shape[1] % 4 == 0 and shape[2] % 4 == 0:
        c = shape[0]
        return nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.InstanceNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.InstanceNorm2d(32), nn.ReLU(),
            _ResBlock(32), _ResBlock(32),
            nn.Upsample(scale_factor=2), nn.Conv2d(32, 16, 3, padding=1), nn.InstanceNorm2d(16), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(16, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, c, 3, padding=1), nn.Tanh())
    dims = math.prod(shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(dims, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, dims), nn.Tanh(), nn.Unflatten(1, tuple(shape)))


def discriminator_network(shape) -> nn.Module:
    """D: two stride-2 convolutions and a linear layer for images, an MLP otherwise; a realness logit."""
    if len(shape) == 3 and shape[1] % 4 == 0 and shape[2] % 4 == 0:
        c, h, w = shape
        return nn.Sequential(nn.Conv2d(c, 8, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                             nn.Conv2d(8, 16, 4, stride=2, padding=1), nn.InstanceNorm2d(16), nn.LeakyReLU(0.2),
                             nn.Flatten(), nn.Linear(16 * (h // 4) * (w // 4), 1))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 128), nn.LeakyReLU(0.2), nn.Linear(128, 1))


@register_generator
class AdvGAN(Generator):
    """Trained for ``epochs`` over the records on each ``fit`` (the networks persist across rounds, so
    three rounds train them for 9 epochs by default: a Fashion-MNIST run in about a quarter of an hour
    on 2 cores, bench/README.md);
    G's loss: label + ``gan_weight`` * LSGAN + ``hinge_weight`` * size hinge + ``evaluator_weight`` *
    softplus(g's membership logit). The K candidates of a record are x + t * G(x) for t evenly in
    [1, 1 + ``spread``], clipped to the data range. With ``snapshots`` S > 1 they come from the
    generators after each of the last S epochs of training, over all ``fit`` calls so far (the design
    note's reading: snapshots and scalings): with s snapshots kept (s = S once S epochs have run),
    candidate q comes from snapshot q mod s (the newest first) at the (q div s)-th of ceil(K / s)
    scalings; S = 1 is the final generator alone."""

    name = "advgan"
    description = "AdvGAN with Bai et al.'s label-keeping, evaluator-fooling losses (Xiao et al. 2018)"

    def __init__(self, *, epochs: int = 3, lr: float = 1e-3, batch_size: int = 128, gan_weight: float = 1.0,
                 hinge_weight: float = 10.0, evaluator_weight: float = 1.0, spread: float = 0.5, snapshots: int = 1):
        super().__init__()
        if (epochs < 1 or batch_size < 1 or snapshots < 1 or lr <= 0
                or min(gan_weight, hinge_weight, evaluator_weight, spread) < 0):
            raise ValueError("advgan: epochs, batch_size, snapshots >= 1, lr > 0 and weights, spread >= 0")
        self.epochs, self.lr, self.batch_size, self.spread = epochs, lr, batch_size, spread
        self.gan_weight, self.hinge_weight, self.evaluator_weight = gan_weight, hinge_weight, evaluator_weight
        self.snapshots = snapshots
        self.g_net = self.d_net = None
        self._snapshots = []  # generators after the latest epochs, the newest first

    def _delta(self, x, net=None):
        """G(x) scaled so that its largest possible size is 2 R."""
        return (net if net is not None else self.g_net)(x) * (2 * self.radius / math.sqrt(x[0].numel()))

    def fit(self, simulator, evaluator, x, y, *, seed=0, progress=False):
        device = simulator.device
        if self.g_net is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stream_seed(seed, "perturbation-generator", 0))
                self.g_net, self.d_net = perturbation_network(x.shape[1:]), discriminator_network(x.shape[1:])
            self._opt_g = torch.optim.Adam(self.g_net.parameters(), lr=self.lr)
            self._opt_d = torch.optim.Adam(self.d_net.parameters(), lr=self.lr)
        self.g_net.to(device).train()
        self.d_net.to(device).train()
        _, mean = simulator.evaluate(x, y)
        labels = mean.argmax(1)
        member = evaluator.model.to(device) if evaluator is not None and evaluator.model is not None else None
        floor, big_r = self.strength * self.radius, self.radius
        order = torch.Generator().manual_seed(stream_seed(seed, "perturbation-generator", 1))
        for _ in tqdm(range(self.epochs), desc="AdvGAN", disable=not progress, leave=False):
            for idx in torch.randperm(len(x), generator=order).split(self.batch_size):
                xb, lab, yb = x[idx].to(device).float(), labels[idx].to(device), y[idx].to(device).long()
                fake = self.clip(xb + self._delta(xb))
                d_loss = ((self.d_net(xb) - 1) ** 2).mean() + (self.d_net(fake.detach()) ** 2).mean()
                self._opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                self._opt_d.step()
                size = (fake - xb).flatten(1).norm(dim=1)
                log_probs = simulator.log_probs(fake)
                g_loss = (nn.functional.nll_loss(log_probs.mean(0), lab)
                          + self.gan_weight * ((self.d_net(fake) - 1) ** 2).mean()
                          + self.hinge_weight * ((size - big_r).clamp_min(0) + (floor - size).clamp_min(0)).mean() / big_r)
                if member is not None and self.evaluator_weight > 0:
                    g_loss = g_loss + self.evaluator_weight * nn.functional.softplus(member(log_probs.exp().mean(0), yb)).mean()
                self._opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                self._opt_g.step()
            if self.snapshots > 1:
                self._snapshots = [copy.deepcopy(self.g_net).eval()] + self._snapshots[:self.snapshots - 1]
        self.g_net.eval()
        return self

    @torch.no_grad()
    def propose(self, simulator, x, y, k, *, generator):
        if self.g_net is None:
            raise RuntimeError("advgan: call fit() before propose()")
        device = simulator.device
        nets = self._snapshots if self.snapshots > 1 else [self.g_net]
        per_net = -(-k // len(nets))
        scales = torch.linspace(1.0, 1.0 + self.spread, per_net).tolist() if per_net > 1 else [1.0]
        out = []
        for start in range(0, len(x), 1024):
            xb = x[start:start + 1024].to(device).float()
            deltas = [self._delta(xb, net.to(device)) for net in nets]
            out.append(torch.stack([self.clip(xb + scales[q // len(nets)] * deltas[q % len(nets)])
                                    for q in range(k)], 1).cpu())
        return torch.cat(out) if out else torch.empty(0, k, *x.shape[1:])
