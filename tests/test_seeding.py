"""Named random streams: no two (purpose, index) pairs share a stream."""
import itertools

import pytest
import torch

from mia_fast.seeding import PURPOSES, numpy_stream, stream, stream_seed


def test_no_two_purposes_or_indices_share_a_stream():
    seeds = {}
    for seed, purpose, index in itertools.product(range(3), PURPOSES, range(64)):
        value = stream_seed(seed, purpose, index)
        assert value not in seeds, f"{(seed, purpose, index)} collides with {seeds[value]}"
        seeds[value] = (seed, purpose, index)
    # the collision the old seed + N offsets had: averaging's known queries (seed+37..44) and scored
    # queries (seed+41..48) drew identical steps for four queries
    known = [torch.rand(5, generator=stream(0, "averaging-known", q)) for q in range(16)]
    scored = [torch.rand(5, generator=stream(0, "averaging-scored", q)) for q in range(16)]
    assert not any(torch.equal(a, b) for a in known for b in scored)


def test_streams_are_reproducible_and_checked():
    assert torch.equal(torch.rand(3, generator=stream(7, "target")), torch.rand(3, generator=stream(7, "target")))
    assert numpy_stream(7, "target").integers(1 << 30) == numpy_stream(7, "target").integers(1 << 30)
    with pytest.raises(ValueError, match="unknown random-stream purpose 'targte'"):
        stream(0, "targte")
    with pytest.raises(ValueError, match="index must be >= 0"):
        stream_seed(0, "target", -1)
