"""The simulator and the privacy-leakage evaluator of the input-perturbation framework (Bai et al. 2021,
sec. 4.2, 5.6), and the feedback between them and the generator.

The simulator f stands in for the remote model the uploaded data will train: a few models (5 by
default, the paper's number) of the target's architecture, trained like the target on the data as it
would be uploaded. Its loss is the cross-entropy against the original label averaged over the models,
its label the argmax of their mean output. The evaluator g is a membership classifier on f's outputs
(eq. 5): trained on half of the original records (members: the upload trained f on their perturbed
copies) against half of the held-out records X_infer, and scored on the other halves.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn

from ...distributed import LocalEngine
from ...metrics import attack_metrics
from ...seeding import stream, stream_seed
from ...training.target import train_target

Tensor = torch.Tensor
REFITS = ("warm", "scratch")


def true_class(log_probs: Tensor, labels: Tensor) -> Tensor:
    """Each model's log-probability of each record's label: [M, N, C], [N] -> [M, N]."""
    return log_probs.gather(2, labels[None, :, None].expand(log_probs.shape[0], -1, 1))[..., 0]


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model``'s architecture with its parameters initialised again from ``seed``."""
    clone = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return clone


class Simulator:
    """``num_models`` copies of ``model``'s architecture trained on the upload (`train_target`: the
    target's loop, epochs and learning rate). ``refit="warm"`` (default) continues the models on a new
    upload for ``refit_epochs`` epochs, ``"scratch"`` trains new ones for ``epochs``: the paper retrains
    its simulator but does not say how; warm refits cost a fraction and follow the upload as closely.
    The models train as independent units of ``engine`` (`mia_fast.distributed`; default: this process;
    a `RayEngine` trains them as Ray tasks with the same result), model i's randomness the stream
    (seed, "simulator-model", 1000 * fit + i)."""

    def __init__(self, model: nn.Module, *, num_models: int = 5, epochs: int = 10, lr: float = 1e-3,
                 refit: str = "warm", refit_epochs: Optional[int] = None, seed: int = 0, device="cpu",
                 batch_size: int = 1024, engine=None):
        if num_models < 1 or epochs < 1:
            raise ValueError(f"simulator: need num_models >= 1 and epochs >= 1, got {num_models}, {epochs}")
        if refit not in REFITS:
            raise ValueError(f"simulator: refit must be one of {', '.join(REFITS)}, got {refit!r}")
        self.template, self.num_models, self.epochs, self.lr = model, num_models, epochs, lr
        self.refit, self.refit_epochs = refit, refit_epochs or max(1, epochs // 4)
        self.seed, self.device, self.batch_size, self.engine = seed, torch.device(device), batch_size, engine
        self.models: List[nn.Module] = []
        self.fits = 0

    def fit(self, x: Tensor, y: Tensor, *, progress: bool = False) -> "Simulator":
        """Train on the upload (x, y): new models the first time (and every time with refit="scratch")."""
        new = not self.models or self.refit == "scratch"
        if new:
            self.models = [fresh_copy(self.template, stream_seed(self.seed, "simulator-model", i))
                           for i in range(self.num_models)]
        job = _FitJob([m.cpu() for m in self.models], torch.as_tensor(x).cpu(), torch.as_tensor(y).cpu(),
                      self.epochs if new else self.refit_epochs, self.lr, self.seed, self.fits, str(self.device))
        self.models = [m.to(self.device) for m in (self.engine or LocalEngine()).map(
            _fit_model, range(self.num_models), shared=job, desc="simulator models", total=self.num_models,
            progress=progress)]
        self.fits += 1
        return self

    def __getstate__(self):  # a copy (deepcopy, a Ray task) leaves the engine, a handle on this process, behind
        return {**self.__dict__, "engine": None}

    def log_probs(self, x: Tensor) -> Tensor:
        """Differentiable log-softmax of every model on x (on the simulator's device): [M, N, C]."""
        return torch.stack([torch.log_softmax(m(x), 1) for m in self.models])

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple:
        """(per-record loss: CE vs ``y`` averaged over the models [N], mean output [N, C]) on the CPU."""
        losses, means = [], []
        for start in range(0, len(x), self.batch_size):
            lp = self.log_probs(x[start:start + self.batch_size].to(self.device).float())
            labels = y[start:start + self.batch_size].to(self.device).long()
            losses.append(-true_class(lp, labels).mean(0).cpu())
            means.append(lp.exp().mean(0).cpu())
        if not losses:
            return torch.empty(0), torch.empty(0, 0)
        return torch.cat(losses), torch.cat(means)

    def input_gradient(self, x: Tensor, y: Tensor) -> Tensor:
        """grad_x of the per-record cross-entropy averaged over the models (CPU, x's shape)."""
        grads = []
        for start in range(0, len(x), self.batch_size):
            xb = x[start:start + self.batch_size].to(self.device).float().requires_grad_(True)
            lp = self.log_probs(xb)
            labels = y[start:start + self.batch_size].to(self.device).long()
            loss = -true_class(lp, labels).mean(0).sum()
            (grad,) = torch.autograd.grad(loss, xb)
            grads.append(grad.cpu())
        return torch.cat(grads) if grads else torch.zeros_like(x)


@dataclass
class _FitJob:
    models: List[nn.Module]
    x: Tensor
    y: Tensor
    epochs: int
    lr: float
    seed: int
    fit: int
    device: str


def _fit_model(i: int, job: _FitJob) -> nn.Module:
    """Simulator model i trained on the job's upload, returned on the CPU with its parameters frozen
    (generators differentiate through the models, never into them)."""
    model = job.models[i]
    for p in model.parameters():
        p.requires_grad_(True)
    train_target(model, job.x, job.y, epochs=job.epochs, lr=job.lr, device=job.device, progress=False,
                 seed=stream_seed(job.seed, "simulator-model", 1000 * job.fit + i))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.cpu()


class MembershipClassifier(nn.Module):
    """g: membership logit from the simulator's mean output p and the label y, one hidden layer of 64
    ReLU units over [log p (from -20, scaled to [-1, 0]), one-hot y, log p_y, 1[argmax p = y]]. The
    log-probabilities show the confidence differences near 1 that separate members; the last two
    features are the confidence and correctness signals the threshold attacks use, given directly so a
    small network on a few thousand records finds them."""

    def __init__(self, num_classes: int, hidden: int = 64):
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Linear(2 * num_classes + 2, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, probs: Tensor, labels: Tensor) -> Tensor:
        labels = labels.long()
        onehot = nn.functional.one_hot(labels, self.num_classes).to(probs.dtype)
        scaled = probs.clamp_min(1e-9).log().clamp_min(-20) / 20
        true = scaled.gather(1, labels[:, None])
        correct = (probs.argmax(1) == labels).to(probs.dtype)[:, None]
        return self.net(torch.cat([scaled, onehot, true, correct], 1)).squeeze(1)


@dataclass
class Leakage:
    """What the evaluator measured on one simulator: its membership accuracy and AUC on held-out halves,
    and the simulator's train / test accuracy on the original records and X_infer."""

    accuracy: float
    auc: float
    train_accuracy: float
    test_accuracy: float

    @property
    def gap(self) -> float:
        return self.train_accuracy - self.test_accuracy

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "auc": self.auc, "train_accuracy": self.train_accuracy,
                "test_accuracy": self.test_accuracy, "gap": self.gap}


