"""torch.func through conv_ext next to nn.Conv2d: per-sample gradients (vmap of grad through
functional_call, what differential privacy and influence functions compute), a Jacobian-vector
product (jvp) and the Jacobian of a layer's output with respect to its filter (jacrev).

    PYTHONPATH=. python benchmarks/func_transforms.py [--batch 32] [--threads 2] [--reps 15]

The model is a small CIFAR network (3 -> 32 -> 64 -> 64 channels, 3x3 convolutions, two of stride 2,
tanh between them). Each transform runs on the nn.Conv2d model and on the same model converted
with conv_ext.convert, interleaved, and prints the median of the repeats (ms) and the ratio
torch / conv_ext; every result is checked against torch's first.
"""
import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap

import conv_ext


def model():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Tanh(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                         nn.Tanh(), nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(64 * 8 * 8, 10))


def transforms(net, params, x, target):
    def loss(p, xi, ti):
        return nn.functional.cross_entropy(functional_call(net, p, (xi.unsqueeze(0),)), ti.unsqueeze(0))

    w = params["2.weight"]
    layer = lambda wt: functional_call(net, {**params, "2.weight": wt}, (x[:4],))
    return {
        "per-sample gradients": lambda: vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target),
        "jvp (filter tangent)": lambda: jvp(layer, (w,), (torch.ones_like(w),))[1],
        "jacrev (one sample, 3rd layer's filter)": lambda: jacrev(
            lambda wt: functional_call(net, {**params, "2.weight": wt}, (x[:1],)))(w),
    }


def flat(out):
    if isinstance(out, dict):
        return torch.cat([v.flatten() for v in out.values()])
    return out.flatten()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ref = model()
    ours = conv_ext.convert(copy.deepcopy(ref))
    params = {k: v.detach() for k, v in ref.named_parameters()}
    x = torch.randn(args.batch, 3, 32, 32)
    target = torch.randint(0, 10, (args.batch,))
    sides = {"torch": transforms(ref, params, x, target), "conv_ext": transforms(ours, params, x, target)}
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.reps} interleaved repeats")
    print(f"{'transform':42s} {'torch ms':>9s} {'ext ms':>9s} {'speedup':>8s} {'rel. error':>10s}")
    for name in sides["torch"]:
        fns = {side: sides[side][name] for side in sides}
        a, e = flat(fns["conv_ext"]()), flat(fns["torch"]())
        err = ((a - e).abs().max() / e.abs().max()).item()
        times = {side: [] for side in fns}
        for i in range(args.reps):
            for side in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
                t0 = time.perf_counter()
                fns[side]()
                times[side].append(time.perf_counter() - t0)
        med = {side: statistics.median(t) * 1e3 for side, t in times.items()}
        print(f"{name:42s} {med['torch']:9.2f} {med['conv_ext']:9.2f} {med['torch'] / med['conv_ext']:7.2f}x {err:10.2e}")


if __name__ == "__main__":
    main()
