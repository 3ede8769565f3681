"""A/B of two builds of conv_ext on one op and shape: the old and the new extension library
(_C*.so) each in its own copy of the package, run in alternating processes (old, new, new, old,
...) so that the machine's drift hits both alike (each side first in half the pairs); each
process times `--reps` calls of one op and prints its min and median, and the round trip of a
cache line between its two threads (whether the VM's two cores shared an L3 or a core while it
ran: conv_ext.bench's thread_round_trip). Two summaries: the ratio of the two sides' best mins,
and the median over the pairs of old min / new min. One build against itself on the noisy Intel
VM (4,192,28,28,192,3,2,1,192 NCHW backward-input, 10 rounds): 1.12x best mins with old always
first; 1.01x / 1.01x in turns. Trust a change where both summaries agree.

    cp conv_ext/_C*.so /tmp/old.so        # before the change
    ... edit, rebuild (python setup.py build_ext --inplace) ...
    PYTHONPATH=. python benchmarks/ab.py /tmp/old.so conv_ext/_C*.so 4,96,112,112,96,3,2,1,96 \\
        --layout nchw --pass backward_weight

The shape is N,C,H,W,K,R[,stride,padding,groups]; the problem is built by benchmarks/algos.py. The op is called
through torch.ops.conv_ext with the default algorithm choice (set CONV_EXT_* variables in the
environment to change it); the output of the first call of each process is checked against
torch's. --old-env/--new-env set variables on one side only, to A/B one build under two settings.
Use it for changes smaller than the machine's drift between runs (10-30% here).

With --model the shape names a network of benchmarks/models.py instead, and --pass is train_step
(forward, backward and an SGD step) or inference: conv_ext.bench's make_model_fns, the conv_ext
side only, at --batch and --image (use a few --reps: a step of ResNet-50 takes ~0.5 s). For
dtypes where torch's own step is far slower than ours (float16 on the CPU: 33 s a ResNet-50 step
at 112x112, batch 4, against 0.2 s) `python -m conv_ext.bench --models M --passes train_step`
spends nearly all its time on torch's side; this leaves torch out (and compares nothing with it).

    PYTHONPATH=. python benchmarks/ab.py /tmp/old.so conv_ext/_C*.so resnet50 --model \\
        --pass train_step --dtype float16 --layout nhwc --reps 5 --rounds 4
"""
import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PKG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "conv_ext")


