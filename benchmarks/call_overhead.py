"""Per-call cost of conv_ext.conv2d on the README's (1, 3, 8, 8) -> 16 layer, where the call
path (Python, dispatcher, autograd) costs more than the kernel, next to torch.

    PYTHONPATH=. python benchmarks/call_overhead.py [--threads 2] [--calls 20000]

Prints microseconds per call (best of 7 loops) for: torch.nn.functional.conv2d,
conv_ext.conv2d (eager: the direct binding), torch.ops.conv_ext.conv2d_forward (the path
torch.compile and tensor subclasses take), each with and without an input that requires grad,
and forward+backward through autograd.
"""
import argparse
import time

import torch
import torch.nn.functional as F

import conv_ext


def per_call_us(fn, calls):
    for _ in range(min(1000, calls)):
        fn()
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 8, 8, generator=g)
    w = torch.randn(16, 3, 3, 3, generator=g)
    b = torch.randn(16, generator=g)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    op = torch.ops.conv_ext.conv2d_forward.default
    pair = (1, 1)

    def step(fn):
        def run():
            fn(xg, wg, bg, 1, 1).sum().backward()
        return run

    rows = [
        ("F.conv2d", lambda: F.conv2d(x, w, b, 1, 1)),
        ("conv_ext.conv2d", lambda: conv_ext.conv2d(x, w, b, 1, 1)),
        ("torch.ops.conv_ext.conv2d_forward", lambda: op(x, w, b, pair, pair, pair, 1)),
        ("F.conv2d, requires grad", lambda: F.conv2d(xg, wg, bg, 1, 1)),
        ("conv_ext.conv2d, requires grad", lambda: conv_ext.conv2d(xg, wg, bg, 1, 1)),
        ("F.conv2d forward+backward", step(F.conv2d)),
        ("conv_ext.conv2d forward+backward", step(conv_ext.conv2d)),
    ]
    print(f"(1, 3, 8, 8) -> 16, 3x3, padding 1, float32, threads={args.threads}, best of 7 x {args.calls} calls")
    for name, fn in rows:
        calls = args.calls if "backward" not in name else max(1, args.calls // 10)
        print(f"  {name:36s} {per_call_us(fn, calls):7.2f} us")


if __name__ == "__main__":
    main()
