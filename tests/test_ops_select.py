"""Distance-constrained selection (Bai et al., Algorithm 1) against its reference."""
import pytest
import torch

from mia_fast import ops
from mia_fast.ops.reference import select_within_distance_reference
from mia_fast.testing import devices


def _case(n, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    originals = torch.rand(n, d, generator=g)
    scale = torch.rand(n, k, 1, generator=g) * 0.2
    candidates = originals[:, None, :] + torch.randn(n, k, d, generator=g) * scale
    losses = torch.rand(n, k, generator=g)
    valid = torch.rand(n, k, generator=g) > 0.2
    return originals, candidates, losses, valid


def _away_from_threshold(distances, eps, squared):
    threshold = eps
    return ((distances - threshold).abs() > 1e-4 * threshold).all(1)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (37, 16, 784), (200, 5, 3072), (64, 16, 7)])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_reference(device, n, k, d, squared, with_mask):
    originals, candidates, losses, valid = _case(n, k, d, seed=n * k + d)
    ref_idx, ref_dist = select_within_distance_reference(originals, candidates, losses, 0.0, valid, squared)
    # A threshold midway between two distances, so about half the candidates qualify and none sits on it.
    ordered = ref_dist.flatten().sort().values
    eps = float(ordered[0] * 2) if ordered.numel() == 1 else float(ordered[ordered.numel() // 2 - 1: ordered.numel() // 2 + 1].mean())
    mask = valid if with_mask else None
    ref_idx, ref_dist = select_within_distance_reference(originals, candidates, losses, eps, mask, squared)
    args = [t.to(device) if t is not None else None for t in (originals, candidates, losses)]
    idx, dist = ops.select_within_distance(*args, eps, mask.to(device) if mask is not None else None, squared)
    torch.testing.assert_close(dist.cpu(), ref_dist, rtol=1e-5, atol=1e-6)
    clear = _away_from_threshold(ref_dist, eps, squared)
    assert torch.equal(idx.cpu()[clear], ref_idx[clear])
    assert clear.float().mean() > 0.9


@pytest.mark.parametrize("device", devices())
def test_ties_none_and_nan(device):
    originals = torch.zeros(3, 2)
    candidates = torch.tensor([[[0.1, 0.0], [0.0, 0.1], [5.0, 0.0]],
                               [[9.0, 0.0], [0.0, 9.0], [5.0, 5.0]],
                               [[0.1, 0.0], [0.1, 0.0], [0.1, 0.0]]])
    losses = torch.tensor([[0.5, 0.5, 0.1], [0.1, 0.2, 0.3], [float("nan"), 0.7, 0.7]])
    idx, dist = ops.select_within_distance(originals.to(device), candidates.to(device), losses.to(device), 1.0)
    assert idx.cpu().tolist() == [0, -1, 1]  # tie -> lowest index; none within eps; NaN never selected
    torch.testing.assert_close(dist.cpu()[0], torch.tensor([0.1, 0.1, 5.0]))
    ref_idx, _ = select_within_distance_reference(originals, candidates, losses, 1.0)
    assert ref_idx.tolist() == [0, -1, 1]


def test_bad_shapes_name_the_argument():
    if not ops.HAS_EXTENSION:
        pytest.skip("extension not built")
    o, c, l, v = _case(4, 3, 5, seed=1)
    with pytest.raises(RuntimeError, match="losses must be \\[4, 3\\]"):
        torch.ops.mia_fast.select_within_distance(o, c, l[:, :2].contiguous(), 1.0, None, False)
    with pytest.raises(RuntimeError, match="valid must be bool"):
        torch.ops.mia_fast.select_within_distance(o, c, l, 1.0, v.float(), False)
