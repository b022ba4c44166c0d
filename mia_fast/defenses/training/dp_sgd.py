"""DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) through Opacus
(Yousefpour et al. 2021): per-sample gradients clipped to ``max_grad_norm``, Gaussian noise calibrated so
that training spends at most (``epsilon``, ``delta``), Poisson sampling of the batches. Nothing of DP-SGD
is written here: Opacus' `PrivacyEngine` does all of it, and its accountant reports the epsilon spent."""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ...seeding import stream, stream_seed
from ...training.target import accuracy, check_training
from ..base import TrainingDefense, check_positive, register_defense

GRAD_SAMPLE_MODES = ("ghost", "hooks")


@register_defense
class DPSGD(TrainingDefense):
    """Train with Opacus' `PrivacyEngine.make_private_with_epsilon` (Adam, the noise multiplier chosen by
    the accountant for ``epsilon``, ``delta`` and the number of steps). ``epochs`` replaces the run's when
    set; ``lr`` (1e-3) replaces the run's 1e-4 and the ``lr`` given to ``train`` (noisy, clipped steps need
    larger ones; None: take the given one). Batches are Poisson-sampled; with ``poisson_sampling=False``
    (shuffled batches) the accountant's epsilon, which assumes Poisson sampling, is only indicative and the
    history says so (``epsilon_holds`` False). ``grad_sample_mode`` "ghost" clips without forming per-sample gradients (Opacus' fast gradient
    clipping, the same clipping, about 15x faster here on an MLP); "hooks" forms them. The history holds
    ``epsilon`` (spent, from the accountant), ``delta`` and ``noise_multiplier``."""

    name = "dp-sgd"
    description = "DP-SGD through Opacus: per-sample clipping, Gaussian noise, target (epsilon, delta)"

    def __init__(self, *, epsilon: float = 8.0, delta: float = 1e-5, max_grad_norm: float = 1.0,
                 epochs: Optional[int] = None, lr: Optional[float] = 1e-3, batch_size: int = 128,
                 poisson_sampling: bool = True, grad_sample_mode: str = "ghost", accountant: str = "prv"):
        check_positive(self.name, epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, batch_size=batch_size)
        if epochs is not None and epochs < 1 or lr is not None and not lr > 0 or not delta < 1:
            raise ValueError(f"dp-sgd: need epochs >= 1, lr > 0 and delta < 1; got {epochs!r}, {lr!r}, {delta!r}")
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"dp-sgd: grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, "
                             f"got {grad_sample_mode!r}")
        if accountant not in ("prv", "rdp", "gdp"):
            raise ValueError(f"dp-sgd: accountant must be prv, rdp or gdp, got {accountant!r}")
        self.epsilon, self.delta, self.max_grad_norm = epsilon, delta, max_grad_norm
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.poisson_sampling, self.grad_sample_mode, self.accountant = poisson_sampling, grad_sample_mode, accountant

    def _train(self, model, x, y, *, epochs, lr, seed, device, progress, reference) -> dict:
        from opacus import PrivacyEngine

        epochs, lr = self.epochs or epochs, self.lr or lr
        check_training(epochs, lr, self.batch_size)
        model.to(device).train()
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=self.batch_size,
                                             shuffle=not self.poisson_sampling, generator=stream(seed, "dp-sgd", 0))
        engine = PrivacyEngine(accountant=self.accountant)
        criterion = nn.CrossEntropyLoss()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns about secure RNG and alpha ranges on every call
            private = engine.make_private_with_epsilon(
                module=model, optimizer=torch.optim.Adam(model.parameters(), lr=lr), data_loader=loader,
                criterion=criterion, target_epsilon=self.epsilon, target_delta=self.delta, epochs=epochs,
                max_grad_norm=self.max_grad_norm, poisson_sampling=self.poisson_sampling,
                grad_sample_mode=self.grad_sample_mode,
                noise_generator=torch.Generator(device=device).manual_seed(stream_seed(seed, "dp-sgd", 1)))
        wrapped, optimizer, private_loader = private[0], private[1], private[-1]
        criterion = private[2] if self.grad_sample_mode == "ghost" else criterion
        history = {"loss": []}
        try:
            for _ in tqdm(range(epochs), desc="target (DP-SGD)", disable=not progress, leave=False):
                total, seen = 0.0, 0
                for xb, yb in private_loader:
                    if len(yb) == 0:  # Poisson sampling can draw an empty batch
                        continue
                    optimizer.zero_grad(set_to_none=True)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        loss = criterion(wrapped(xb.to(device)), yb.to(device))
                        loss.backward()
                    optimizer.step()
                    total, seen = total + float(loss.detach()) * len(yb), seen + len(yb)
                history["loss"].append(total / max(seen, 1))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                spent = float(engine.get_epsilon(self.delta))
        finally:
            wrapped.cleanup()  # hooks and the per-sample state Opacus leaves on the parameters
        model.eval()
        return {**history, "epochs_run": epochs, "lr": lr, "epsilon": spent, "target_epsilon": self.epsilon,
                "delta": self.delta, "epsilon_holds": self.poisson_sampling,
                "noise_multiplier": float(optimizer.noise_multiplier),
                "train_accuracy": accuracy(model, x, y, device=device)}
