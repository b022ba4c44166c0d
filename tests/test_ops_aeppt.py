"""The fused AEPPT ops (dense and event-driven; CPU, and CUDA when present) against their plain-PyTorch
reference. Each case computes the reference once and checks every algorithm against it."""
import pytest
import torch

from mia_fast import ops
from mia_fast.models import SubstituteMIM
from mia_fast.ops.reference import aeppt_closed_form, aeppt_loop, aeppt_reference, folded_logit
from mia_fast.testing import aeppt_case, devices, path_ties, random_probs

OPTION_SETS = [(False, False, False), (True, False, False), (False, True, False), (False, False, True),
               (True, True, True)]


def _algorithms(device):
    """The algorithms with a kernel on ``device`` (the event-driven op has its own CUDA kernel)."""
    if device == "cuda" and not ops.has_cuda_event_kernels():
        return ["dense"]
    return list(ops.ALGORITHMS)


def _runs(device, probs, weights, steps, options):
    """{algorithm: (adv, before, after)} on ``device``, moved to the CPU."""
    args = [t.to(device) for t in (probs, *weights, steps)]
    return {a: [t.cpu() for t in ops.aeppt(*args, *options, algorithm=a)] for a in _algorithms(device)}


def _fraction_close(a, b, tol=1e-5):
    return float(((a - b).abs() <= tol).float().mean())


def assert_close_but_ties(adv, ref_adv, probs, weights, steps, options):
    """At least 99.5% of the elements within 1e-5 of the reference, ties aside: when fewer are, every
    sample that parts from the reference must have passed a float32 tie (`path_ties`), and the other
    samples must meet the 99.5%. Returns the samples that count (all, or those without a tie)."""
    if _fraction_close(adv, ref_adv) >= 0.995:
        return torch.ones(len(adv), dtype=torch.bool)
    ties = path_ties(probs, weights, steps, options)
    parted = ((adv - ref_adv).abs() > 1e-5).any(1)
    assert not bool((parted & ~ties).any()), f"samples {(parted & ~ties).nonzero().flatten().tolist()} left the path"
    assert _fraction_close(adv[~ties], ref_adv[~ties]) >= 0.995
    print(f"{int(ties.sum())} of {len(ties)} samples pass a tie; {int(parted.sum())} parted there")
    return ~ties


def _sign_ties(probs, weights, rel=1e-4):
    """Elements whose first-step sign float32 rounding may decide: the float64 input gradient is
    within rel of 0 (relative to its row), or the row has a ReLU pre-activation within rel of 0."""
    w = [t.double() for t in weights]
    p = probs.double().requires_grad_(True)
    labels = probs.argmax(1)
    folded_logit(p, labels, *w).sum().backward()
    grad = p.grad.abs()
    a1 = p.detach() @ w[0].T + w[1]
    a2 = torch.relu(a1) @ w[2].T + w[3][labels]
    near = lambda a: (a.abs() <= rel * a.abs().amax(1, keepdim=True)).any(1, keepdim=True)  # noqa: E731
    return (grad <= rel * grad.amax(1, keepdim=True)) | near(a1) | near(a2)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("classes", [2, 10, 100, 1000])
