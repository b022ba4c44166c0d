"""The event-driven AEPPT op: parity with the reference on trained substitutes, its event counts
against the plain math, long runs (periodic refreshes), and opcheck over sample inputs for every op."""
import pytest
import torch

from mia_fast import ops
from mia_fast.ops.reference import aeppt_event_counts, aeppt_reference
from mia_fast.testing import aeppt_case, devices, membership_records
from mia_fast.training import train_substitute

OPTION_SETS = [(False, False, False), (True, False, False), (False, True, False), (False, False, True),
               (True, True, True)]

needs_extension = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="extension not built")


def _fraction_close(a, b, tol=1e-5):
    return float(((a - b).abs() <= tol).float().mean())


@pytest.fixture(scope="module", params=[(10, 5e-3), (30, 2.5e-4)], ids=["C10-eps5e-3", "C30-eps2.5e-4"])
def trained(request):
    """A substitute MIM trained on synthetic member / non-member outputs, 2,000 of those outputs, an eps."""
    classes, eps = request.param
    m, ml, n, nl = membership_records(1000, seed=classes, classes=classes)
    mim, _ = train_substitute(m, ml, n, nl, epochs=15, seed=classes, progress=False)
    return mim.fold().weights(), torch.cat([m, n]), eps


@pytest.mark.parametrize("options", OPTION_SETS)
def test_trained_substitute_matches_reference_and_counts_events(trained, options):
    weights, probs, eps = trained
    steps = torch.rand(100, probs.shape[0], generator=torch.Generator().manual_seed(7)) * eps
    adv, before, after, events = ops.aeppt_with_events(probs, *weights, steps, *options)
    ref_adv, ref_before, ref_after = aeppt_reference(probs, *weights, steps, *options)
    assert _fraction_close(adv, ref_adv) >= 0.995
    torch.testing.assert_close(before, ref_before, atol=1e-5, rtol=0)
    assert _fraction_close(after, ref_after, 1e-4) >= 0.99
    counts = aeppt_event_counts(probs, *weights, steps, *options)
    assert float((events[:, :2] == counts).all(1).float().mean()) >= 0.99
    # A trained substitute moves: the loop is not trivially quiet, and it is not all events either.
    assert 0 < float(counts[:, 0].float().mean()) < 99


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("classes,eps", [(2, 1e-3), (10, 2e-2), (100, 9e-4), (100, 2e-5), (1000, 1e-3)])
def test_event_counts_match_the_plain_math(device, classes, eps):
    if device == "cuda" and not ops.has_cuda_event_kernels():
        pytest.skip("no CUDA kernel for the event-driven op")
    probs, weights, steps = aeppt_case(classes, 300 if classes < 1000 else 40, 100, seed=classes, eps=eps)
    events = ops.aeppt_with_events(*[t.to(device) for t in (probs, *weights, steps)])[3].cpu()
    counts = aeppt_event_counts(probs, *weights, steps)
    assert float((events[:, :2] == counts).all(1).float().mean()) >= 0.99
    assert events.dtype == torch.int32 and bool((events >= 0).all())


@needs_extension
@pytest.mark.parametrize("options", [(False, False, False), (False, False, True)])  # the others stop samples early
def test_event_heavy_batches_hand_over_to_the_dense_loop_and_stay_reproducible(options):
    # At eps 1e-2 nearly every iteration changes a mask, so blocks hand over to the dense loop after
    # their probe. Same path as the reference, same event counts, and the same bits whatever the
    # thread count (the handover is decided per block, by its own samples).
    probs, weights, steps = aeppt_case(100, 400, 100, seed=12, eps=1e-2)
    before_threads = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(ops.aeppt_with_events(probs, *weights, steps, *options))
    finally:
        torch.set_num_threads(before_threads)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    adv, _, after, events = runs[0]
    ref_adv, _, ref_after = aeppt_reference(probs, *weights, steps, *options)
    assert _fraction_close(adv, ref_adv) >= 0.995
    # The dense loop's last pass (on p_T, to count its events) also gives the final scores.
    assert _fraction_close(after, ref_after, 1e-4) >= 0.99
    counts = aeppt_event_counts(probs, *weights, steps, *options)
    assert float((events[:, :2] == counts).all(1).float().mean()) >= 0.99
    assert float(counts[:, 0].float().mean()) > 0.75 * 99  # the case is event-heavy, as meant


