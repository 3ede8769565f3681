"""A/B of two builds of conv_ext on a whole network's training step (forward, backward, SGD step):
each build's package in its own process, alternating (old, new, old, new, ...), each process
timing --reps steps after two warm-up steps of the network from benchmarks/models.py converted by
conv_ext.convert (conv_ext.bench's make_model_fns, the conv_ext side only), printing its min and
median. For dtypes where torch's own step is far slower than ours (float16 on the CPU: 33 s for
ResNet-50 at 112x112, batch 4, against 0.2 s) `python -m conv_ext.bench --models M --passes
train_step` spends nearly all its time on torch's side; this leaves torch out.

    mkdir -p /tmp/old && git archive BASE conv_ext benchmarks | tar -x -C /tmp/old
    cp /tmp/old.so /tmp/old/conv_ext/_C.cpython-311-x86_64-linux-gnu.so   # the base build's library
    python benchmarks/train_step.py /tmp/old . resnet50 --layout nhwc --dtype float16 --batch 4

OLD and NEW are package roots (folders holding conv_ext/ with its built library, and benchmarks/).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time


def child(root, model, layout, dtype, batch, image, reps):
    sys.path.insert(0, root)
    import torch

    import conv_ext
    from conv_ext import bench

    assert os.path.realpath(conv_ext.__file__).startswith(os.path.realpath(root)), conv_ext.__file__
    shapes = bench.load_shapes(os.path.join(root, "benchmarks", "shapes.py"))
    _, step, _ = bench.make_model_fns(model, "train_step", "cpu", getattr(torch, dtype), layout, batch, image, shapes)
    for _ in range(2):
        step()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    print(f"{min(ts) * 1e3:.1f} {statistics.median(ts) * 1e3:.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("model", help="a network of benchmarks/models.py (resnet50, mobilenet_v2, ...)")
    ap.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.model, a.layout, a.dtype, a.batch, a.image, a.reps)
    mins = {"old": [], "new": []}
    for r in range(a.rounds):
        for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
            root = os.path.abspath(getattr(a, side))
            cmd = [sys.executable, os.path.abspath(__file__), a.old, a.new, a.model, "--layout", a.layout, "--dtype",
                   a.dtype, "--batch", str(a.batch), "--image", str(a.image), "--reps", str(a.reps), "--child", root]
            # (run from another folder: the checkout's conv_ext must not shadow the side's package)
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd="/",
                                 env={**os.environ, "PYTHONPATH": root}).stdout.split()
            mins[side].append(float(out[0]))
            print(f"{side}  min {out[0]} median {out[1]} ms", flush=True)
    print(f"old/new (best mins): {min(mins['old']) / min(mins['new']):.2f}x; "
          f"median of the old and new mins: {statistics.median(mins['old']):.1f} / {statistics.median(mins['new']):.1f} ms")


if __name__ == "__main__":
    main()
