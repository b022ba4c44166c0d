"""AEPPT on a GPU: the fused CUDA op against the ways plain PyTorch can run the same loop.

    python bench/bench_aeppt_cuda.py [--batches 256 4096 65536] [--compile-batches 4096] [--json out.json]

Variants (fp32, TF32 off, T = 100, C = 100, eps = 9e-4, default-initialised substitute MIM):
  eager-autograd      Algorithm 1 with autograd on the unfolded MIM, as a user would write it
  graph-autograd      that loop captured whole in one CUDA graph and replayed
  compile-autograd    torch.compile(mode="reduce-overhead") of that loop (B in --compile-batches only:
                      each compile of the unrolled 100-iteration loop takes tens of seconds)
  graph-folded        label-folded math with a hand-written backward (no autograd), one CUDA graph
  compile-folded      the same under torch.compile(mode="reduce-overhead")
  fused               mia_fast.ops.aeppt (one kernel launch)
  fused-3xtf32        the same with precision="3xtf32" (products on the tensor cores)
Every variant is checked against the fused op before it is timed; "sign agreement" compares one step's
gradient signs of the fused op (fp32 and 3xTF32) with autograd in fp64. Times: median of >= 20 runs after
warm-up, CUDA events. The fp32 floor is 2 * (C*H1 + H1*H2 + H2) * 2 flops per sample-iteration over
the measured SGEMM rate. Also times the selection kernel against PyTorch and a device copy.
"""
import argparse
import json
import statistics
import time

import torch

from mia_fast import ops
from mia_fast.models import SubstituteMIM
from mia_fast.ops.reference import aeppt_loop, folded_logit, select_within_distance_reference
from mia_fast.testing import random_probs

C, T, EPS = 100, 100, 9e-4


def time_ms(fn, runs=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed(fn):
    """Capture fn() once in a CUDA graph; return a replay function and the captured outputs."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g.replay, out


def folded_loop(probs, w_pred, b_pred, w_hidden, table, w_out, b_out, steps):
    """The strongest plain PyTorch: label-folded forward, hand-written backward, no autograd."""
    labels = probs.argmax(1)
    c = table[labels]
    wp_t, wa_t = w_pred.T, w_hidden.T

    def logit(p):
        a1 = p @ wp_t + b_pred
        a2 = torch.relu(a1) @ wa_t + c
        return a1, a2, torch.relu(a2) @ w_out + b_out

    target = (torch.sigmoid(logit(probs)[2]) >= 0.5).float()
    p = probs
    for t in range(steps.shape[0]):
        a1, a2, z = logit(p)
        dz = torch.sigmoid(z) - target
        g2 = (a2 > 0) * (w_out * dz[:, None])
        g1 = (g2 @ w_hidden) * (a1 > 0)
        p = (p + steps[t][:, None] * (g1 @ w_pred).sign()).clamp(0, 1)
    return p


def sgemm_tflops():
    a, b = torch.randn(8192, 8192, device="cuda"), torch.randn(8192, 8192, device="cuda")
    ms = time_ms(lambda: a @ b, runs=10)
    return 2 * 8192 ** 3 / ms / 1e9


def copy_gbps():
    x = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), runs=20)
    return 2 * x.numel() / ms / 1e6


def bench_aeppt(batches, compile_batches, only=None):
    torch.manual_seed(0)
    mim = SubstituteMIM(C).requires_grad_(False).cuda()
    weights = mim.fold().weights()
    h1, h2 = weights[0].shape[0], weights[2].shape[0]
    flops_per = 2 * 2 * (C * h1 + h1 * h2 + h2)
    tflops = sgemm_tflops()
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        probs = random_probs(batch, C, g).cuda()
        steps = (torch.rand(T, batch, generator=g) * EPS).cuda()
        fused_out = ops.aeppt(probs, *weights, steps)[0]
        floor_ms = flops_per * batch * T / (tflops * 1e9)
        variants = {
            "eager-autograd": lambda: aeppt_loop(probs, mim.logit, steps)[0],
            "graph-autograd": "graph", "compile-autograd": "compile",
            "graph-folded": "graph", "compile-folded": "compile",
            "fused": lambda: ops.aeppt(probs, *weights, steps)[0],
            "fused-3xtf32": lambda: ops.aeppt(probs, *weights, steps, precision="3xtf32")[0],
        }
        for name in [v for v in variants if not only or v in only]:
            row = {"batch": batch, "variant": name}
            try:
                if name.endswith("autograd"):
                    base = lambda: aeppt_loop(probs, mim.logit, steps)[0]  # noqa: E731
                else:
                    base = lambda: folded_loop(probs, *weights, steps)  # noqa: E731
                fn = variants[name]
                if fn == "graph":
                    fn, out = graphed(base)
                    fn()  # capture records kernels without running them
                    torch.cuda.synchronize()
                    check = out
                elif fn == "compile":
                    if batch not in compile_batches:
                        continue
                    started = time.perf_counter()
                    compiled = torch.compile(base, mode="reduce-overhead")
                    compiled()
                    compiled()
                    row["compile_s"] = time.perf_counter() - started
                    fn = compiled
                    check = fn()
                else:
                    check = fn()
                row["agree"] = float(((check - fused_out).abs() <= 1e-5).float().mean())
                ms = time_ms(fn)
                row.update(ms=ms, samples_iters_per_s=batch * T / ms * 1e3, pct_floor=100 * floor_ms / ms)
            except Exception as err:  # a variant that cannot run (OOM, capture unsupported) is recorded
                row.update(ms=float("inf"), error=f"{type(err).__name__}: {str(err).splitlines()[0][:120]}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"sgemm_tflops": tflops, "flops_per_sample_iter": flops_per, "rows": rows}


def sign_agreement(batch=4096):
    """Share of one step's gradient signs that the fused op (fp32, 3xTF32) shares with fp64 autograd."""
    torch.manual_seed(0)
    weights = SubstituteMIM(C).requires_grad_(False).cuda().fold().weights()
    probs = random_probs(batch, C, torch.Generator().manual_seed(1)).cuda()
    labels = probs.argmax(1)
    w64 = [w.double() for w in weights]
    x = probs.double().requires_grad_(True)
    z = folded_logit(x, labels, *w64)
    target = (torch.sigmoid(z.detach()) >= 0.5).double()
    torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="sum").backward()
    want = x.grad.sign()
    steps = torch.full((1, batch), 1e-3, device="cuda")  # probs > 0, so adv - probs keeps the sign
    result = {}
    for precision in ops.PRECISIONS:
        adv = ops.aeppt(probs, *weights, steps, precision=precision)[0]
        result[precision] = float(((adv - probs).sign().double() == want).double().mean())
    print(json.dumps({"sign_agreement_vs_fp64": result}), flush=True)
    return result


