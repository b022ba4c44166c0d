"""Training membership-inference models on (label, prediction, member) records (Xue et al., sec. 4.3, 5.2):
the defender's substitute MIM, and the adversary's MIMs (same loop, other architecture)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.substitute import SubstituteMIM
from ..validation import check_probabilities

Tensor = torch.Tensor


def _check_labels(labels: Tensor, n: int, num_classes: int, name: str) -> Tensor:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name}: expected {n} labels (one per prediction row), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError(f"{name}: labels must be integers")
    labels = labels.long()
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name}: labels must be in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    return labels


def train_substitute(member_probs: Tensor, member_labels: Tensor, nonmember_probs: Tensor, nonmember_labels: Tensor,
                     *, epochs: int = 100, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
                     device: str | torch.device = "cpu", progress: bool = True,
                     model: Optional[nn.Module] = None, desc: str = "substitute MIM",
                     loss: str = "bce") -> Tuple[nn.Module, dict]:
    """Train I' with binary cross-entropy on members (label 1) and non-members (label 0), Adam, lr 1e-3.

    ``model`` may be any module with ``logit(probs, labels)`` (e.g. `AttackMIM.mim0`); by default a
    fresh `SubstituteMIM` initialised from ``seed``. ``loss="l2"`` trains with the squared error of the
    sigmoid output instead (the paper's MIM2).

    The paper (sec. 5.2) trains on D_tar vs D_tar-bar with lr 0.001 for at most 100 epochs; it asks for
    equal numbers of members and non-members (sec. 4.3). With unequal counts, each class's loss is
    weighted by the inverse of its frequency so both count equally.

    Returns the model (in eval mode) and a history dict: per-epoch loss and final training accuracy.
    """
    c = member_probs.shape[1] if member_probs.dim() == 2 else -1
    check_probabilities(member_probs, allow_unnormalized=True, name="member predictions")
    check_probabilities(nonmember_probs, num_classes=c, allow_unnormalized=True, name="non-member predictions")
    member_labels = _check_labels(member_labels, member_probs.shape[0], c, "member labels")
    nonmember_labels = _check_labels(nonmember_labels, nonmember_probs.shape[0], c, "non-member labels")
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ValueError(f"epochs, lr and batch_size must be positive, got {epochs}, {lr}, {batch_size}")

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model or SubstituteMIM(c)
    model = model.to(device).train()
    x = torch.cat([member_probs, nonmember_probs]).float().to(device)
    y = torch.cat([member_labels, nonmember_labels]).to(device)
    member = torch.cat([torch.ones(len(member_labels)), torch.zeros(len(nonmember_labels))]).to(device)
    n_in, n_out = len(member_labels), len(nonmember_labels)
    weight = torch.where(member > 0, (n_in + n_out) / (2.0 * max(n_in, 1)), (n_in + n_out) / (2.0 * max(n_out, 1)))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if loss not in ("bce", "l2"):
        raise ValueError(f"loss must be 'bce' or 'l2', got {loss!r}")
    bce = nn.BCEWithLogitsLoss(reduction="none")

    def loss_fn(z, target):
        return bce(z, target) if loss == "bce" else (torch.sigmoid(z) - target) ** 2

    history = {"loss": []}
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(len(x), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            batch_loss = (loss_fn(model.logit(x[idx], y[idx]), member[idx]) * weight[idx]).mean()
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            total += float(batch_loss.detach()) * len(idx)
        history["loss"].append(total / len(x))
        bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
    model.eval()
    with torch.no_grad():
        pred = model(x, y) >= 0.5
        history["train_accuracy"] = float((pred == (member > 0)).float().mean())
    return model.cpu(), history
