"""CUDA-only checks: CPU = CUDA for the same steps, every output element written, CUDA-graph capture
and torch.compile(fullgraph=True). Skipped without a GPU and the CUDA kernels."""
import pytest
import torch

from mia_fast import ops
from mia_fast.testing import aeppt_case

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and ops.has_cuda_kernels()),
                                reason="needs a GPU and the CUDA kernels")


def _poison_allocator(nbytes=64 << 20):
    """Fill the caching allocator's free blocks with NaN so unwritten outputs show up."""
    junk = torch.full((nbytes // 4,), float("nan"), device="cuda")
    del junk


def _assert_close_to_cpu(gpu, cpu):
    """Every output written; >= 99.5% of the defended elements within 1e-5 of the CPU op (a sign tie
    early on a path changes the rest of it), the scores before within 1e-5; a failure says by how much."""
    for got in gpu:
        assert bool(torch.isfinite(got).all()), "an output element was not written"
    agree = float(((gpu[0].cpu() - cpu[0]).abs() <= 1e-5).float().mean())
    assert agree >= 0.995, f"{agree:.4%} of the elements within 1e-5 of the CPU op"
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("classes,batch", [(2, 33), (10, 100), (100, 4097), (1000, 45)])
@pytest.mark.parametrize("options", [(False, False, False), (True, True, True)])
def test_cuda_equals_cpu_and_writes_every_element(classes, batch, options):
    probs, weights, steps = aeppt_case(classes, batch, 100, seed=classes + batch)
    cpu = ops.aeppt(probs, *weights, steps, *options)
    _poison_allocator()
    gpu = ops.aeppt(*[t.cuda() for t in (probs, *weights, steps)], *options)
    torch.cuda.synchronize()
    _assert_close_to_cpu(gpu, cpu)


@pytest.mark.parametrize("classes,batch,eps", [(2, 33, 1e-3), (10, 100, 2e-2), (100, 4097, 9e-4), (1000, 45, 1e-3)])
@pytest.mark.parametrize("options", [(False, False, False), (True, True, True)])
def test_cuda_event_kernel_is_the_dense_kernel_with_counts(classes, batch, eps, options):
    # The event kernel's forward pass is dense and its backward pass the dense kernel's per sample, so
    # its outputs are the dense kernel's bit for bit, and its counts are the CPU op's.
    probs, weights, steps = aeppt_case(classes, batch, 100, seed=classes + batch, eps=eps)
    args = [t.cuda() for t in (probs, *weights, steps)]
    dense = ops.aeppt(*args, *options, algorithm="dense")
    _poison_allocator()
    events = ops.aeppt_with_events(*args, *options)
    torch.cuda.synchronize()
    for a, b in zip(dense, events[:3]):
        assert torch.equal(a, b)
    cpu_counts = ops.aeppt_with_events(probs, *weights, steps, *options)[3]
    assert float((events[3].cpu()[:, :2] == cpu_counts[:, :2]).all(1).float().mean()) >= 0.99
    assert not bool(events[3][:, 2].any()), "no incremental state, no refreshes"


def test_opcheck_cuda_ops():
    g = torch.Generator().manual_seed(0)
    for classes, batch, iters, options in [(10, 9, 3, (True, False, True)), (100, 6, 5, (True, True, True)),
                                           (10, 0, 4, (False, False, False))]:
        probs, weights, steps = aeppt_case(classes, batch, iters, seed=classes + batch)
        args = (*[t.cuda() for t in (probs, *weights, steps)], *options)
        torch.library.opcheck(torch.ops.mia_fast.aeppt.default, (*args, "fp32"))
        torch.library.opcheck(torch.ops.mia_fast.aeppt_events.default, args)
    originals = torch.rand(5, 8, generator=g)
    candidates = originals[:, None] + 0.1 * torch.randn(5, 3, 8, generator=g)
    torch.library.opcheck(torch.ops.mia_fast.select_within_distance.default,
                          (originals.cuda(), candidates.cuda(), torch.rand(5, 3, generator=g).cuda(), 1.0, None, False))


@pytest.mark.parametrize("classes,batch", [(10, 100), (100, 4097), (1000, 45)])
def test_tensor_cores_match_fp32_cpu(classes, batch):
    probs, weights, steps = aeppt_case(classes, batch, 100, seed=classes + batch + 1)
    options = (True, False, True)
    cpu = ops.aeppt(probs, *weights, steps, *options)
    _poison_allocator()
    gpu = ops.aeppt(*[t.cuda() for t in (probs, *weights, steps)], *options, precision="3xtf32")
    torch.cuda.synchronize()
    _assert_close_to_cpu(gpu, cpu)


def test_selection_writes_every_element():
    g = torch.Generator().manual_seed(0)
    o = torch.rand(300, 784, generator=g)
    c = o[:, None] + torch.randn(300, 16, 784, generator=g) * 0.05
    losses = torch.rand(300, 16, generator=g)
    _poison_allocator()
    idx, dist = ops.select_within_distance(o.cuda(), c.cuda(), losses.cuda(), 1.4)
    assert bool(torch.isfinite(dist).all()) and bool((idx >= -1).all())


def _one_float_into_storage(t):
    """A contiguous CUDA copy of `t` starting 4 bytes past a 16-byte boundary, as a view with a storage offset."""
    flat = torch.empty(t.numel() + 1, device="cuda")
    flat[1:] = t.reshape(-1).cuda()
    return flat[1:].view(t.shape)


def test_selection_of_views_off_16_byte_alignment():
    # float4 loads on such views would fault (misaligned address): the kernel must take its scalar loop.
    from mia_fast.ops.reference import select_within_distance_reference
    g = torch.Generator().manual_seed(1)
    o = torch.rand(64, 784, generator=g)
    c = o[:, None] + torch.randn(64, 8, 784, generator=g) * 0.05
    losses = torch.rand(64, 8, generator=g)
    o_view, c_view = _one_float_into_storage(o), _one_float_into_storage(c)
    assert o_view.is_contiguous() and o_view.data_ptr() % 16 == 4
    idx, dist = ops.select_within_distance(o_view, c_view, losses.cuda(), 1.4)
    want_idx, want_dist = select_within_distance_reference(o, c, losses, 1.4)
    assert torch.equal(idx.cpu(), want_idx)
    torch.testing.assert_close(dist.cpu(), want_dist, atol=1e-4, rtol=1e-5)


def test_selection_with_many_candidates():
    from mia_fast.ops.reference import select_within_distance_reference
    g = torch.Generator().manual_seed(2)
    o = torch.rand(3, 4, generator=g)
    c = o[:, None] + 0.1 * torch.randn(3, 13000, 4, generator=g)  # 52,000 bytes of shared memory: opt-in
    losses = torch.rand(3, 13000, generator=g)
    idx, dist = ops.select_within_distance(o.cuda(), c.cuda(), losses.cuda(), 0.1)
    want_idx, want_dist = select_within_distance_reference(o, c, losses, 0.1)
    assert torch.equal(idx.cpu(), want_idx)
    torch.testing.assert_close(dist.cpu(), want_dist, atol=1e-5, rtol=1e-5)
    too_many = torch.zeros(1, 300_000, 4, device="cuda")  # 1.2 MB of shared memory: more than any GPU has
    with pytest.raises(RuntimeError, match="K=300000 candidates per original need 1200000 bytes"):
        ops.select_within_distance(too_many[:, 0], too_many, torch.zeros(1, 300_000, device="cuda"), 0.1)


def test_cuda_graph_capture_and_replay():
    probs, weights, steps = aeppt_case(100, 512, 20, seed=5)
    args = [t.cuda() for t in (probs, *weights, steps)]
    expected = ops.aeppt(*args)
    static_out = None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.aeppt(*args)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.aeppt(*args)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out[0], expected[0])


def test_torch_compile_fullgraph_on_cuda():
    probs, weights, steps = aeppt_case(10, 64, 10, seed=6)
    args = [t.cuda() for t in (probs, *weights, steps)]

    def defend(p, *rest):
        adv, _, after = torch.ops.mia_fast.aeppt(p, *rest, False, False, False)
        return adv * 1.0, after

    compiled = torch.compile(defend, fullgraph=True)
    got = compiled(*args)
    want = defend(*args)
    torch.testing.assert_close(got[0], want[0])


@pytest.mark.parametrize("rows,classes", [(1, 1), (4097, 10), (1000, 100), (33, 1000)])
def test_rank_order_cpu_equals_cuda_and_writes_every_element(rows, classes):
    g = torch.Generator().manual_seed(classes)
    probs = ((torch.rand(rows, classes, generator=g) * 8).round() / 8).contiguous()
    values = torch.rand(rows, classes, generator=g).sort(1, descending=True).values.contiguous()
    _poison_allocator()
    got = ops.place_in_rank_order(probs.cuda(), values.cuda()).cpu()
    assert torch.equal(got, ops.place_in_rank_order(probs, values))