class LeakageEvaluator:
    """The privacy-leakage evaluator g (eq. 5): `MembershipClassifier` trained with Adam (``steps``
    mini-batches) on half of the members and half of X_infer, scored on the other halves. ``model`` is the last fitted g, which AdvGAN
    learns to fool."""

    def __init__(self, *, steps: int = 1500, lr: float = 1e-3, batch_size: int = 128, seed: int = 0):
        self.steps, self.lr, self.batch_size, self.seed = steps, lr, batch_size, seed
        self.model: Optional[MembershipClassifier] = None
        self.rounds = 0

    def evaluate(self, simulator: Simulator, x: Tensor, y: Tensor, x_infer: Tensor, y_infer: Tensor) -> Leakage:
        _, p_in = simulator.evaluate(x, y)
        _, p_out = simulator.evaluate(x_infer, y_infer)
        r, self.rounds = self.rounds, self.rounds + 1
        g = stream(self.seed, "perturbation-evaluator", 2 * r)
        order_in, order_out = torch.randperm(len(x), generator=g), torch.randperm(len(x_infer), generator=g)
        half_in, half_out = len(x) // 2, len(x_infer) // 2
        fit_in, test_in = order_in[:half_in], order_in[half_in:]
        fit_out, test_out = order_out[:half_out], order_out[half_out:]
        probs = torch.cat([p_in[fit_in], p_out[fit_out]])
        labels = torch.cat([y[fit_in], y_infer[fit_out]]).long()
        truth = torch.cat([torch.ones(len(fit_in)), torch.zeros(len(fit_out))])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.seed, "perturbation-evaluator", 2 * r + 1))
            model = MembershipClassifier(p_in.shape[1])
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        for _ in range(self.steps):
            idx = torch.randint(len(truth), (min(self.batch_size, len(truth)),), generator=g)
            loss = nn.functional.binary_cross_entropy_with_logits(model(probs[idx], labels[idx]), truth[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        with torch.no_grad():
            s_in = torch.sigmoid(model(p_in[test_in], y[test_in])).numpy()
            s_out = torch.sigmoid(model(p_out[test_out], y_infer[test_out])).numpy()
        m = attack_metrics(s_in, s_out)
        acc = lambda p, t: float((p.argmax(1) == t).float().mean()) if len(t) else 0.0  # noqa: E731
        return Leakage(m["accuracy"], m["auc"], acc(p_in, y), acc(p_out, y_infer))


class Feedback:
    """The feedback from the evaluator to the generator: while the simulated leakage is above target
    (membership accuracy > 0.5 + ``tau`` or train-test gap > ``gap_max``) the strength is multiplied by
    ``step`` (capped at 1: the whole eps radius); once it is within target the framework stops. The
    design note's "too low -> weaker" branch is left out: it could only act after the stop condition
    holds, and the per-record running minimum already prefers the least-perturbed candidate above the floor."""

    def __init__(self, *, tau: float = 0.02, gap_max: float = 0.05, step: float = 1.5):
        if tau < 0 or gap_max < 0 or step <= 1:
            raise ValueError(f"feedback: need tau >= 0, gap_max >= 0 and step > 1, got {tau}, {gap_max}, {step}")
        self.tau, self.gap_max, self.step = tau, gap_max, step

    def within_target(self, leakage: Leakage) -> bool:
        return leakage.accuracy <= 0.5 + self.tau and leakage.gap <= self.gap_max

    def next_strength(self, strength: float, leakage: Leakage) -> float:
        return strength if self.within_target(leakage) else min(1.0, strength * self.step)


