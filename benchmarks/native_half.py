"""Which convolutions of the benchmark networks have no bfloat16 (or float16) kernel of their own:
every distinct layer, in both layouts and all three passes, is run once through conv_ext's default
choice and then with that algorithm forced; where the forced call says "does not support", the
default ran the float32 algorithm on float32 copies of the operands (converted, then rounded
back), which moves 3x the bytes of a kernel that reads the half type as it lies.

    PYTHONPATH=. python benchmarks/native_half.py
    PYTHONPATH=. python benchmarks/native_half.py --models mobilenet_v2,vgg16 --dtype bfloat16

Prints one line per (layer, layout, pass) on copies (batch 2, the model's image size); nothing
else is timed. The answer depends on the CPU (the bfloat16 kernels need AVX512-BF16).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402  (this folder's benchmarks/models.py)

import conv_ext  # noqa: E402
from conv_ext import testing  # noqa: E402


def layers(name):
    """{(C, K, kernel, stride, padding, groups, input size)} of the model's Conv2d layers."""
    build, image = models.MODELS[name]
    model, seen = build(), set()

    def hook(mod, inp, out):
        seen.add((mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0], mod.groups,
                  inp[0].shape[-1]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(1, 3, image, image))
    for h in handles:
        h.remove()
    return sorted(seen)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(sorted(models.MODELS)))
    ap.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    args = ap.parse_args()
    dtype, ops = getattr(torch, args.dtype), torch.ops.conv_ext
    on_copies = 0
    for name in args.models.split(","):
        for c, k, r, s, pad, g, hw in layers(name):
            for layout in ("nchw", "nhwc"):
                fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                x = torch.randn(2, c, hw, hw).to(dtype).contiguous(memory_format=fmt)
                w = torch.randn(k, c // g, r, r).to(dtype)
                geo = ([s, s], [pad, pad], [1, 1], g)
                dy = torch.randn(ops.conv2d_forward(x, w, None, *geo).shape).to(dtype).contiguous(memory_format=fmt)
                calls = {"forward": lambda: ops.conv2d_forward(x, w, None, *geo),
                         "backward_input": lambda: ops.conv2d_backward_input(dy, w, list(x.shape), *geo),
                         "backward_weight": lambda: ops.conv2d_backward_weight(dy, x, list(w.shape), *geo)}
                for pass_name, call in calls.items():
                    call()
                    algo = testing.last_cpu_algorithm(pass_name)
                    try:
                        with testing.force_cpu_algorithm({pass_name: algo}):
                            call()
                    except RuntimeError as e:
                        if "does not support" not in str(e):
                            raise
                        on_copies += 1
                        print(f"{name:16s} {c}->{k} {r}x{r}/{s} g{g} @{hw} {layout} {pass_name}: "
                              f"float32 copies ({algo})")
    print(f"{on_copies} (layer, layout, pass) problems on float32 copies; {args.dtype}, "
          f"cpu {conv_ext.info()['cpu_capability']}")


if __name__ == "__main__":
    main()
