"""conv_ext vs torch.nn.functional.conv2d on integer tensors (CPU), forward: the same random data,
calls interleaved in a random order each repetition, median per side, same thread count; checks
that the results are equal (integer results are exact, wrapping modulo 2^bits of the dtype).

    PYTHONPATH=. python benchmarks/integer.py
    PYTHONPATH=. python benchmarks/integer.py --dtypes int8,int32 --shapes 4,64,56,56,64,3,1,1 --reps 9

A shape is N,C,H,W,K,R[,stride,padding,groups] (square kernel, stride and padding).
"""
import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

import conv_ext

SHAPES = ["1,3,8,8,16,3,1,1", "8,3,32,32,16,3,1,1", "4,64,56,56,64,3,1,1", "8,128,28,28,128,3,1,1",
          "4,128,56,56,128,3,2,1", "8,256,14,14,256,1,1,0", "4,3,224,224,64,7,2,3", "4,64,28,28,128,3,1,1,4"]
RANGES = {torch.uint8: (0, 256), torch.int8: (-128, 128), torch.int16: (-2**15, 2**15),
          torch.int32: (-2**31, 2**31), torch.int64: (-2**63, 2**63 - 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="uint8,int8,int16,int32,int64")
    ap.add_argument("--shapes", default=";".join(SHAPES), help="';'-separated N,C,H,W,K,R[,stride,padding,groups]")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave it)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(0)
    torch.manual_seed(0)
    print(f"conv_ext {conv_ext.__version__} vs torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"forward, ms median of {args.reps} (each a call or more)")
    print(f"{'dtype':8} {'shape':28} {'torch ms':>10} {'ext ms':>10} {'speedup':>8}")
    ratios = []
    for name in args.dtypes.split(","):
        dt = getattr(torch, name)
        lo, hi = RANGES[dt]
        for shape in args.shapes.split(";"):
            v = [int(s) for s in shape.split(",")]
            n, c, h, w, k, r = v[:6]
            stride, padding, groups = (v[6:] + [1, 0, 1][len(v) - 6:])[:3]
            x = torch.randint(lo, hi, (n, c, h, w), dtype=dt)
            wt = torch.randint(lo, hi, (k, c // groups, r, r), dtype=dt)
            b = torch.randint(lo, hi, (k,), dtype=dt)
            fns = {"torch": lambda: F.conv2d(x, wt, b, stride, padding, 1, groups),
                   "ext": lambda: conv_ext.conv2d(x, wt, b, stride, padding, 1, groups)}
            assert torch.equal(fns["torch"](), fns["ext"]()), f"results differ: {name} {shape}"
            inner = max(1, int(0.02 / max(1e-6, min(_time(f, 1) for f in fns.values()))))
            times = {s: [] for s in fns}
            for _ in range(args.reps):
                for side in random.sample(list(fns), 2):
                    times[side].append(_time(fns[side], inner))
            t, e = statistics.median(times["torch"]), statistics.median(times["ext"])
            ratios.append(t / e)
            print(f"{name:8} {shape:28} {t * 1e3:10.3f} {e * 1e3:10.3f} {t / e:8.2f}")
    print(f"geometric-mean speedup: {statistics.geometric_mean(ratios):.2f}x over {len(ratios)} cases")


def _time(fn, inner):
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


if __name__ == "__main__":
    main()