def model_fn(name, layout, pass_name, dtype, batch, image):
    """conv_ext's side of conv_ext.bench's whole-network pass (train_step or inference)."""
    import torch

    from conv_ext import bench

    shapes = bench.load_shapes(os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes.py"))
    return bench.make_model_fns(name, pass_name, "cpu", getattr(torch, dtype), layout, batch, image, shapes)[1]


def child(shape, layout, pass_name, reps, dtype, new_filter, model):
    import torch

    import conv_ext  # noqa: F401  (registers torch.ops.conv_ext)
    from algos import problems  # this script's folder is on sys.path

    if model:
        fn = model_fn(shape, layout, pass_name, dtype, *model)
    else:
        fns, filt = problems(shape, layout, getattr(torch, dtype))
        torch_fn, fn = fns[pass_name]
        if new_filter:  # a new version of the filter before every call, as after an optimizer step
            call = fn

            def fn():
                torch.autograd.graph.increment_version(filt)
                return call()
        out, ref = fn().double(), torch_fn().double()
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        if not err < (1e-4 if dtype == "float32" else 2e-2):
            raise SystemExit(f"wrong result: relative error {err:.2e}")
    for _ in range(3):
        fn()
    # whether the two cores shared an L3 while this process ran (bench.thread_round_trip; an old
    # build without the probe prints -1)
    probe = getattr(conv_ext._C, "cpu_thread_round_trip_ns", lambda: -1.0)
    round_trip = probe()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    print(f"{min(ts) * 1e3:.4f} {statistics.median(ts) * 1e3:.4f} {max(round_trip, probe()):.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", help="the old build's extension library (a copy of conv_ext/_C*.so)")
    ap.add_argument("new", help="the new build's extension library")
    ap.add_argument("shape", help="N,C,H,W,K,R[,stride,padding,groups] (--model: a network's name)")
    ap.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")
    ap.add_argument("--pass", dest="pass_name", default="forward",
                    choices=("forward", "backward_input", "backward_weight", "train_step", "inference"),
                    help="an op's pass, or with --model train_step or inference")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "float64"), default="float32")
    ap.add_argument("--reps", type=int, default=200, help="calls timed per process")
    ap.add_argument("--rounds", type=int, default=6, help="processes per side, alternated")
    ap.add_argument("--old-env", action="append", default=[], metavar="VAR=VALUE",
                    help="set in the old side's processes only (repeatable): A/B one build under two settings")
    ap.add_argument("--new-env", action="append", default=[], metavar="VAR=VALUE", help="the same for the new side")
    ap.add_argument("--new-filter", action="store_true",
                    help="a new version of the filter before each call (a training step: no packed-filter cache)")
    ap.add_argument("--model", action="store_true", help="the shape names a network of benchmarks/models.py")
    ap.add_argument("--batch", type=int, default=4, help="--model's batch")
    ap.add_argument("--image", type=int, default=None, help="--model's image size (default: the network's own)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model != (args.pass_name in ("train_step", "inference")):
        raise SystemExit("--pass train_step and inference go with --model, the ops' passes without it")
    if args.child:
        return child(args.shape, args.layout, args.pass_name, args.reps, args.dtype, args.new_filter,
                     (args.batch, args.image) if args.model else None)

    built = glob.glob(os.path.join(PKG, "_C*.so"))
    if not built:
        raise SystemExit("build the extension first (its file name is taken from conv_ext/_C*.so)")
    with tempfile.TemporaryDirectory() as tmp:
        roots = {}
        for side, lib in (("old", args.old), ("new", args.new)):
            root = os.path.join(tmp, side)
            shutil.copytree(PKG, os.path.join(root, "conv_ext"),
                            ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
            shutil.copy(lib, os.path.join(root, "conv_ext", os.path.basename(built[0])))
            roots[side] = root
        res = {"old": [], "new": []}
        for rnd in range(args.rounds):
            # old first in even rounds, new first in odd ones: a process that runs second in a
            # pair (the machine warmer, or its clocks lower) is each side's as often
            for side in (("old", "new") if rnd % 2 == 0 else ("new", "old")):
                env = dict(os.environ, PYTHONPATH=roots[side])
                env.update(kv.split("=", 1) for kv in (args.old_env if side == "old" else args.new_env))
                cmd = [sys.executable, os.path.abspath(__file__), args.old, args.new, args.shape, "--layout",
                       args.layout, "--pass", args.pass_name, "--dtype", args.dtype, "--reps", str(args.reps), "--child"]
                cmd += ["--new-filter"] if args.new_filter else []
                cmd += ["--model", "--batch", str(args.batch)] if args.model else []
                cmd += ["--image", str(args.image)] if args.image else []
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{side}: {out.stderr.strip() or out.stdout.strip()}")
                res[side].append(tuple(float(t) for t in out.stdout.split()))
    step = ", new filter each call" if args.new_filter else ""
    print(f"{args.shape} {args.layout} {args.dtype} {args.pass_name}{step}, ms min / median of {args.reps} calls, "
          f"{args.rounds} processes per side in pairs, the first of a pair old and new by turns [core-to-core round "
          f"trip, ns, the larger of before and after: tens on one core or L3, hundreds across a mesh or two L3s]")
    for side in ("old", "new"):
        cells = "  ".join(f"{a:.3f}/{b:.3f}" + (f" [{rt:.0f}]" if rt > 0 else "") for a, b, rt in res[side])
        print(f"  {side}  {cells}   best min {min(a for a, _, _ in res[side]):.3f}")
    ratio = min(a for a, _, _ in res["old"]) / min(a for a, _, _ in res["new"])
    pairs = statistics.median(o[0] / n[0] for o, n in zip(res["old"], res["new"]))
    print(f"  old/new (best mins): {ratio:.2f}x; median of the rounds' old/new mins: {pairs:.2f}x")


if __name__ == "__main__":
    main()