def test_long_runs_refresh_and_stay_on_the_reference_path():
    """Beyond 128 iterations a periodic exact refresh runs; drift must not move the path either way."""
    probs, weights, steps = aeppt_case(30, 300, 400, seed=5, eps=2.5e-4)
    adv, before, after, events = ops.aeppt_with_events(probs, *weights, steps)
    ref_adv, _, ref_after = aeppt_reference(probs, *weights, steps)
    assert _fraction_close(adv, ref_adv) >= 0.995
    assert _fraction_close(after, ref_after, 1e-4) >= 0.99
    if ops.HAS_EXTENSION:
        assert bool((events[:, 2] >= 3).all()), "400 iterations cross three refresh points"


@needs_extension
def test_dense_and_events_agree_and_events_is_the_cpu_default():
    probs, weights, steps = aeppt_case(30, 500, 100, seed=9, eps=2.5e-4)
    default = ops.aeppt(probs, *weights, steps)
    events = ops.aeppt(probs, *weights, steps, algorithm="events")
    dense = ops.aeppt(probs, *weights, steps, algorithm="dense")
    assert ops.default_algorithm("cpu") == "events"
    for a, b in zip(default, events):
        assert torch.equal(a, b)
    for a, b in zip(dense, torch.ops.mia_fast.aeppt(probs, *weights, steps, False, False, False)):
        assert torch.equal(a, b)
    assert _fraction_close(events[0], dense[0]) >= 0.995


def test_algorithm_is_checked():
    probs, weights, steps = aeppt_case(10, 9, 3, seed=15)
    with pytest.raises(ValueError, match="algorithm must be one of \\('events', 'dense'\\), got 'sparse'"):
        ops.aeppt(probs, *weights, steps, algorithm="sparse")
    with pytest.raises(ValueError, match="algorithm='events' runs in fp32 only"):
        ops.check_algorithm("events", "3xtf32")


def _aeppt_samples():
    for classes, batch, iters, options in [(2, 1, 1, (False, False, False)), (10, 9, 3, (True, False, True)),
                                           (30, 17, 20, (False, True, False)), (100, 6, 5, (True, True, True)),
                                           (10, 0, 4, (False, False, False))]:
        probs, weights, steps = aeppt_case(classes, batch, iters, seed=classes + batch)
        yield (probs, *weights, steps, *options)


def _select_samples():
    g = torch.Generator().manual_seed(0)
    for n, k, d, squared, with_valid in [(5, 3, 8, False, False), (7, 4, 33, True, True), (1, 1, 1, False, True),
                                         (0, 2, 4, True, False)]:
        originals = torch.rand(n, d, generator=g)
        candidates = (originals[:, None, :] + 0.1 * torch.randn(n, k, d, generator=g)).contiguous()
        losses = torch.rand(n, k, generator=g)
        valid = torch.rand(n, k, generator=g) > 0.3 if with_valid else None
        yield (originals, candidates, losses, 0.5 * d ** 0.5, valid, squared)


@needs_extension
@pytest.mark.parametrize("op,samples", [("aeppt", lambda: ((*a, "fp32") for a in _aeppt_samples())),
                                        ("aeppt_events", _aeppt_samples),
                                        ("select_within_distance", _select_samples)])
def test_opcheck_every_op(op, samples):
    """Schema, fake (meta) kernel, autograd registration and AOT dispatch, as extension-cpp checks its ops."""
    for args in samples():
        torch.library.opcheck(getattr(torch.ops.mia_fast, op).default, args)
