"""place_in_rank_order (the rank-preserving output defenses' op) against its reference: fresh random
inputs with ties, a trained model's outputs, bad inputs, and opcheck over sample inputs."""
import pytest
import torch
from torch import nn

from mia_fast import ops
from mia_fast.ops.reference import place_in_rank_order_reference
from mia_fast.testing import devices, random_probs

needs_extension = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="extension not built")


def _case(rows, classes, seed, *, ties=False):
    g = torch.Generator().manual_seed(seed)
    probs = random_probs(rows, classes, g)
    if ties:  # coarse values: many equal entries in a row, the top one included
        probs = (probs * 4).round() / 4
    values = random_probs(rows, classes, g).sort(1, descending=True).values
    return probs.contiguous(), values.contiguous()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("rows,classes", [(1, 1), (7, 2), (300, 10), (64, 100), (9, 128), (9, 129), (5, 1000),
                                          (0, 30)])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_reference_exactly(device, rows, classes, ties):
    probs, values = _case(rows, classes, seed=rows + classes, ties=ties)
    got = ops.place_in_rank_order(probs.to(device), values.to(device)).cpu()
    assert torch.equal(got, place_in_rank_order_reference(probs, values))


def test_on_a_trained_models_outputs_label_and_ranking_stay():
    torch.manual_seed(0)
    x, y = torch.randn(600, 12), torch.randint(0, 8, (600,))
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):  # overfit: confident outputs on the training records
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    probs = torch.softmax(model(x), 1).detach().contiguous()
    values = torch.tensor([0.6, 0.2, 0.1, 0.05, 0.03, 0.01, 0.007, 0.003]).expand(600, -1).contiguous()
    out = ops.place_in_rank_order(probs, values)
    assert torch.equal(out, place_in_rank_order_reference(probs, values))
    assert torch.equal(out.argmax(1), probs.argmax(1))
    assert torch.equal(out.argsort(1, descending=True), probs.argsort(1, descending=True))
    assert torch.allclose(out.sum(1), values.sum(1))


@pytest.mark.parametrize("classes", [3, 300])  # both CPU paths: counting, and the sort above 128 classes
def test_nan_rows_stay_inside_the_row(classes):
    probs = torch.rand(2, classes, generator=torch.Generator().manual_seed(0))
    probs[0, 0], probs[1, 1:] = float("nan"), float("nan")
    values = torch.arange(classes, 0, -1).float().expand(2, -1).contiguous()
    out = ops.place_in_rank_order(probs, values)
    assert bool(torch.isin(out, values[0]).all())


@needs_extension
def test_bad_inputs_name_the_argument():
    probs, values = _case(4, 5, seed=1)
    with pytest.raises(RuntimeError, match="values must have the shape of probs"):
        torch.ops.mia_fast.place_in_rank_order(probs, values[:, :4].contiguous())
    with pytest.raises(RuntimeError, match="probs must be float32"):
        torch.ops.mia_fast.place_in_rank_order(probs.double(), values)
    with pytest.raises(RuntimeError, match="values must be contiguous"):
        torch.ops.mia_fast.place_in_rank_order(probs, values.t().contiguous().t())


@needs_extension
def test_opcheck():
    """Schema, fake kernel, autograd registration and AOT dispatch over sample inputs."""
    for rows, classes, ties in [(5, 3, False), (9, 10, True), (1, 1, False), (0, 4, False)]:
        torch.library.opcheck(torch.ops.mia_fast.place_in_rank_order.default, _case(rows, classes, rows, ties=ties))
