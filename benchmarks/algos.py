"""Dev A/B of conv_ext's CPU algorithms on one shape: torch and every algorithm that supports the
problem (each forced) and conv_ext's default call (for half types this includes the float32 path
on copies, which no forced algorithm times), called in a random order in every repetition,
median and min per side.

    PYTHONPATH=. python benchmarks/algos.py 4,3,224,224,64,7,2,3 --layout nchw --pass forward
    PYTHONPATH=. python benchmarks/algos.py 8,16,32,32,32,3,2,1 --threads 1 --reps 60
    PYTHONPATH=. python benchmarks/algos.py 4,64,56,56,64,3,1,1 --pass backward_weight --step

The shape is N,C,H,W,K,R[,stride,padding,groups] (square kernel, stride and padding). A fixed
calling order favoured whichever variant ran second by ~5% on our VM; random order does not.
Every algorithm's output is checked against torch's first (relative error printed). torch's own
time here can differ from the bench's (python -m conv_ext.bench) by 2x for large outputs: it
depends on the process's allocation history (page faults on fresh output pages), so compare the
algorithms with each other here and with torch in the bench. --step times the pass between the
other two as a training step runs it (a pass that leans on L3 keeping its data, such as
Winograd's 16 MiB of transformed filter gradients at 512@7, loses more there than alone).
--between runs another layer (a 1x1 forward from 4x the channels) before each timed call, as a
network's neighbouring layer would (winograd_s2's NCHW forward won alone and lost that way).
"""
import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

import conv_ext
from conv_ext import testing


def problems(shape, layout, dtype=torch.float32):
    """({pass: (torch_fn, ext_fn)}, filter): the three passes of the problem `shape`
    ("N,C,H,W,K,R[,stride,padding,groups]") on the same random data of `dtype` in `layout`, by
    torch and by conv_ext's ops (their default algorithm choice)."""
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

    def torch_backward(i):
        mask = [i == 0, i == 1, False]
        return lambda: torch.ops.aten.convolution_backward(dy, x, wt, None, *geo[:3], False, [0, 0], groups, mask)[i]

    fns = {
        "forward": (lambda: F.conv2d(x, wt, None, stride, padding, 1, groups),
                    lambda: ops.conv2d_forward(x, wt, None, *geo)),
        "backward_input": (torch_backward(0), lambda: ops.conv2d_backward_input(dy, wt, list(x.shape), *geo)),
        "backward_weight": (torch_backward(1), lambda: ops.conv2d_backward_weight(dy, x, list(wt.shape), *geo)),
    }
    return fns, wt


def problem(shape, layout, pass_name, dtype=torch.float32):
    """(torch_fn, ext_fn): one pass of problems(shape, layout, dtype). Also used by benchmarks/ab.py."""
    return problems(shape, layout, dtype)[0][pass_name]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", help="N,C,H,W,K,R[,stride,padding,groups]")
    ap.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")
    ap.add_argument("--pass", dest="pass_name", choices=testing.PASSES, default="forward")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--dtype", choices=("float32", "float64", "bfloat16", "float16"), default="float32",
                    help="the operands' dtype (bfloat16: its own kernels forced, and by default whatever "
                         "conv_ext chooses, the float32 path on copies included)")
    ap.add_argument("--step", action="store_true",
                    help="time the pass where a training step runs it: after a new version of the filter (an "
                         "optimizer step) and between the other two passes (each side's own, default algorithms), "
                         "so that what it leaves in and takes from the caches counts")
    ap.add_argument("--between", action="store_true",
                    help="run another layer before each timed call, as a network's neighbouring layer would (a 1x1 "
                         "conv_ext forward from 4x the channels to the problem's input channels, same layout), so "
                         "that the pass meets caches that other work has used")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pn = args.pass_name
    fns_all, wt = problems(args.shape, args.layout, getattr(torch, args.dtype))
    torch_fn, ext_fn = fns_all[pn]
    ext_fn()
    default = testing.last_cpu_algorithm(pn)
    expected = torch_fn()
    fns = {"torch": torch_fn, f"default ({default})": ext_fn}
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
        err = ((out.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
        print(f"{a:15s} rel. error vs torch {err:.1e}")
        if a != "reference":
            fns[a] = forced
    if args.between:
        v = [int(t) for t in args.shape.split(",")]
        fmt = torch.channels_last if args.layout == "nhwc" else torch.contiguous_format
        xo = torch.randn(v[0], 4 * v[1], v[2], v[3]).to(getattr(torch, args.dtype)).contiguous(memory_format=fmt)
        wo = (torch.randn(v[1], 4 * v[1], 1, 1) * 0.1).to(xo.dtype).contiguous(memory_format=fmt)
    times = {name: [] for name in fns}
    passes = list(fns_all) if args.step else [pn]
    for _ in range(args.reps):
        order = list(fns)
        random.shuffle(order)
        for name in order:
            if args.step:
                torch.autograd.graph.increment_version(wt)
            for p in passes:
                if p != pn:
                    fns_all[p][0 if name == "torch" else 1]()
                    continue
                if args.between:
                    conv_ext.conv2d(xo, wo)
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["torch"])
    print(f"{args.shape} {args.layout} {args.dtype} {pn}{' in a training step' if args.step else ''}, {torch.get_num_threads()} threads, default: {default}; "
          f"ms median / min (torch median / median), {args.reps} reps")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"  {name:22s} {med * 1e3:9.3f} / {min(t) * 1e3:9.3f}   ({base / med:.2f}x)")


if __name__ == "__main__":
    main()
