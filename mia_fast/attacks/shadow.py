"""Shadow models (Shokri et al., "Membership Inference Attacks against Machine Learning Models", S&P 2017,
sec. V.B): the attacker trains copies of the target's architecture on its own data, so it knows exactly
which records each copy was trained on, and learns from their outputs what membership looks like."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Tuple

import numpy as np
import torch
from torch import nn

from ..distributed import LocalEngine
from ..seeding import numpy_stream, stream_seed
from ..training.target import predict_proba, train_model

Tensor = torch.Tensor


@dataclass
class ShadowModels:
    """Trained shadow models and, for each, which records of the attacker's pool it was trained on.

    Attributes:
        models: K models with the target's architecture.
        in_mask: bool [K, N]; in_mask[k, n] says pool record n was in shadow k's training set.
    """

    models: List[nn.Module]
    in_mask: Tensor

    def predict(self, x, *, device="cpu") -> Tensor:
        """Softmax outputs of every shadow model on ``x``: [K, n, C]."""
        return torch.stack([predict_proba(m, x, device=device) for m in self.models])


def train_shadow_models(make_model: Callable[[], nn.Module], x, y, *, num_shadows: int = 6, train_size: int,
                        epochs: int = 100, lr: float = 1e-4, seed: int = 0, device="cpu",
                        progress: bool = True, defense=None, engine=None) -> ShadowModels:
    """Train ``num_shadows`` models, each on ``train_size`` records drawn at random from the pool (x, y).

    Each shadow is trained like the target (`train_target`: cross-entropy, Adam), so its members are
    as overfit as the target's; with a training ``defense`` (the attacker knows the target's), each shadow
    is trained with it, holding up to ``train_size`` of the pool records it does not train on as its
    reference data where the defense uses some. Deterministic from ``seed`` (named streams: which records train each
    shadow, and shadow k's initialisation and batch order). The shadows are independent work units of
    ``engine`` (default: this process; `mia_fast.distributed.RayEngine` trains them as Ray tasks, with the
    same result).
    """
    n = len(y)
    if num_shadows < 1 or not 0 < train_size < n:
        raise ValueError(f"need num_shadows >= 1 and 0 < train_size < {n} (pool size); "
                         f"got num_shadows={num_shadows}, train_size={train_size}")
    rng = numpy_stream(seed, "shadow-subsets")
    chosen = [torch.from_numpy(rng.choice(n, size=train_size, replace=False)) for _ in range(num_shadows)]
    in_mask = torch.zeros(num_shadows, n, dtype=torch.bool)
    for k, rows in enumerate(chosen):
        in_mask[k, rows] = True
    shared = _ShadowJob(make_model, torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y)), chosen,
                        in_mask, train_size, epochs, lr, seed, str(device), defense)
    models = list((engine or LocalEngine()).map(_train_shadow, range(num_shadows), shared=shared,
                                                desc="shadow models", total=num_shadows, progress=progress))
    return ShadowModels(models, in_mask)


@dataclass
class _ShadowJob:
    make_model: Callable[[], nn.Module]
    x: Tensor
    y: Tensor
    chosen: List[Tensor]
    in_mask: Tensor
    train_size: int
    epochs: int
    lr: float
    seed: int
    device: str
    defense: object


def _train_shadow(k: int, job: _ShadowJob) -> nn.Module:
    """Shadow k: trained on ``job.chosen[k]`` (in that order), its randomness the stream (seed, "shadow-model", k)."""
    chosen = job.chosen[k]
    model_seed = stream_seed(job.seed, "shadow-model", k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed)
        model = job.make_model()
    reference = None
    if job.defense is not None and "reference" in job.defense.uses:
        rest = torch.from_numpy(numpy_stream(job.seed, "shadow-reference", k).permutation(
            np.flatnonzero(~job.in_mask[k].numpy()))[:job.train_size])
        reference = (job.x[rest], job.y[rest])
    train_model(model, job.x[chosen], job.y[chosen], defense=job.defense, reference=reference, epochs=job.epochs,
                lr=job.lr, seed=model_seed, device=job.device, progress=False)
    return model.cpu()


def shadow_records(probs: Tensor, labels: Tensor, in_mask: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flatten shadow outputs [K, N, C] into (member probs, labels, non-member probs, labels): every
    (shadow, record) pair is one training example, a member when the record trained that shadow.

    >>> probs = torch.tensor([[[0.75, 0.25], [0.5, 0.5]], [[1.0, 0.0], [0.25, 0.75]]])
    >>> m, ml, n, nl = shadow_records(probs, torch.tensor([0, 1]), torch.tensor([[True, False], [False, True]]))
    >>> m.tolist(), ml.tolist(), n.tolist(), nl.tolist()
    ([[0.75, 0.25], [0.25, 0.75]], [0, 1], [[0.5, 0.5], [1.0, 0.0]], [1, 0])
    """
    k = probs.shape[0]
    flat_labels = labels.repeat(k)
    flat_probs, flat_in = probs.reshape(-1, probs.shape[-1]), in_mask.reshape(-1)
    return flat_probs[flat_in], flat_labels[flat_in], flat_probs[~flat_in], flat_labels[~flat_in]
