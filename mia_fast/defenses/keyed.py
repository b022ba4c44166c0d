"""Keyed per-query randomness for randomized output defenses.

A randomized defense that draws fresh numbers for every answer can be averaged away: the attacker asks
the same question many times and averages the answers. With a key (``keyed=True`` on AEPPT, MemGuard,
HAMP's output step), the draws for one answer come from a keyed hash of the query instead, so the same
query always gets the same answer and repeating it teaches nothing. The key is made when the defense is
fitted (from its fit seed), saved with it, and stays with the server: an attacker who copies the
defense (the same name and hyperparameters) gets a key of its own.

The query is the confidence vector the defense receives, hashed bit for bit (BLAKE2b keyed with the
32-byte key, one 64-bit seed per row), then expanded into as many uniforms as the defense needs by
SplitMix64 on (seed, draw index). "Same query, same answer" therefore holds as long as the target
answers a query bit-identically, which eager CPU inference does for the same batch composition; a
server that batches differently can pass ``query_seeds`` computed from the input record.

>>> key = bytes(range(32))
>>> p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
>>> u = keyed_uniform(p, key, 3)
>>> u.shape, bool(((u >= 0) & (u < 1)).all())
(torch.Size([3, 2]), True)
>>> bool(torch.equal(keyed_uniform(p[1:], key, 3), u[:, 1:]))  # a row's draws do not depend on its batch
True
>>> bool(torch.equal(keyed_uniform(p, bytes(32), 3), u))  # another key, other draws
False
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
import torch

Tensor = torch.Tensor

KEY_BYTES = 32
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def new_key(seed: int) -> bytes:
    """A key derived from the named stream (seed, "query-key"): reproducible runs, a fresh key per seed."""
    from ..seeding import stream

    return bytes(torch.randint(0, 256, (KEY_BYTES,), generator=stream(seed, "query-key"), dtype=torch.uint8).tolist())


def check_key(key) -> bytes:
    """``key`` as bytes of length KEY_BYTES (ValueError otherwise)."""
    if isinstance(key, Tensor):
        key = bytes(key.to(torch.uint8).tolist())
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ValueError(f"query key: expected {KEY_BYTES} bytes, got {type(key).__name__} "
                         f"of length {len(key) if hasattr(key, '__len__') else '?'}")
    return bytes(key)


def query_seeds(probs: Tensor, key: bytes) -> np.ndarray:
    """One 64-bit seed per row of ``probs`` [B, C]: BLAKE2b of the row's float32 bytes, keyed with ``key``."""
    rows = np.ascontiguousarray(probs.detach().to(torch.float32).cpu().numpy())
    digests = b"".join(hashlib.blake2b(row.tobytes(), key=key, digest_size=8).digest() for row in rows)
    return np.frombuffer(digests, dtype=np.uint64).copy() if len(rows) else np.zeros(0, dtype=np.uint64)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform_from_seeds(seeds: np.ndarray, count: int) -> Tensor:
    """[count, B] float32 uniforms in [0, 1): draw t of row i is SplitMix64(seeds[i] + t * golden), top 24 bits."""
    t = np.arange(count, dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        z = _splitmix64(seeds[None, :].astype(np.uint64) + t * _GOLDEN)
    return torch.from_numpy((z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24))


def keyed_uniform(probs: Tensor, key: bytes, count: int, *, seeds: Optional[np.ndarray] = None) -> Tensor:
    """[count, B] uniforms for the answers to ``probs``, a function of (key, query, draw index) only, on
    ``probs``' device. ``seeds`` replaces the hash of the rows (`query_seeds`) when the caller has its own."""
    seeds = query_seeds(probs, check_key(key)) if seeds is None else np.asarray(seeds, dtype=np.uint64)
    if len(seeds) != probs.shape[0]:
        raise ValueError(f"query seeds: {len(seeds)} for {probs.shape[0]} rows")
    return uniform_from_seeds(seeds, count).to(probs.device)