@pytest.mark.parametrize("batch", [1, 7, 4096])
def test_one_iteration_matches_reference(device, classes, batch):
    probs, weights, steps = aeppt_case(classes, batch, 1, seed=classes * 7919 + batch)
    ref_adv, ref_before, ref_after = aeppt_reference(probs, *weights, steps)
    ties = _sign_ties(probs, weights)
    for adv, before, after in _runs(device, probs, weights, steps, (False, False, False)).values():
        # Within 1e-5 everywhere, except where the gradient sign is a tie that summation order decides.
        mismatch = (adv - ref_adv).abs() > 1e-5
        assert not bool((mismatch & ~ties).any())
        assert float(mismatch.float().mean()) <= 1e-5
        torch.testing.assert_close(before, ref_before, atol=1e-5, rtol=0)
        torch.testing.assert_close(after, ref_after, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("classes,batch", [(2, 4096), (10, 4096), (100, 4096), (100, 7), (1000, 1), (1000, 7),
                                           (1000, 256)])
@pytest.mark.parametrize("options", OPTION_SETS)
def test_hundred_iterations_match_reference(device, classes, batch, options):
    probs, weights, steps = aeppt_case(classes, batch, 100, seed=classes + batch + 31 * sum(options))
    ref_adv, ref_before, ref_after = aeppt_reference(probs, *weights, steps, *options)
    for adv, before, after in _runs(device, probs, weights, steps, options).values():
        # One early sign tie (a hidden unit at exactly 0 in one summation order) can change a path.
        counted = assert_close_but_ties(adv, ref_adv, probs, weights, steps, options)
        torch.testing.assert_close(before, ref_before, atol=1e-5, rtol=0)
        assert _fraction_close(after[counted], ref_after[counted], 1e-4) >= 0.99


@pytest.mark.parametrize("device", devices())
def test_hundred_iterations_many_classes_full_batch(device):
    probs, weights, steps = aeppt_case(1000, 4096, 100, seed=77)
    ref_adv, ref_before, _ = aeppt_reference(probs, *weights, steps)
    for adv, before, _ in _runs(device, probs, weights, steps, (False, False, False)).values():
        assert _fraction_close(adv, ref_adv) >= 0.995
        torch.testing.assert_close(before, ref_before, atol=1e-5, rtol=0)


def test_without_the_extension_the_reference_runs_and_says_so_once(monkeypatch):
    monkeypatch.setattr(ops, "HAS_EXTENSION", False)
    monkeypatch.setattr(ops, "_warned", False)
    probs, weights, steps = aeppt_case(10, 20, 5, seed=8)
    with pytest.warns(RuntimeWarning, match="falling back to the plain-PyTorch reference"):
        got = ops.aeppt(probs, *weights, steps)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.aeppt(probs, *weights, steps)  # no second warning
    for g, w in zip(got, aeppt_reference(probs, *weights, steps)):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("device", devices())
def test_zero_iterations_and_empty_batch(device):
    probs, weights, steps = aeppt_case(10, 5, 0, seed=3)
    for adv, before, after in _runs(device, probs, weights, steps, (False, False, False)).values():
        torch.testing.assert_close(adv, probs)
        torch.testing.assert_close(before, after)
    probs, weights, steps = aeppt_case(10, 0, 4, seed=4)
    for adv, before, after in _runs(device, probs, weights, steps, (False, False, False)).values():
        assert adv.shape == (0, 10) and before.shape == (0,)


def test_folded_reference_is_algorithm_1_on_the_unfolded_model():
    torch.manual_seed(0)
    mim = SubstituteMIM(12).requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    probs = random_probs(300, 12, g)
    steps = torch.rand(50, 300, generator=g) * 2e-3
    literal = aeppt_loop(probs, mim.logit, steps)
    fused = ops.aeppt(probs, *mim.fold().weights(), steps)
    assert _fraction_close(literal[0], fused[0]) >= 0.995
    torch.testing.assert_close(literal[1], fused[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", OPTION_SETS)
def test_the_closed_form_gradient_is_autograds(options):
    """The aten-only loop that exported graphs unroll takes the same path as autograd, bit for bit, on a
    random substitute and on one trained on membership records."""
    from mia_fast import train_substitute
    from mia_fast.testing import membership_records

    m, ml, n, nl = membership_records(300, 4, classes=10)
    trained, _ = train_substitute(m, ml, n, nl, epochs=5, seed=0, progress=False)
    for probs, weights, steps in [aeppt_case(10, 300, 40, seed=9, eps=1e-2),
                                  (torch.cat([m, n]), trained.fold().weights(), torch.rand(40, 600) * 1e-2)]:
        expected = aeppt_reference(probs, *weights, steps, *options)
        got = aeppt_closed_form(probs, *weights, steps, *options)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
        assert not torch.equal(got[0], probs)


def test_steps_push_the_substitute_across_its_decision():
    """Eq. 3: members (Y = 1) are pushed down, non-members (Y = 0) up."""
    probs, weights, steps = aeppt_case(10, 2000, 100, seed=11, eps=5e-3)
    adv, before, after = ops.aeppt(probs, *weights, steps)
    member = before >= 0.5
    assert member.any() and (~member).any()
    assert float((after[member] < before[member]).float().mean()) > 0.95
    assert float((after[~member] > before[~member]).float().mean()) > 0.95
    # Each component moves at most the sum of that sample's steps, and stays within [0, 1].
    assert bool(((adv - probs).abs() <= steps.sum(0)[:, None] + 1e-6).all())
    assert bool(((adv >= 0) & (adv <= 1)).all())


def test_options_do_what_they_say():
    probs, weights, steps = aeppt_case(10, 2000, 100, seed=12, eps=2e-2)
    plain = ops.aeppt(probs, *weights, steps)
    assert bool((plain[0].argmax(1) != probs.argmax(1)).any()), "large steps should flip some labels"
    kept = ops.aeppt(probs, *weights, steps, True, False, False)
    assert torch.equal(kept[0].argmax(1), probs.argmax(1))
    stopped = ops.aeppt(probs, *weights, steps, False, True, False)
    l1 = lambda out: (out[0] - probs).abs().sum(1).mean()  # noqa: E731
    assert l1(stopped) < l1(plain)
    renorm = ops.aeppt(probs, *weights, steps, False, False, True)
    torch.testing.assert_close(renorm[0].sum(1), torch.ones(2000), atol=1e-5, rtol=0)


def test_op_schema_and_fake_kernel():
    if not ops.HAS_EXTENSION:
        pytest.skip("extension not built")
    probs, weights, steps = aeppt_case(10, 9, 3, seed=13)
    torch.library.opcheck(torch.ops.mia_fast.aeppt.default, (probs, *weights, steps, False, False, False),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_arguments_name_the_argument():
    if not ops.HAS_EXTENSION:
        pytest.skip("extension not built")
    probs, weights, steps = aeppt_case(10, 9, 3, seed=14)
    with pytest.raises(RuntimeError, match="steps must be \\[T, B=9\\]"):
        torch.ops.mia_fast.aeppt(probs, *weights, steps[:, :4].contiguous(), False, False, False)
    with pytest.raises(RuntimeError, match="probs must be float32"):
        torch.ops.mia_fast.aeppt(probs.double(), *weights, steps, False, False, False)
    with pytest.raises(RuntimeError, match="w_pred must be \\[H1, C=10\\]"):
        torch.ops.mia_fast.aeppt(probs, weights[0][:, :5].contiguous(), *weights[1:], steps, False, False, False)
    with pytest.raises(RuntimeError, match="precision must be 'fp32' or '3xtf32', got 'fp16'"):
        torch.ops.mia_fast.aeppt(probs, *weights, steps, False, False, False, "fp16")
    with pytest.raises(RuntimeError, match="precision='3xtf32' runs on CUDA tensor cores, but probs is on cpu"):
        torch.ops.mia_fast.aeppt(probs, *weights, steps, False, False, False, "3xtf32")


def test_precision_is_checked_before_anything_runs():
    probs, weights, steps = aeppt_case(10, 9, 3, seed=15)
    with pytest.raises(ValueError, match="precision must be one of \\('fp32', '3xtf32'\\), got 'tf32'"):
        ops.aeppt(probs, *weights, steps, precision="tf32")
    with pytest.raises(ValueError, match="precision='3xtf32' runs on CUDA tensor cores, but probs is on cpu"):
        ops.aeppt(probs, *weights, steps, precision="3xtf32")
    assert torch.equal(ops.aeppt(probs, *weights, steps, precision="fp32")[0], ops.aeppt(probs, *weights, steps)[0])