def bench_select():
    rows = []
    gbps = copy_gbps()
    for d in (784, 3072):
        n, k = 4096, 16
        g = torch.Generator(device="cuda").manual_seed(d)
        o = torch.rand(n, d, device="cuda", generator=g)
        cand = o[:, None] + 0.05 * torch.randn(n, k, d, device="cuda", generator=g)
        losses = torch.rand(n, k, device="cuda", generator=g)
        eps = 1.4 if d == 784 else 2.8
        ref = select_within_distance_reference(o, cand, losses, eps)
        got = ops.select_within_distance(o, cand, losses, eps)
        agree = float((ref[0] == got[0]).float().mean())
        nbytes = (cand.numel() + o.numel() + losses.numel() * 2) * 4 + n * 8
        for name, fn in [("torch", lambda: select_within_distance_reference(o, cand, losses, eps)),
                         ("fused", lambda: ops.select_within_distance(o, cand, losses, eps))]:
            ms = time_ms(fn)
            row = {"d": d, "variant": name, "ms": ms, "GB/s": nbytes / ms / 1e6, "pct_copy": 100 * nbytes / ms / 1e6 / gbps,
                   "index_agree": agree}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"copy_GBps": gbps, "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 4096, 65536])
    parser.add_argument("--compile-batches", type=int, nargs="*", default=[4096])
    parser.add_argument("--variants", nargs="*", help="only these AEPPT variants (default: all)")
    parser.add_argument("--no-select", action="store_true", help="skip the selection benchmark")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "date": time.strftime("%Y-%m-%d"), "aeppt": bench_aeppt(args.batches, set(args.compile_batches), args.variants),
              "sign_agreement_vs_fp64": sign_agreement(),
              "select": {"copy_GBps": float("nan"), "rows": []} if args.no_select else bench_select()}
    print(f"\n{result['device']}, torch {result['torch']}, CUDA {result['cuda']}; SGEMM "
          f"{result['aeppt']['sgemm_tflops']:.1f} TFLOP/s; copy {result['select']['copy_GBps']:.0f} GB/s")
    print("| B | variant | ms | samples*iters/s | % fp32 floor | agree |")
    print("|---|---|---|---|---|---|")
    for r in result["aeppt"]["rows"]:
        if "error" in r:
            print(f"| {r['batch']} | {r['variant']} | failed: {r['error']} | | | |")
        else:
            print(f"| {r['batch']} | {r['variant']} | {r['ms']:.3f} | {r['samples_iters_per_s']:.3g} | "
                  f"{r['pct_floor']:.1f} | {r['agree']:.4f} |")
    print("\nOne step's gradient signs equal to fp64 autograd's (B = 4096): " + ", ".join(
        f"{k} {v:.6f}" for k, v in result["sign_agreement_vs_fp64"].items()))
    print("\n| D | variant | ms | GB/s | % of copy | index agree |")
    print("|---|---|---|---|---|---|")
    for r in result["select"]["rows"]:
        print(f"| {r['d']} | {r['variant']} | {r['ms']:.3f} | {r['GB/s']:.0f} | {r['pct_copy']:.1f} | {r['index_agree']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
