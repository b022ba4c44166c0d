"""The CUDA kernel file run on the CPU (tests/cuda_emulator): the same checks as test_ops_cuda.py
(equal to the CPU op and the reference, every output written), for every launch plan, under three
thread schedules, on machines without a GPU. Every launch is memory-checked (bounds of each buffer and
of the launch's shared memory, writes to inputs, alignment of vector loads): a bad access fails it."""
import pytest
import torch

from mia_fast import ops
from mia_fast.ops.reference import aeppt_event_counts, select_within_distance_reference
from mia_fast.testing import aeppt_case, membership_records, random_folded_weights, random_probs
from mia_fast.training import train_substitute

import cuda_emulator

pytestmark = pytest.mark.skipif(cuda_emulator.compiler() is None, reason="needs a C++ compiler")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return cuda_emulator.build(tmp_path_factory.mktemp("cuda_emulator"))


def _assert_matches_cpu(got, want):
    for out in got[:3]:
        assert bool(torch.isfinite(out).all()), "an output element was not written"
    assert float(((got[0] - want[0]).abs() <= 1e-5).float().mean()) >= 0.995
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[2], want[2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("classes,batch,iters", [(2, 33, 100), (10, 100, 60), (100, 70, 20), (1000, 45, 4),
                                                 (10, 20, 0)])
@pytest.mark.parametrize("options", [(False, False, False), (True, True, True)])
def test_emulated_kernel_equals_cpu(emulator, classes, batch, iters, options):
    probs, weights, steps = aeppt_case(classes, batch, iters, seed=classes + batch)
    _assert_matches_cpu(emulator.aeppt(probs, *weights, steps, *options), ops.aeppt(probs, *weights, steps, *options))


@pytest.mark.parametrize("tile", [8, 16, 32])
@pytest.mark.parametrize("weights_in_smem", [True, False])
def test_every_launch_plan_gives_the_same_result(emulator, tile, weights_in_smem):
    probs, weights, steps = aeppt_case(100, 37, 12, seed=3)
    options = (True, False, True)
    got = emulator.aeppt(probs, *weights, steps, *options, tile=tile, weights_in_smem=weights_in_smem)
    assert got[3] == (tile, weights_in_smem)
    _assert_matches_cpu(got, ops.aeppt(probs, *weights, steps, *options))
    # Per sample, every plan sums in the same order: bitwise equal to the default plan.
    default = emulator.aeppt(probs, *weights, steps, *options)
    for a, b in zip(got[:3], default[:3]):
        assert torch.equal(a, b)


# 3xTF32 on the tensor cores (mma.sync emulated lane by lane: slow, so small cases): fp32 accuracy, so the
# same bands as the fp32 kernel against the CPU op.
@pytest.mark.parametrize("classes,batch,iters,options", [(10, 40, 6, (False, False, False)),
                                                         (100, 24, 3, (True, True, True)),
                                                         (1000, 9, 1, (False, False, True))])
def test_emulated_tensor_core_kernel_matches_cpu(emulator, classes, batch, iters, options):
    probs, weights, steps = aeppt_case(classes, batch, iters, seed=classes + batch + 1)
    got = emulator.aeppt(probs, *weights, steps, *options, tensor_cores=True)
    _assert_matches_cpu(got, ops.aeppt(probs, *weights, steps, *options))


@pytest.mark.parametrize("tile", [16, 32])
@pytest.mark.parametrize("weights_in_smem", [True, False])
def test_tensor_core_launch_plans(emulator, tile, weights_in_smem):
    probs, weights, steps = aeppt_case(100, 37, 1, seed=8)
    got = emulator.aeppt(probs, *weights, steps, tensor_cores=True, tile=tile, weights_in_smem=weights_in_smem)
    assert got[3] == (tile, weights_in_smem)
    _assert_matches_cpu(got, ops.aeppt(probs, *weights, steps))


@pytest.mark.parametrize("classes,hidden,connection_hidden", [(7, 37, 5), (100, 512, 128)])
@pytest.mark.parametrize("tensor_cores", [False, True])
def test_hidden_sizes_other_than_the_papers(emulator, classes, hidden, connection_hidden, tensor_cores):
    # Sizes that are not multiples of the warp, the MMA tile or the 4-sample group, and ones too big for shared memory.
    g = torch.Generator().manual_seed(hidden)
    weights = random_folded_weights(classes, g, hidden=hidden, connection_hidden=connection_hidden)
    probs, steps = random_probs(21, classes, g), torch.rand(5, 21, generator=g) * 1e-3
    got = emulator.aeppt(probs, *weights, steps, True, False, True, tensor_cores=tensor_cores)
    _assert_matches_cpu(got, ops.aeppt(probs, *weights, steps, True, False, True))


@pytest.mark.parametrize("order", ["reverse", "shuffled"])
def test_result_does_not_depend_on_the_thread_schedule(emulator, order):
    probs, weights, steps = aeppt_case(10, 40, 15, seed=4)
    forward = emulator.aeppt(probs, *weights, steps, True, True, False, tile=16)
    emulator.schedule(order, seed=11)
    try:
        other = emulator.aeppt(probs, *weights, steps, True, True, False, tile=16)
    finally:
        emulator.schedule("forward")
    for a, b in zip(forward[:3], other[:3]):
        assert torch.equal(a, b)


# The event-driven kernel: a dense forward pass, the backward pass only for the samples whose masks changed,
# compacted into the first columns. Bit for bit the dense kernel, and its counts are the reference's.
EVENT_CASES = [(2, 33, 60, 1e-3), (10, 40, 40, 2e-2), (100, 37, 20, 9e-4), (100, 37, 20, 2e-5), (1000, 9, 6, 1e-3)]


def _assert_events_kernel_is_dense_with_counts(emulator, probs, weights, steps, options, **plan):
    dense = emulator.aeppt(probs, *weights, steps, *options, **plan)
    events = emulator.aeppt(probs, *weights, steps, *options, events=True, **plan)
    for a, b in zip(dense[:3], events[:3]):
        assert torch.equal(a, b)
    counts = events[4]
    assert torch.equal(counts[:, 2], torch.zeros_like(counts[:, 2])), "no incremental state, no refreshes"
    assert torch.equal(counts[:, :2], ops.aeppt_with_events(probs, *weights, steps, *options)[3][:, :2])
    reference = aeppt_event_counts(probs, *weights, steps, *options)
    assert float((counts[:, :2] == reference).all(1).float().mean()) >= 0.99
    return events


@pytest.mark.parametrize("classes,batch,iters,eps", EVENT_CASES)
@pytest.mark.parametrize("options", [(False, False, False), (True, True, True)])
def test_emulated_event_kernel_is_the_dense_kernel_and_counts_events(emulator, classes, batch, iters, eps, options):
    probs, weights, steps = aeppt_case(classes, batch, iters, seed=classes + batch, eps=eps)
    events = _assert_events_kernel_is_dense_with_counts(emulator, probs, weights, steps, options)
    _assert_matches_cpu(events, ops.aeppt(probs, *weights, steps, *options))
    if iters >= 20 and options == (False, False, False):
        # Some samples skip the backward pass in some iterations, and some run it: both paths are taken.
        assert 0 < float(events[4][:, 0].float().mean()) < iters


def test_emulated_event_kernel_on_a_trained_substitute(emulator):
    m, ml, n, nl = membership_records(150, seed=30, classes=30)
    mim, _ = train_substitute(m, ml, n, nl, epochs=15, seed=30, progress=False)
    probs = torch.cat([m, n])[::5].contiguous()
    steps = torch.rand(40, len(probs), generator=torch.Generator().manual_seed(7)) * 2.5e-4
    events = _assert_events_kernel_is_dense_with_counts(emulator, probs, mim.fold().weights(), steps,
                                                        (False, False, False))
    assert 0 < float(events[4][:, 0].float().mean()) < 20, "a trained substitute changes masks now and then"


@pytest.mark.parametrize("tile", [8, 16, 32])
@pytest.mark.parametrize("weights_in_smem", [True, False])
def test_every_event_launch_plan_gives_the_same_result(emulator, tile, weights_in_smem):
    probs, weights, steps = aeppt_case(30, 37, 12, seed=3, eps=5e-3)  # C = 30: every plan fits an H100
    got = _assert_events_kernel_is_dense_with_counts(emulator, probs, weights, steps, (True, False, True), tile=tile,
                                                     weights_in_smem=weights_in_smem)
    assert got[3] == (tile, weights_in_smem)


def test_event_kernel_does_not_depend_on_the_thread_schedule(emulator):
    probs, weights, steps = aeppt_case(10, 40, 15, seed=4, eps=1e-2)
    forward = emulator.aeppt(probs, *weights, steps, True, True, False, tile=16, events=True)
    emulator.schedule("shuffled", seed=5)
    try:
        other = emulator.aeppt(probs, *weights, steps, True, True, False, tile=16, events=True)
    finally:
        emulator.schedule("forward")
    for a, b in zip(forward[:3] + forward[4:], other[:3] + other[4:]):
        assert torch.equal(a, b)


def test_launch_plan_for_an_h100(emulator):
    assert emulator.plan(4096, 100) == (32, True)  # 128 blocks of 32 samples, weights in shared memory
    assert emulator.plan(40, 100) == (8, True)  # small batch: small tiles, more SMs busy
    assert emulator.plan(8, 1000) == (8, False)  # W_p of 1000 classes does not fit beside the tile state
    assert emulator.plan(4096, 100, tensor_cores=True) == (32, True)  # wider weight rows still fit
    # The event kernel keeps its signs and masks beside the tile state: at C = 100, 32 samples and the
    # weights no longer fit together (2.3 KB over), and weights in shared memory come first.
    assert emulator.plan(4096, 100, events=True) == (16, True)
    assert emulator.plan(4096, 30, events=True) == (32, True)


def test_inputs_off_16_byte_alignment(emulator):
    # A contiguous view with a storage offset of one float: same results, no misaligned access.
    probs, weights, steps = aeppt_case(10, 20, 5, seed=9)
    aligned = emulator.aeppt(probs, *weights, steps, True, False, True)
    shifted = emulator.aeppt(probs, *weights, steps, True, False, True, misalign=4)
    for a, b in zip(aligned[:3], shifted[:3]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dim,k,misalign", [(784, 16, 0), (30, 3, 0), (784, 16, 4)])
@pytest.mark.parametrize("squared", [False, True])
def test_emulated_selection_equals_reference(emulator, dim, k, misalign, squared):
    g = torch.Generator().manual_seed(dim + k)
    originals = torch.rand(50, dim, generator=g)
    scale = 0.03 + 0.04 * torch.rand(50, k, 1, generator=g)  # distances from 0.03 to 0.07 * sqrt(dim)
    candidates = originals[:, None] + torch.randn(50, k, dim, generator=g) * scale
    losses = torch.rand(50, k, generator=g)
    losses[0, 1] = float("nan")
    valid = torch.rand(50, k, generator=g) > 0.2
    eps = 1.0 if dim == 784 else 0.2
    eps = eps * eps if squared else eps
    index, distances = emulator.select_within_distance(originals, candidates, losses, eps, valid, squared,
                                                       misalign=misalign)
    want_index, want_distances = select_within_distance_reference(originals, candidates, losses, eps, valid=valid,
                                                                  squared=squared)
    assert bool((index == -1).any()) and bool((index >= 0).any()), "the case should have both outcomes"
    assert torch.equal(index, want_index)
    torch.testing.assert_close(distances, want_distances, atol=1e-4, rtol=1e-5)


def test_emulated_selection_with_more_candidates_than_default_shared_memory(emulator):
    # K = 13000 needs 52,000 bytes of shared memory: past the 48 KB a kernel gets without opting in.
    g = torch.Generator().manual_seed(2)
    originals = torch.rand(2, 4, generator=g)
    candidates = originals[:, None] + 0.1 * torch.randn(2, 13000, 4, generator=g)
    losses = torch.rand(2, 13000, generator=g)
    index, distances = emulator.select_within_distance(originals, candidates, losses, 0.1)
    want_index, want_distances = select_within_distance_reference(originals, candidates, losses, 0.1)
    assert torch.equal(index, want_index)
    torch.testing.assert_close(distances, want_distances, atol=1e-5, rtol=1e-5)


def test_emulator_catches_missing_barriers_and_divergent_warp_operations(emulator):
    threads = torch.arange(64, dtype=torch.int32)
    assert torch.equal(emulator.selftest("neighbour"), (threads + 1) % 64)
    emulator.schedule("reverse")
    try:
        assert torch.equal(emulator.selftest("neighbour"), (threads + 1) % 64)
        # Without the barrier the reverse schedule reads neighbours that ran already; thread 63 reads
        # thread 0's slot, which is not written yet (0xff poison).
        racy = emulator.selftest("neighbour_no_barrier")
        assert not torch.equal(racy, (threads + 1) % 64)
    finally:
        emulator.schedule("forward")
    sums = emulator.selftest("warp_sum")
    assert torch.equal(sums, torch.tensor([sum(range(0, 32))] * 32 + [sum(range(32, 64))] * 32, dtype=torch.int32))
    with pytest.raises(cuda_emulator.EmulatorError, match="deadlock"):
        emulator.selftest("divergent_barrier")
    with pytest.raises(cuda_emulator.EmulatorError, match="deadlock"):
        emulator.selftest("warp_sum_lane_missing")
    lanes = threads % 32
    assert torch.equal(emulator.selftest("ballot"), 11 + 100 * (lanes % 3 == 0).int())


@pytest.mark.parametrize("bug,message", [
    ("write_past_end", "out-of-bounds write of 'out' at byte 256 \\(it has 256 bytes\\)"),
    ("read_past_end", "out-of-bounds read of 'in' at byte 256"),
    ("write_to_input", "write of byte 0 of read-only input 'in'"),
    ("misaligned_float4", "__ldg: misaligned address .* 16-byte load"),
    ("shared_write_past_end", "shared-memory write at byte 256 \\(the launch asked for 256 bytes"),
    ("shared_read_past_end", "shared-memory read at byte 4352 \\(the launch asked for 256 bytes"),
])
def test_emulator_catches_memory_errors(emulator, bug, message):
    assert torch.equal(emulator.selftest("copy"), torch.arange(64, dtype=torch.int32))
    with pytest.raises(cuda_emulator.EmulatorError, match=message):
        emulator.selftest(bug)
    # The emulator recovers: the next launch runs normally.
    assert torch.equal(emulator.selftest("copy"), torch.arange(64, dtype=torch.int32))


@pytest.mark.parametrize("rows,classes,misalign", [(1, 1, 0), (33, 10, 4), (300, 100, 0), (3, 1000, 4), (0, 7, 0)])
def test_emulated_rank_order_kernel_equals_cpu(emulator, rows, classes, misalign):
    g = torch.Generator().manual_seed(rows + classes)
    probs = ((random_probs(rows, classes, g) * 8).round() / 8).contiguous()  # ties in most rows
    values = random_probs(rows, classes, g).sort(1, descending=True).values.contiguous()
    got = emulator.place_in_rank_order(probs, values, misalign=misalign)
    assert torch.equal(got, ops.place_in_rank_order(probs, values))
