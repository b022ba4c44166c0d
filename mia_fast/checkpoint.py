"""Checkpoints of the substitute MIM: a state dict plus metadata, loaded with weights_only=True."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Iterable, Tuple

import torch

from .errors import CheckpointError
from .io import atomic_path
from .models.substitute import SubstituteMIM
from .version import __version__

FORMAT = "mia-fast/substitute-mim/v1"


def data_hash(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 over the shapes and bytes of the given tensors (records what a model was trained on)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_substitute(path, model: SubstituteMIM, meta: dict) -> None:
    """Save ``model`` with metadata (classes, architecture, version, training-data hash, ...) atomically."""
    payload = {"format": FORMAT, "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "architecture": model.architecture(), "meta": meta,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_substitute(path) -> Tuple[SubstituteMIM, dict]:
    """Load a substitute MIM checkpoint; never unpickles arbitrary objects. Returns (model, payload)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path}: not a loadable weights-only checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a mia-fast substitute-MIM checkpoint (format {FORMAT} expected)")
    try:
        model = SubstituteMIM(**payload["architecture"])
        model.load_state_dict(payload["state_dict"])
    except Exception as err:
        raise CheckpointError(f"checkpoint {path}: weights do not match the architecture ({err})") from None
    model.eval()
    return model, payload
