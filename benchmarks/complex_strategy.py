"""The two forms of a complex convolution against each other (csrc/complex_conv.h): one real
convolution of (re, im) pairs with 2C -> 2K channels, or Gauss's three real convolutions of planes
with C -> K channels (3/4 of the multiply-adds, more passes over the activations).

    PYTHONPATH=. python benchmarks/complex_strategy.py [--dtypes complex64,complex128]
        [--layouts nchw,nhwc] [--suite default] [--cases SUBSTR,...] [--reps 5]

For each case of the suite: the forward (no grad) and forward+backward (all three gradients) in
each form, interleaved, median of the repeats; prints the pairs' time / Gauss's time (above 1:
Gauss is faster) and which form conv_ext chooses by itself ('auto').
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import conv_ext
import conv_ext.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import shapes  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="complex64,complex128")
    ap.add_argument("--layouts", default="nchw,nhwc")
    ap.add_argument("--suite", default="default")
    ap.add_argument("--cases", default="", help="only the cases whose name holds one of these (comma-separated)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(f"{'case':36s} {'dtype':10s} {'layout':6s} {'fwd':>6s} {'all':>6s}  auto")
    words = [w for w in args.cases.split(",") if w]
    for case in shapes.get_suite(args.suite, None):
        if words and not any(w in case.name for w in words):
            continue
        for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
            for layout in args.layouts.split(","):
                fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                g = torch.Generator().manual_seed(0)
                rand = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
                x = rand(case.n, case.c, case.h, case.w).contiguous(memory_format=fmt).requires_grad_()
                w = rand(case.k, case.c // case.groups, case.r, case.s).contiguous(memory_format=fmt).requires_grad_()
                b = rand(case.k).requires_grad_() if case.bias else None
                kw = dict(stride=case.stride, padding=case.padding, dilation=case.dilation, groups=case.groups)
                dy = rand(*conv_ext.conv2d(x, w, b, **kw).shape).contiguous(memory_format=fmt)
                leaves = [t for t in (x, w, b) if t is not None]

                def forward():
                    with torch.no_grad():
                        conv_ext.conv2d(x, w, b, **kw)

                def forward_backward():
                    torch.autograd.grad(conv_ext.conv2d(x, w, b, **kw), leaves, dy)

                ratios = []
                for fn in (forward, forward_backward):
                    times = {"pairs": [], "gauss": []}
                    for i in range(args.reps + 1):  # the first round warms up
                        for form in (("pairs", "gauss") if i % 2 == 0 else ("gauss", "pairs")):
                            with conv_ext.testing.complex_strategy(form):
                                t0 = time.perf_counter()
                                fn()
                                if i:
                                    times[form].append(time.perf_counter() - t0)
                    ratios.append(statistics.median(times["pairs"]) / statistics.median(times["gauss"]))
                auto = conv_ext.testing.complex_form(x, w, **kw)
                print(f"{case.name:36s} {str(dtype)[6:]:10s} {layout:6s} {ratios[0]:6.2f} {ratios[1]:6.2f}  {auto}",
                      flush=True)


if __name__ == "__main__":
    main()
