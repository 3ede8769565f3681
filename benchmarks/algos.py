"""Dev A/B of conv_ext's CPU algorithms on one shape: torch and every algorithm that supports the
problem (each forced), called in a random order in every repetition, median and min per side.

    PYTHONPATH=. python benchmarks/algos.py 4,3,224,224,64,7,2,3 --layout nchw --pass forward
    PYTHONPATH=. python benchmarks/algos.py 8,16,32,32,32,3,2,1 --threads 1 --reps 60

The shape is N,C,H,W,K,R[,stride,padding,groups] (square kernel, stride and padding). A fixed
calling order favoured whichever variant ran second by ~5% on our VM; random order does not.
Every algorithm's output is checked against torch's first (relative error printed). torch's own
time here can differ from the bench's (python -m conv_ext.bench) by 2x for large outputs: it
depends on the process's allocation history (page faults on fresh output pages), so compare the
algorithms with each other here and with torch in the bench.
"""
import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

import conv_ext
from conv_ext import testing


def problem(shape, layout, pass_name, dtype=torch.float32):
    """(torch_fn, ext_fn): one pass of the problem `shape` ("N,C,H,W,K,R[,stride,padding,groups]")
    on random data of `dtype` in `layout`, by torch and by conv_ext's op (its default algorithm
    choice). Also used by benchmarks/ab.py."""
    v = [int(s) for s in shape.split(",")]
    n, c, h, w, k, r = v[:6]
    stride, padding, groups = (v[6:] + [1, 0, 1][len(v) - 6:])[:3]
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g).to(dtype).contiguous(memory_format=fmt)
    wt = (torch.randn(k, c // groups, r, r, generator=g) * (c // groups * r * r) ** -0.5).to(dtype).contiguous(memory_format=fmt)
    geo = ([stride] * 2, [padding] * 2, [1, 1], groups)
    y = F.conv2d(x, wt, None, stride, padding, 1, groups)
    dy = torch.randn(y.shape, generator=g).to(dtype).contiguous(memory_format=fmt)
    ops = torch.ops.conv_ext
    if pass_name == "forward":
        torch_fn = lambda: F.conv2d(x, wt, None, stride, padding, 1, groups)  # noqa: E731
        ext_fn = lambda: ops.conv2d_forward(x, wt, None, *geo)  # noqa: E731
    else:
        mask = [pass_name == "backward_input", pass_name == "backward_weight", False]
        i = 0 if mask[0] else 1
        torch_fn = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
            dy, x, wt, None, *geo[:3], False, [0, 0], groups, mask)[i]
        ext_fn = ((lambda: ops.conv2d_backward_input(dy, wt, list(x.shape), *geo)) if mask[0]
                  else (lambda: ops.conv2d_backward_weight(dy, x, list(wt.shape), *geo)))
    return torch_fn, ext_fn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", help="N,C,H,W,K,R[,stride,padding,groups]")
    ap.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")
    ap.add_argument("--pass", dest="pass_name", choices=testing.PASSES, default="forward")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pn = args.pass_name
    torch_fn, ext_fn = problem(args.shape, args.layout, pn)
    ext_fn()
    default = testing.last_cpu_algorithm(pn)
    expected = torch_fn()
    fns = {"torch": torch_fn}
    for a in testing.cpu_algorithms(pn):
        def forced(a=a):
            with testing.force_cpu_algorithm({pn: a}):
                return ext_fn()
        try:
            out = forced()
        except RuntimeError as e:
            if "does not support" in str(e):
                continue
            raise
        err = ((out - expected).abs().max() / expected.abs().max()).item()
        print(f"{a:15s} rel. error vs torch {err:.1e}")
        if a != "reference":
            fns[a] = forced
    times = {name: [] for name in fns}
    for _ in range(args.reps):
        order = list(fns)
        random.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["torch"])
    print(f"{args.shape} {args.layout} {pn}, {torch.get_num_threads()} threads, default: {default}; "
          f"ms median / min (torch median / median), {args.reps} reps")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"  {name:15s} {med * 1e3:9.3f} / {min(t) * 1e3:9.3f}   ({base / med:.2f}x)")


if __name__ == "__main__":
    main()
