"""Training target classifiers (Xue et al., sec. 5.2: cross-entropy, Adam, lr 1e-4, 100 epochs).

`train_target` is the one mini-batch loop every target, shadow model and training-time defense uses;
defenses change its loss (``loss_fn``), its optimizer's weight decay, or stop it (``after_epoch``).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..seeding import stream_seed

Tensor = torch.Tensor
#: loss_fn(logits, labels, epoch) -> the scalar to minimise on one batch
LossFn = Callable[[Tensor, Tensor, int], Tensor]


def _tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))


def cross_entropy(logits: Tensor, labels: Tensor, epoch: int) -> Tensor:
    return nn.functional.cross_entropy(logits, labels)


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Index tensors of one shuffled epoch over n records."""
    order = torch.randperm(n, generator=generator)
    return [order[start:start + batch_size] for start in range(0, n, batch_size)]


def check_training(epochs: int, lr: float, batch_size: int) -> None:
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ValueError(f"epochs, lr and batch_size must be positive, got {epochs}, {lr}, {batch_size}")


def train_target(model: nn.Module, x, y, *, epochs: int = 100, lr: float = 1e-4, batch_size: int = 128, seed: int = 0,
                 device: str | torch.device = "cpu", progress: bool = True, weight_decay: float = 0.0,
                 loss_fn: LossFn = cross_entropy, after_epoch: Optional[Callable[[int, nn.Module], bool]] = None,
                 desc: str = "target model") -> dict:
    """Train ``model`` in place with Adam (``weight_decay``: its L2 penalty) on ``loss_fn`` (default
    cross-entropy); ``after_epoch(epoch, model)`` returning True stops training. Returns per-epoch loss,
    the epochs run and the final train accuracy. Randomness inside the model (dropout masks) comes from
    a stream of ``seed``, not from whatever ran before in the process."""
    check_training(epochs, lr, batch_size)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(stream_seed(seed, "training-randomness"))
        return _train_target(model, _tensor(x).float(), _tensor(y).long(), epochs=epochs, lr=lr,
                             batch_size=batch_size, seed=seed, device=device, progress=progress,
                             weight_decay=weight_decay, loss_fn=loss_fn, after_epoch=after_epoch, desc=desc)


def _train_target(model, x, y, *, epochs, lr, batch_size, seed, device, progress, weight_decay, loss_fn, after_epoch,
                  desc) -> dict:
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = {"loss": []}
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        total = 0.0
        for idx in batches(len(x), batch_size, gen):
            loss = loss_fn(model(x[idx].to(device)), y[idx].to(device), epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history["loss"].append(total / len(x))
        bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
        if after_epoch is not None and after_epoch(epoch, model):
            break
    history["epochs_run"] = len(history["loss"])
    history["train_accuracy"] = accuracy(model, x, y, device=device)
    model.eval()
    return history


def train_model(model: nn.Module, x, y, *, defense=None, reference: Optional[tuple] = None, epochs: int, lr: float,
                seed: int, device: str | torch.device = "cpu", progress: bool = False, engine=None) -> dict:
    """Train ``model`` as a target is trained: `train_target`, or ``defense.train`` (a `TrainingDefense`,
    given ``reference`` records outside the training set and ``engine`` when it uses them)."""
    if defense is None:
        return train_target(model, x, y, epochs=epochs, lr=lr, seed=seed, device=device, progress=progress)
    return defense.train(model, x, y, epochs=epochs, lr=lr, seed=seed, device=device, progress=progress,
                         reference=reference if "reference" in defense.uses else None, engine=engine)


@torch.no_grad()
def predict_proba(model: nn.Module, x, *, batch_size: int = 1024, device: str | torch.device = "cpu") -> torch.Tensor:
    """Softmax outputs of ``model`` on ``x``, float32 on the CPU."""
    model.to(device).eval()
    x = _tensor(x).float()
    outs = [torch.softmax(model(x[i:i + batch_size].to(device)).float(), 1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, x, y, *, device: str | torch.device = "cpu") -> float:
    y = _tensor(y).long()
    return float((predict_proba(model, x, device=device).argmax(1) == y).float().mean()) if len(y) else 0.0
