"""Training target classifiers (Xue et al., sec. 5.2: cross-entropy, Adam, lr 1e-4, 100 epochs)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


def _tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))


def train_target(model: nn.Module, x, y, *, epochs: int = 100, lr: float = 1e-4, batch_size: int = 128, seed: int = 0,
                 device: str | torch.device = "cpu", progress: bool = True, x_val=None, y_val=None) -> dict:
    """Train ``model`` in place with cross-entropy and Adam; returns per-epoch loss and accuracies."""
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ValueError(f"epochs, lr and batch_size must be positive, got {epochs}, {lr}, {batch_size}")
    x, y = _tensor(x).float(), _tensor(y).long()
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"loss": [], "train_accuracy": [], "val_accuracy": []}
    bar = tqdm(range(epochs), desc="target model", disable=not progress, leave=False)
    for _ in bar:
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history["loss"].append(total / len(x))
        if x_val is not None:
            history["val_accuracy"].append(accuracy(model, x_val, y_val, device=device))
        bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
    history["train_accuracy"].append(accuracy(model, x, y, device=device))
    model.eval()
    return history


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
