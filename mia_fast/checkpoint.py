"""Checkpoints: a state dict, the architecture and metadata, loaded with weights_only=True (never
unpickles arbitrary objects). One format for every model kind mia-fast saves."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Iterable, Tuple

import torch

from .errors import CheckpointError
from .io import atomic_path
from .models.attack import AttackMIM
from .models.substitute import SubstituteMIM
from .models.target import TARGETS
from .version import __version__

FORMAT = "mia-fast/checkpoint/v1"
KINDS = {"substitute-mim": "substitute-MIM", "attack-mim": "attack-MIM", "target": "target-model",
         "output-defense": "output-defense"}


def _build(kind: str, architecture: dict) -> torch.nn.Module:
    if kind == "substitute-mim":
        return SubstituteMIM(**architecture)
    if kind == "attack-mim":
        return AttackMIM(**architecture)
    arch = dict(architecture)
    return TARGETS[arch.pop("name")](**arch)


def data_hash(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 over the shapes and bytes of the given tensors (records what a model was trained on)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_payload(path, kind: str, architecture: dict, meta: dict, state: dict) -> None:
    """Write a checkpoint of ``kind``: architecture (plain values), metadata and tensors, atomically."""
    payload = {"format": FORMAT, "kind": kind, "version": __version__,
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "architecture": architecture,
               "meta": meta, "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_payload(path, kind: str) -> dict:
    """Read a checkpoint of ``kind`` with weights_only=True (nothing but tensors and plain values)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path}: not a loadable weights-only checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path}: not a mia-fast {KINDS[kind]} checkpoint")
    return payload


def save_model(path, kind: str, model: torch.nn.Module, architecture: dict, meta: dict) -> None:
    """Save ``model`` of ``kind`` (see KINDS) with its architecture and metadata, atomically."""
    save_payload(path, kind, architecture, meta, {k: v.detach().cpu() for k, v in model.state_dict().items()})


def load_model(path, kind: str) -> Tuple[torch.nn.Module, dict]:
    """Load a checkpoint of ``kind``; returns (model in eval mode, payload)."""
    payload = load_payload(path, kind)
    try:
        model = _build(kind, payload["architecture"])
        model.load_state_dict(payload["state_dict"])
    except Exception as err:
        raise CheckpointError(f"checkpoint {path}: weights do not match the architecture ({err})") from None
    return model.eval(), payload


def save_substitute(path, model: SubstituteMIM, meta: dict) -> None:
    save_model(path, "substitute-mim", model, model.architecture(), meta)


def load_substitute(path) -> Tuple[SubstituteMIM, dict]:
    """Load a substitute MIM checkpoint. Returns (model, payload)."""
    return load_model(path, "substitute-mim")
