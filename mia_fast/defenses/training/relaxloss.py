"""RelaxLoss (Chen, Yu and Fritz, "RelaxLoss: Defending Membership Inference Attacks without Losing
Utility", ICLR 2022, Algorithm 1): the training loss is held near a target value ``alpha`` instead of
driven to zero, so members' losses stay like non-members'."""
from __future__ import annotations

import torch
from torch import nn

from ...training.target import train_target
from ..base import TrainingDefense, check_positive, register_defense


@register_defense
class RelaxLoss(TrainingDefense):
    """Per batch, with L the mean cross-entropy: in even epochs minimise |L - alpha| (descent above alpha,
    ascent below); in odd epochs descend on L while L > alpha, and otherwise flatten the posterior:
    cross-entropy against soft labels that keep the predicted true-class probability (at most
    ``upper``) and spread the rest evenly over the other classes (the authors' non-image code; their
    Purchase setting alpha 0.8, upper 0.3 is the default). The optimizer is the run's Adam, not the
    authors' SGD."""

    name = "relaxloss"
    description = "RelaxLoss: keep the training loss near alpha, flatten posteriors (Chen et al. 2022)"

    def __init__(self, *, alpha: float = 0.8, upper: float = 0.3):
        check_positive(self.name, alpha=alpha, upper=upper)
        if upper > 1:
            raise ValueError(f"relaxloss: upper must be <= 1, got {upper!r}")
        self.alpha, self.upper = alpha, upper

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits, labels)
        if epoch % 2 == 0:
            return (loss - self.alpha).abs()
        if loss > self.alpha:
            return loss
        probs = torch.softmax(logits, 1)
        confidence = probs.gather(1, labels[:, None]).clamp(0, self.upper)
        onehot = nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
        soft = onehot * confidence + (1 - onehot) * (1 - confidence) / (logits.shape[1] - 1)
        return -(soft * torch.log_softmax(logits, 1)).sum(1).mean()

    def _train(self, model, x, y, *, epochs, lr, seed, device, progress, reference) -> dict:
        return train_target(model, x, y, epochs=epochs, lr=lr, seed=seed, device=device, progress=progress,
                            loss_fn=self._loss, desc="target (RelaxLoss)")
