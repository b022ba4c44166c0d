"""Adversarial regularization (Nasr, Shokri and Houmansadr, "Machine Learning with Membership Privacy
using Adversarial Regularization", CCS 2018, Algorithm 1): a min-max game between the classifier and an
inference model that tells its outputs on training records from those on reference records."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ...models import AttackMIM
from ...seeding import stream, stream_seed
from ...training.target import accuracy, batches, check_training
from ..base import TrainingDefense, check_positive, register_defense


@register_defense
class AdversarialRegularization(TrainingDefense):
    """Before every classifier step, ``attack_steps`` steps of the inference model h (Nasr's three-branch
    network on (output, label), `AttackMIM.mim0`, Adam at ``attack_lr``) on a batch of training records
    (members) and one of reference records (non-members); then one classifier step on
    cross-entropy + ``privacy_weight`` * mean log h(f(x), y) over the training batch, so the classifier
    learns outputs the inference model cannot tell apart. The first ``warmup_epochs`` epochs train the
    classifier alone (Nasr et al. start from a briefly trained model). On Location-30 (the README's run)
    ``privacy_weight`` 3 left 40% train / 25% test accuracy, 1 (the default) 91% / 50.5%."""

    name = "advreg"
    description = "adversarial regularization: min-max against an inference model (Nasr et al. 2018)"
    uses = frozenset({"reference"})

    def __init__(self, *, privacy_weight: float = 1.0, attack_steps: int = 1, attack_lr: float = 1e-3,
                 warmup_epochs: int = 2, batch_size: int = 128):
        check_positive(self.name, privacy_weight=privacy_weight, attack_steps=attack_steps, attack_lr=attack_lr,
                       batch_size=batch_size)
        if warmup_epochs < 0:
            raise ValueError(f"advreg: warmup_epochs must be >= 0, got {warmup_epochs!r}")
        self.privacy_weight, self.attack_steps, self.attack_lr = privacy_weight, attack_steps, attack_lr
        self.warmup_epochs, self.batch_size = warmup_epochs, batch_size

    def _train(self, model, x, y, *, epochs, lr, seed, device, progress, reference) -> dict:
        check_training(epochs, lr, self.batch_size)
        x_ref, y_ref = torch.as_tensor(reference[0]).float(), torch.as_tensor(reference[1]).long()
        model.to(device).train()
        num_classes = int(model(x[:1].to(device)).shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(seed, "advreg-inference"))
            inference = AttackMIM.mim0(num_classes).to(device)
        order, draws = torch.Generator().manual_seed(seed), stream(seed, "advreg-inference", 1)
        opt_f = torch.optim.Adam(model.parameters(), lr=lr)
        opt_h = torch.optim.Adam(inference.parameters(), lr=self.attack_lr)
        history = {"loss": [], "inference_gain": [], "inference_accuracy": [], "inference_steps": 0,
                   "adversarial_classifier_steps": 0}
        bs = self.batch_size
        for epoch in tqdm(range(epochs), desc="target (adversarial regularization)", disable=not progress,
                          leave=False):
            adversarial = epoch >= self.warmup_epochs
            totals = {"loss": 0.0, "gain": 0.0, "correct": 0.0, "seen": 0}
            for idx in batches(len(x), bs, order):
                if adversarial:
                    for _ in range(self.attack_steps):
                        mi = torch.randint(len(x), (bs,), generator=draws)
                        ri = torch.randint(len(x_ref), (bs,), generator=draws)
                        with torch.no_grad():
                            probs = torch.softmax(model(torch.cat([x[mi], x_ref[ri]]).to(device)), 1)
                        is_member = torch.cat([torch.ones(bs), torch.zeros(bs)]).to(device)
                        logit = inference.logit(probs, torch.cat([y[mi], y_ref[ri]]).to(device))
                        loss_h = nn.functional.binary_cross_entropy_with_logits(logit, is_member)
                        opt_h.zero_grad(set_to_none=True)
                        loss_h.backward()
                        opt_h.step()
                        totals["correct"] += float(((logit > 0).float() == is_member).sum())
                        totals["seen"] += 2 * bs
                        history["inference_steps"] += 1
                out = model(x[idx].to(device))
                labels = y[idx].to(device)
                loss = nn.functional.cross_entropy(out, labels)
                if adversarial:
                    gain = nn.functional.logsigmoid(inference.logit(torch.softmax(out, 1), labels)).mean()
                    loss = loss + self.privacy_weight * gain
                    totals["gain"] += float(gain.detach()) * len(idx)
                    history["adversarial_classifier_steps"] += 1
                opt_f.zero_grad(set_to_none=True)
                loss.backward()
                opt_f.step()
                totals["loss"] += float(loss.detach()) * len(idx)
            history["loss"].append(totals["loss"] / len(x))
            history["inference_gain"].append(totals["gain"] / len(x))
            history["inference_accuracy"].append(totals["correct"] / max(totals["seen"], 1))
        history["epochs_run"] = epochs
        history["train_accuracy"] = accuracy(model, x, y, device=device)
        model.eval()
        return history
