"""Dev benchmark of conv_ext's CPU kernels against torch.nn.functional.conv2d (oneDNN), same process.

For every case and pass it times torch and conv_ext interleaved (one call of each per round),
takes the median of the rounds, and prints GFLOP/s (2*MACs / time), % of the FMA peak and the
speedup. Passes: fwd, bwd_in, bwd_w (each alone; torch's via aten.convolution_backward with an
output mask) and fwd+bwd (autograd, dx and dw). Same thread count for both (torch's default).

    PYTHONPATH=. python benchmarks/cpu_kernels.py                 # all cases, NCHW and NHWC
    PYTHONPATH=. python benchmarks/cpu_kernels.py --cases 3x3 --layouts nhwc --passes fwd
    PYTHONPATH=. python benchmarks/cpu_kernels.py --algo implicit_gemm   # force one algorithm

The geometric means at the end are over the cases printed (per pass and layout).
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import conv_ext
from conv_ext import testing

PEAK_GFLOPS_PER_CORE = 117.0  # Zen 4: one 512-bit FMA per cycle per core at ~3.7 GHz

# name, (N, C, H, W), K, (R, S), stride, padding, groups
CASES = [
    ("r50 3x3 64@56", (8, 64, 56, 56), 64, 3, 1, 1, 1),
    ("r50 3x3 128@28", (8, 128, 28, 28), 128, 3, 1, 1, 1),
    ("r50 3x3 256@14", (8, 256, 14, 14), 256, 3, 1, 1, 1),
    ("r50 3x3 512@7", (8, 512, 7, 7), 512, 3, 1, 1, 1),
    ("r50 1x1 64->256@56", (8, 64, 56, 56), 256, 1, 1, 0, 1),
    ("r50 1x1 256->64@56", (8, 256, 56, 56), 64, 1, 1, 0, 1),
    ("r50 1x1 512->128@28", (8, 512, 28, 28), 128, 1, 1, 0, 1),
    ("r50 1x1 1024->256@14", (8, 1024, 14, 14), 256, 1, 1, 0, 1),
    ("r50 1x1 512->2048@7", (8, 512, 7, 7), 2048, 1, 1, 0, 1),
    ("r50 1x1/2 512->1024@28", (8, 512, 28, 28), 1024, 1, 2, 0, 1),
    ("stem 7x7/2 3->64@224", (8, 3, 224, 224), 64, 7, 2, 3, 1),
    ("mbv2 dw 32@112", (8, 32, 112, 112), 32, 3, 1, 1, 32),
    ("mbv2 dw 96@112/2", (8, 96, 112, 112), 96, 3, 2, 1, 96),
    ("mbv2 dw 144@56", (8, 144, 56, 56), 144, 3, 1, 1, 144),
    ("mbv2 dw 192@28", (8, 192, 28, 28), 192, 3, 1, 1, 192),
    ("mbv2 dw 576@14", (8, 576, 14, 14), 576, 3, 1, 1, 576),
    ("mbv2 dw 960@7", (8, 960, 7, 7), 960, 3, 1, 1, 960),
    ("mbv2 dw 576@14/2", (8, 576, 14, 14), 576, 3, 2, 1, 576),
    ("3x3/2 128@56", (8, 128, 56, 56), 128, 3, 2, 1, 1),
    ("3x3/2 256@28", (8, 256, 28, 28), 256, 3, 2, 1, 1),
    ("tiny (1,3,8,8)->16", (1, 3, 8, 8), 16, 3, 1, 1, 1),
    ("cifar 3->16@32", (8, 3, 32, 32), 16, 3, 1, 1, 1),
]
PASSES = ("fwd", "bwd_in", "bwd_w", "fwd+bwd")


def macs(case):
    _, (n, c, h, w), k, r, st, pad, g = case
    p = (h + 2 * pad - r) // st + 1
    q = (w + 2 * pad - r) // st + 1
    return n * k * p * q * (c // g) * r * r


def make_calls(case, layout, pass_name):
    _, (n, c, h, w), k, r, st, pad, g = case
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    wt = torch.randn(k, c // g, r, r)
    b = torch.randn(k)
    geo = ((st, st), (pad, pad), (1, 1), g)
    y = F.conv2d(x, wt, b, *geo)
    gy = torch.randn_like(y)
    ops = torch.ops.conv_ext
    if pass_name == "fwd":
        return (lambda: F.conv2d(x, wt, b, *geo)), (lambda: conv_ext.conv2d(x, wt, b, *geo))
    if pass_name == "bwd_in":
        cb = torch.ops.aten.convolution_backward
        return (lambda: cb(gy, x, wt, None, *geo[:3], False, (0, 0), g, (True, False, False))), (
            lambda: ops.conv2d_backward_input(gy, wt, x.shape, *geo))
    if pass_name == "bwd_w":
        cb = torch.ops.aten.convolution_backward
        return (lambda: cb(gy, x, wt, None, *geo[:3], False, (0, 0), g, (False, True, False))), (
            lambda: ops.conv2d_backward_weight(gy, x, wt.shape, *geo))
    xr, wr, br = x.clone().requires_grad_(), wt.clone().requires_grad_(), b.clone().requires_grad_()

    def torch_fb():
        out = F.conv2d(xr, wr, br, *geo)
        torch.autograd.grad(out, (xr, wr, br), gy)

    def ours_fb():
        out = conv_ext.conv2d(xr, wr, br, *geo)
        torch.autograd.grad(out, (xr, wr, br), gy)

    return torch_fb, ours_fb


def bench_pair(f_torch, f_ours, min_time=0.4, max_rounds=200, clock=time.perf_counter):
    for f in (f_torch, f_ours, f_torch, f_ours):  # warm up (allocator, weight caches, threads)
        f()
    tt, to = [], []
    start = time.perf_counter()
    while len(tt) < 5 or (time.perf_counter() - start < min_time and len(tt) < max_rounds):
        t0 = clock()
        f_torch()
        t1 = clock()
        f_ours()
        t2 = clock()
        tt.append(t1 - t0)
        to.append(t2 - t1)
    return statistics.median(tt), statistics.median(to)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="", help="substring filter on case names")
    ap.add_argument("--layouts", default="nchw,nhwc")
    ap.add_argument("--passes", default=",".join(PASSES))
    ap.add_argument("--algo", default="auto", help="force a conv_ext CPU algorithm")
    ap.add_argument("--min-time", type=float, default=0.4, help="seconds per case and pass")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: leave)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with time.thread_time (CPU time of this thread; use with --threads 1 on a loaded machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    threads = torch.get_num_threads()
    peak = PEAK_GFLOPS_PER_CORE * threads
    print(f"torch {torch.__version__}, {threads} threads, FMA peak {peak:.0f} GFLOP/s, "
          f"conv_ext capability {conv_ext._C.cpu_capability() if hasattr(conv_ext._C, 'cpu_capability') else '?'}")
    print(f"{'case':24s} {'layout':6s} {'pass':8s} {'torch us':>10s} {'ours us':>10s} {'torch GF':>9s} "
          f"{'ours GF':>8s} {'%peak':>6s} {'speedup':>8s}  algorithm")
    speedups = {}
    torch.manual_seed(0)
    for case in CASES:
        if args.cases and args.cases not in case[0]:
            continue
        flops = 2 * macs(case)
        for layout in args.layouts.split(","):
            for pass_name in args.passes.split(","):
                f_torch, f_ours = make_calls(case, layout, pass_name)
                with testing.force_cpu_algorithm(args.algo):
                    t_torch, t_ours = bench_pair(f_torch, f_ours, args.min_time, clock=clock)
                    algos = "/".join(testing.last_cpu_algorithm(p) or "-" for p in testing.PASSES)
                n_flop = flops * (3 if pass_name == "fwd+bwd" else 1)
                g_t, g_o = n_flop / t_torch / 1e9, n_flop / t_ours / 1e9
                sp = t_torch / t_ours
                speedups.setdefault((layout, pass_name), []).append(sp)
                print(f"{case[0]:24s} {layout:6s} {pass_name:8s} {t_torch * 1e6:10.1f} {t_ours * 1e6:10.1f} "
                      f"{g_t:9.1f} {g_o:8.1f} {100 * g_o / peak:5.0f}% {sp:7.2f}x  {algos}", flush=True)
    print("\ngeometric-mean speedup (min)")
    for (layout, pass_name), v in sorted(speedups.items()):
        gm = math.exp(sum(math.log(s) for s in v) / len(v))
        print(f"  {layout:5s} {pass_name:8s} {gm:5.2f}x  (min {min(v):.2f}x over {len(v)} cases)")


if __name__ == "__main__":
    main()
