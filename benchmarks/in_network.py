"""Each convolution of a network timed where the network runs it: a forward of the model with
nn.Conv2d and one of the same model converted by conv_ext.convert, every Conv2d timed by forward
hooks (time.perf_counter before and after), the median over the forwards, summed per layer shape.

    PYTHONPATH=. python benchmarks/in_network.py resnet50 --layout nhwc
    PYTHONPATH=. python benchmarks/in_network.py resnet50 --dtype bfloat16 --layout nhwc --reps 20

Alone (python -m conv_ext.bench --suite S) a layer runs on inputs and filters its previous call
left in the caches; inside the network its input comes from the previous layer and its filter
from memory, and large fresh outputs may take page faults. Both models run in this process, one
after the other (torch's first), in inference (torch.no_grad) at batch --batch.
"""
import argparse
import collections
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402  (this folder's benchmarks/models.py)

import conv_ext  # noqa: E402


def layer_times(model, x, reps):
    """{(name, description): median seconds} of every Conv2d of model over reps forwards (3 untimed first)."""
    start, times = {}, collections.defaultdict(list)
    handles = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Conv2d):
            continue
        desc = (f"{mod.in_channels}->{mod.out_channels} k{mod.kernel_size[0]}x{mod.kernel_size[1]}"
                f" s{mod.stride[0]}" + (f" g{mod.groups}" if mod.groups > 1 else ""))

        def pre(m, inp, key=(name, desc)):
            start[key] = time.perf_counter()

        def post(m, inp, out, key=(name, desc)):
            times[key].append(time.perf_counter() - start[key])

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    with torch.no_grad():
        for i in range(reps + 3):
            if i == 3:
                times.clear()
            model(x)
    for h in handles:
        h.remove()
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(models.MODELS))
    ap.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--image", type=int, default=None, help="default: the model's own")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    fmt = torch.channels_last if args.layout == "nhwc" else torch.contiguous_format
    make, default_image = models.MODELS[args.model]
    image = args.image or default_image
    torch.manual_seed(0)
    base = make().to(dtype).to(memory_format=fmt).eval()
    x = torch.randn(args.batch, 3, image, image).to(dtype).contiguous(memory_format=fmt)
    t = layer_times(base, x, args.reps)
    e = layer_times(conv_ext.convert(base), x, args.reps)  # the same filters, converted in place
    per_shape = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for key in t:
        row = per_shape[key[1]]
        row[0] += t[key]
        row[1] += e[key]
        row[2] += 1
    print(f"{args.model} {args.dtype} {args.layout} batch {args.batch} {image}x{image}, {torch.get_num_threads()} threads, "
          f"median of {args.reps} forwards; conv time per forward: torch {sum(t.values()) * 1e3:.2f} ms, "
          f"conv_ext {sum(e.values()) * 1e3:.2f} ms ({sum(t.values()) / sum(e.values()):.2f}x)")
    print(f"{'layer':28s} {'count':>5s} {'torch ms':>9s} {'ext ms':>9s} {'speedup':>8s}")
    for desc, (a, b, n) in sorted(per_shape.items(), key=lambda kv: kv[1][0] / kv[1][1]):
        print(f"{desc:28s} {n:5d} {a * 1e3:9.3f} {b * 1e3:9.3f} {a / b:8.2f}")


if __name__ == "__main__":
    main()
