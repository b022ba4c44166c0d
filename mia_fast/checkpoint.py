"""Checkpoints: safetensors files (tensors, and the architecture, metadata and plain values as JSON in
the header), one format for every model kind mia-fast saves; nothing is unpickled. Checkpoints an earlier
mia-fast wrote as .pt still load, with weights_only=True."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterable, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError
from .io import atomic_path
from .models.attack import AttackMIM
from .models.substitute import SubstituteMIM
from .models.target import TARGETS
from .version import __version__

FORMAT = "mia-fast/checkpoint/v1"
SUFFIX = ".safetensors"
KINDS = {"substitute-mim": "substitute-MIM", "attack-mim": "attack-MIM", "target": "target-model",
         "output-defense": "output-defense"}
_TENSOR = "$tensor"  # marks where a tensor of the state sits in the JSON skeleton


def checkpoint_file(folder, stem: str) -> Path:
    """``folder/stem.safetensors``, or the ``stem.pt`` an earlier mia-fast wrote when only that exists."""
    new, old = Path(folder) / f"{stem}{SUFFIX}", Path(folder) / f"{stem}.pt"
    return old if old.is_file() and not new.is_file() else new


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


def _split(state, tensors: dict, prefix: str = "state"):
    """The JSON skeleton of a (nested) state with its tensors moved into ``tensors`` by path."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {_TENSOR: prefix}
    if isinstance(state, dict):
        return {str(k): _split(v, tensors, f"{prefix}/{k}") for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_split(v, tensors, f"{prefix}/{i}") for i, v in enumerate(state)]
    return state


def _join(skeleton, tensors: dict):
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            return tensors[skeleton[_TENSOR]]
        return {k: _join(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_join(v, tensors) for v in skeleton]
    return skeleton


def save_payload(path, kind: str, architecture: dict, meta: dict, state: dict) -> None:
    """Write a checkpoint of ``kind`` atomically, as safetensors: the tensors of ``state``, and the
    architecture, metadata and the rest of the state as JSON in the header's metadata."""
    tensors: dict = {}
    header = {"format": FORMAT, "kind": kind, "version": __version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "architecture": architecture,
              "meta": meta, "state_dict": _split(state, tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"mia-fast": json.dumps(header)})


def _read(path: Path) -> dict:
    """The payload of a safetensors checkpoint, or of a .pt one an earlier mia-fast wrote (read with
    weights_only=True: tensors and plain values, never arbitrary objects)."""
    with open(path, "rb") as f:
        zipped = f.read(2) == b"PK"  # torch.save's format is a zip archive; safetensors starts with its length
    if zipped:
        return torch.load(path, map_location="cpu", weights_only=True)
    with safe_open(str(path), framework="pt") as f:
        header = json.loads((f.metadata() or {})["mia-fast"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {**header, "state_dict": _join(header.get("state_dict"), tensors)}


def load_payload(path, kind: str) -> dict:
    """Read a checkpoint of ``kind`` (safetensors, or an earlier weights-only .pt)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = _read(path)
    except Exception as err:  # safetensors, json and torch raise many types for foreign or corrupt files
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path}: not a mia-fast checkpoint ({first})") from None
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
