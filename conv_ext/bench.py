"""conv_ext's conv2d against torch's, layer by layer: ``python -m conv_ext.bench`` / ``conv-ext-bench``.

    python -m conv_ext.bench --suite default --device auto --json out.json --csv out.csv --plot out.png
    python -m conv_ext.bench --suite resnet50 --device cuda --dtype bfloat16 --layout nhwc --batch 32
    python -m conv_ext.bench --models resnet18,mobilenet_v2 --batch 8 --image 112   # whole networks

Method (the same for every case and both sides):
  * inputs: seeded random tensors, the same values for torch and conv_ext; ``--layout nhwc`` makes
    input, weight and output gradient channels_last for both;
  * each side is run once and the results compared (relative error vs torch, reported per case);
  * warm-up calls, then *interleaved* samples (torch, conv_ext, conv_ext, torch, ...) so that a
    noisy neighbour or a clock change hits both sides alike; the number of samples adapts to
    ``--budget`` seconds per case (at least ``--min-reps``); on CPU a sample loops the call until
    it lasts >= 1 ms so that timer resolution does not matter;
  * CPU: time.perf_counter, both sides on the same torch.get_num_threads() threads (``--threads``
    sets it; conv_ext's kernels use the same OpenMP pool). CUDA: CUDA events around each call,
    L2 flushed before every call by writing a buffer twice the L2 size;
  * reported: median time per call, spread = interquartile range / median, speedup =
    torch median / conv_ext median (> 1: conv_ext is faster), GFLOP/s = 2*N*K*P*Q*(C/groups)*R*S
    per pass / median, and % of peak, where peak is measured in the same run, before and after
    the cases: on CPU the better of a register-only FMA loop on the same threads (conv_ext's
    cpu_fma_peak_gflops, fp32 or fp64) and a large torch.mm in the benchmark's dtype; on GPU a
    large torch.matmul (the nominal FMA figure from the CPU flags is recorded in the JSON beside
    it).

Passes: ``forward`` = conv2d(x, w, b); ``backward_input`` / ``backward_weight`` = one gradient alone
(torch: aten.convolution_backward with the matching output_mask; conv_ext: its
conv2d_backward_input / conv2d_backward_weight ops); ``all`` = forward + backward through
autograd (3 passes' FLOPs), each run with a new version of the parameters (as after an optimizer
step: conv_ext's packed-filter cache, which ``forward`` and the backward passes alone use when the
filter does not change, is then never hit).

Suites live in ``benchmarks/shapes.py`` of the source tree. This module finds that file next to
the package (an editable install, ``make install``, or running from the checkout); ``--shapes FILE``
points at it explicitly otherwise.
"""
import argparse
import csv
import datetime
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PASSES = ("forward", "backward_input", "backward_weight", "all")
MODEL_PASSES = ("inference", "train_step")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "complex64": torch.complex64, "cfloat": torch.complex64,
    "complex128": torch.complex128, "cdouble": torch.complex128,
}
# relative error (max |ext - torch| / max |torch|) above which a case is reported as a mismatch;
# float32 allows for TF32 in torch's cuDNN convolutions on GPU
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2,
             torch.complex128: 1e-9, torch.complex64: 2e-3}
# a complex multiply-add is four real ones: complex cases count 4x the FLOPs, against the peak of
# the real dtype of their parts
FLOPS_PER_MAC = {torch.complex64: 4, torch.complex128: 4}
MIN_SAMPLE_S = 1e-3  # a CPU sample loops the call until it lasts at least this long


# ---------------------------------------------------------------------------------------------
# finding the suites
# ---------------------------------------------------------------------------------------------
def load_shapes(path=None):
    """The ``benchmarks.shapes`` module: from ``path``, else from the source tree beside the package."""
    if path is None:
        root = Path(__file__).resolve().parents[1]
        if not (root / "benchmarks" / "shapes.py").is_file():
            raise SystemExit(
                "conv_ext.bench: the suites are defined in the source tree's benchmarks/shapes.py, "
                f"which is not beside this conv_ext ({root}); use an editable install (make install) "
                "or pass --shapes PATH/TO/benchmarks/shapes.py"
            )
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        import benchmarks.shapes as shapes

        return shapes
    path = Path(path).resolve()
    sys.path.insert(0, str(path.parent))  # its `import models` fallback
    spec = importlib.util.spec_from_file_location("conv_ext_bench_shapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
class CpuTimer:
    name = "time.perf_counter"

    def sync(self):
        pass

    def time(self, fn, inner: int) -> float:
        """Seconds per call of ``inner`` back-to-back calls."""
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - start) / inner


class CudaTimer:
    name = "CUDA events, L2 flushed before each call"

    def __init__(self, device):
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 0) or 64 * 2**20
        self.flush = torch.empty(2 * l2, dtype=torch.uint8, device=device)
        self.events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(64)]

    def sync(self):
        torch.cuda.synchronize()

    def time(self, fn, inner: int) -> float:
        total = 0.0
        for done in range(0, inner, len(self.events)):
            used = self.events[: min(len(self.events), inner - done)]
            for start, end in used:
                self.flush.zero_()  # evict the operands from L2: every call starts cold
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()
            total += sum(s.elapsed_time(e) for s, e in used) / 1e3
        return total / inner


def summarize(samples):
    """Median, quartiles, min and spread (interquartile range / median) of per-call times."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    med = statistics.median(s)
    return {
        "median_s": med, "q1_s": q[0], "q3_s": q[2], "min_s": s[0], "reps": len(s),
        "spread": (q[2] - q[0]) / med if med > 0 else 0.0,
    }


def measure(fns, timer, budget=1.0, warmup=2, min_reps=5, max_reps=200, device="cpu"):
    """Time each callable of ``fns`` (name -> fn) with interleaved samples; returns name -> summary."""
    estimate = {}
    for name, fn in fns.items():  # warm-up (caches, allocator, lazy initialisation)
        for _ in range(max(1, warmup)):
            estimate[name] = timer.time(fn, 1)
    fastest, total = min(estimate.values()), sum(estimate.values())
    inner = 1 if device == "cuda" else max(1, min(1000, math.ceil(MIN_SAMPLE_S / max(fastest, 1e-9))))
    reps = int(budget / max(total * inner, 1e-9))
    reps = max(min_reps, min(max_reps, reps))
    samples = {name: [] for name in fns}
    order = list(fns)
    for i in range(reps):
        for name in order if i % 2 == 0 else reversed(order):  # alternate who goes first
            samples[name].append(timer.time(fns[name], inner))
    result = {name: summarize(s) for name, s in samples.items()}
    for r in result.values():
        r["inner"] = inner
    return result


def matmul_peak(device, dtype, timer, seconds=1.0):
    """Best GFLOP/s of a large square torch.mm in ``dtype`` on ``device``: the yardstick for %-of-peak.
    On CPU, float16 uses float32's rate (torch.mm in float16 is a slow fallback on most CPUs, while
    the FMA units run float32 at full rate) and bfloat16 the better of its own and float32's."""
    if device == "cpu" and dtype == torch.float16:
        return _matmul_rate(device, torch.float32, timer, seconds, 2048)
    if device == "cpu" and dtype == torch.bfloat16:
        return max(_matmul_rate(device, dtype, timer, seconds / 2, 2048),
                   _matmul_rate(device, torch.float32, timer, seconds / 2, 2048))
    return _matmul_rate(device, dtype, timer, seconds, 2048 if device == "cpu" else 8192)


def measured_peak(device, dtype, timer, seconds=1.0):
    """(GFLOP/s, basis, matmul GFLOP/s): the yardstick for %-of-peak. On CPU the better of the FMA
    units' own rate (a register-only loop on torch's threads, float64's for float64, float32's for
    the rest) and matmul_peak's (the higher one on CPUs whose matrix units beat their FMAs, e.g.
    bfloat16 on AMX; torch's BLAS may reach far less than the FMA rate, as MKL does on AMD Zen 4);
    on GPU matmul_peak's."""
    import conv_ext

    mm, mm_basis = matmul_peak(device, dtype, timer, seconds / 2 if device == "cpu" else seconds)
    if device != "cpu":
        return mm, mm_basis, mm
    f64 = dtype == torch.float64
    fma = conv_ext._C.cpu_fma_peak_gflops(f64, seconds / 2)
    if fma <= mm:
        return mm, f"{mm_basis}; FMA loop {fma:.0f}", mm
    isa = conv_ext._C.cpu_capability()
    return fma, (f"{isa} FMA loop, {'float64' if f64 else 'float32'}, {torch.get_num_threads()} thread(s); "
                 f"{mm_basis}: {mm:.0f}"), mm


def thread_round_trip(device):
    """ns for a cache line to go between torch's first two threads and back (conv_ext's
    cpu_thread_round_trip_ns), or None (GPU, one thread). It depends on where the host put the two
    threads: on this project's 2-core VMs ~50 ns as hyperthreads of one core (which then also
    halves compute), ~60 ns on two cores of one L3 (AMD EPYC), 105-220 ns on two cores of a big
    mesh L3 (Intel Xeon), ~350 ns across two L3s (AMD EPYC). Kernels that pass data between
    threads are slower the longer it is: recorded per case."""
    import conv_ext

    if device != "cpu":
        return None
    ns = conv_ext._C.cpu_thread_round_trip_ns()
    return ns if ns > 0 else None


def round_trip_line(results):
    """One line on the per-case round trips (thread_round_trip), or None when none was measured."""
    ns = sorted(r["thread_round_trip_ns"] for r in results if r.get("thread_round_trip_ns"))
    if not ns:
        return None
    return (f"Core-to-core round trip before each case (torch's first two threads; tens of ns on one core or "
            f"one L3, hundreds across a mesh or two L3s): min {ns[0]:.0f}, median {ns[len(ns) // 2]:.0f}, "
            f"max {ns[-1]:.0f} ns")


def set_pct_peak(r, peak):
    """A result row's % of peak for both sides (rows without a FLOP rate: models, errors, keep none)."""
    if r.get("torch_gflops") is not None:
        r["torch_pct_peak"] = 100 * r["torch_gflops"] / peak
        r["conv_ext_pct_peak"] = 100 * r["conv_ext_gflops"] / peak


def _matmul_rate(device, dtype, timer, seconds, size):
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    fn = lambda: torch.mm(a, b)  # noqa: E731
    best, spent, reps = float("inf"), 0.0, 0
    timer.time(fn, 1)
    while reps < 3 or (spent < seconds and reps < 50):
        t = timer.time(fn, 1)
        best, spent, reps = min(best, t), spent + t, reps + 1
        if spent > 10 * seconds:  # a very slow fallback path: enough
            break
    return 2 * size**3 / best / 1e9, f"torch.mm {size}x{size} {dtype_name(dtype)}, best of {reps}"


def nominal_cpu_peak(threads, dtype):
    """Nominal FMA peak from /proc/cpuinfo (current MHz x FMA lanes x 2 x FMA pipes x threads):
    recorded for reference only; the %-of-peak columns use the measured matmul rate."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, "no /proc/cpuinfo"
    fields = {}
    for line in info.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip(), v.strip())
    flags = set(fields.get("flags", "").split())
    try:
        mhz = float(fields.get("cpu MHz", "0"))
    except ValueError:
        mhz = 0.0
    vendor, family = fields.get("vendor_id", ""), int(fields.get("cpu family", "0") or 0)
    if "avx512f" in flags:
        # Zen 4 (family 25) executes 512-bit FMAs as two 256-bit halves: 2 pipes x 8 fp32 lanes
        fp32_per_cycle = 32 if (vendor == "AuthenticAMD" and family <= 25) else 64
    elif "fma" in flags and "avx2" in flags:
        fp32_per_cycle = 32
    else:
        fp32_per_cycle = 8
    per_cycle = {torch.float64: fp32_per_cycle // 2}.get(dtype, fp32_per_cycle)
    if not mhz:
        return None, "cpu MHz unknown"
    gflops = threads * mhz * 1e-3 * per_cycle
    basis = f"{threads} thread(s) x {mhz:.0f} MHz (cpuinfo, current) x {per_cycle} flop/cycle ({fields.get('model name', '?')})"
    return gflops, basis


# ---------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------
def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def make_case_fns(case, pass_name, device, dtype, layout, seed=0):
    """(torch_fn, conv_ext_fn, compare) for one case and pass; compare() -> relative error."""
    import conv_ext

    ops = torch.ops.conv_ext
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format

    def rand(*shape, scale=1.0):  # complex: random real and imaginary parts
        t = (torch.randn(*shape, generator=gen, dtype=torch.complex64 if dtype.is_complex else torch.float32) * scale)
        t = t.to(device=device, dtype=dtype)
        return t.contiguous(memory_format=fmt) if len(shape) == 4 else t

    p, q = case.out_hw
    x = rand(case.n, case.c, case.h, case.w)
    w = rand(case.k, case.c // case.groups, case.r, case.s, scale=(case.c // case.groups * case.r * case.s) ** -0.5)
    b = rand(case.k) if case.bias else None
    dy = rand(case.n, case.k, p, q)
    geo = (list(case.stride), list(case.padding), list(case.dilation), case.groups)
    stride, padding, dilation, groups = geo

    if pass_name == "forward":
        def torch_fn():
            return F.conv2d(x, w, b, stride, padding, dilation, groups)

        def ext_fn():
            return conv_ext.conv2d(x, w, b, stride, padding, dilation, groups)

        outputs = (torch_fn, ext_fn)
    elif pass_name in ("backward_input", "backward_weight"):
        mask = [pass_name == "backward_input", pass_name == "backward_weight", False]
        index = 0 if mask[0] else 1

        if dtype.is_complex:  # torch has no complex convolution_backward: time its autograd graph's pass
            leaf = (x if mask[0] else w).detach().requires_grad_()
            y = F.conv2d(*((leaf, w) if mask[0] else (x, leaf)), None, stride, padding, dilation, groups)

            def torch_fn():
                return torch.autograd.grad(y, leaf, dy, retain_graph=True)[0]
        else:
            def torch_fn():
                return torch.ops.aten.convolution_backward(
                    dy, x, w, None, stride, padding, dilation, False, [0, 0], groups, mask
                )[index]

        if mask[0]:
            def ext_fn():
                return ops.conv2d_backward_input(dy, w, list(x.shape), *geo)
        else:
            def ext_fn():
                return ops.conv2d_backward_weight(dy, x, list(w.shape), *geo)

        outputs = (torch_fn, ext_fn)
    elif pass_name == "all":
        leaves = {}
        for side in ("torch", "ext"):
            leaves[side] = [x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()]
            leaves[side].append(b.detach().clone().requires_grad_() if b is not None else None)

        def run(side, conv):
            xs, ws, bs = leaves[side]
            for t in (xs, ws, bs):
                if t is not None:
                    t.grad = None
                    # as an optimizer step would: a new version of every parameter, so conv_ext's
                    # packed-filter cache (kept only for unchanged filters) does not apply
                    torch.autograd.graph.increment_version(t)
            conv(xs, ws, bs, stride, padding, dilation, groups).backward(dy)
            return ws.grad

        def torch_fn():
            return run("torch", F.conv2d)

        def ext_fn():
            return run("ext", conv_ext.conv2d)

        outputs = (torch_fn, ext_fn)
    else:
        raise ValueError(f"unknown pass {pass_name!r}; expected one of {', '.join(PASSES)}")

    def compare():
        expected, actual = outputs[0](), outputs[1]()
        errors = [_rel_error(actual, expected)]
        if pass_name == "all":  # the weight grad is returned; the input grads are compared too
            errors.append(_rel_error(leaves["ext"][0].grad, leaves["torch"][0].grad))
        return max(errors)

    return outputs[0], outputs[1], compare


def _rel_error(actual, expected):
    if actual.shape != expected.shape:
        return float("inf")
    if expected.numel() == 0:
        return 0.0
    wide = torch.complex128 if actual.is_complex() else torch.float64
    a, e = actual.to(wide), expected.to(wide)
    scale = e.abs().max().item()
    return (a - e).abs().max().item() / max(scale, 1e-30)


def make_model_fns(model_name, pass_name, device, dtype, layout, batch, image, shapes, seed=0):
    """(torch_fn, conv_ext_fn, compare) for a whole network: the same initial weights, one copy
    with nn.Conv2d and one converted by conv_ext.convert."""
    import copy

    import conv_ext

    make, default_image = shapes.models.MODELS[model_name]
    image = image or default_image
    torch.manual_seed(seed)
    base = make().to(device=device, dtype=dtype)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    base = base.to(memory_format=fmt)
    ext = conv_ext.convert(copy.deepcopy(base))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image, image, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    target = torch.randint(0, 1000, (batch,), generator=gen).to(device)

    if pass_name == "inference":
        base.eval(), ext.eval()

        def fn(model):
            with torch.no_grad():
                return model(x)
    elif pass_name == "train_step":
        base.train(), ext.train()
        opts = {id(m): torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in (base, ext)}

        def fn(model):
            opt = opts[id(model)]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x).float(), target)
            loss.backward()
            opt.step()
            return loss.detach()
    else:
        raise ValueError(f"unknown model pass {pass_name!r}; expected one of {', '.join(MODEL_PASSES)}")

    def seeded(model):  # the same dropout masks for both copies
        torch.manual_seed(seed)
        return fn(model)

    def compare():
        if pass_name == "train_step":  # compare one loss from identical weights, then let them drift
            return _rel_error(seeded(ext).reshape(1), seeded(base).reshape(1))
        return _rel_error(seeded(ext), seeded(base))

    return (lambda: fn(base)), (lambda: fn(ext)), compare


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total, enabled=None):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.width = 0

    def show(self, label):
        if not self.enabled:
            return
        frac = self.done / max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        eta = f" eta {elapsed / frac * (1 - frac):4.0f}s" if self.done else ""
        bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
        line = f"[{bar}] {self.done}/{self.total} {elapsed:4.0f}s{eta}  {label}"[:110]
        sys.stderr.write("\r" + line.ljust(self.width))
        sys.stderr.flush()
        self.width = len(line)

    def clear(self):
        if self.enabled and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


COLUMNS = [
    ("case", "<", 34), ("shape", "<", 34), ("pass", "<", 15), ("torch ms", ">", 9), ("ext ms", ">", 9),
    ("speedup", ">", 7), ("torch GF/s", ">", 10), ("ext GF/s", ">", 9), ("torch %pk", ">", 9),
    ("ext %pk", ">", 8), ("spread", ">", 6), ("check", "<", 8),
]


def _fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}" if v >= 0.01 else f"{v:.2g}"


def row_cells(r):
    if r.get("error"):
        return [r["case"], r["shape"], r["pass"], "-", "-", "-", "-", "-", "-", "-", "-", "ERROR"]
    t, e = r["torch"], r["conv_ext"]
    return [
        r["case"], r["shape"], r["pass"], _fmt(t["median_s"] * 1e3, 3), _fmt(e["median_s"] * 1e3, 3),
        _fmt(r["speedup"]), _fmt(r["torch_gflops"], 1), _fmt(r["conv_ext_gflops"], 1),
        _fmt(r["torch_pct_peak"], 1), _fmt(r["conv_ext_pct_peak"], 1),
        f"{100 * max(t['spread'], e['spread']):.0f}%", r["check"],
    ]


def text_row(cells):
    return "  ".join(f"{str(c)[:w]:{a}{w}}" for c, (_, a, w) in zip(cells, COLUMNS))


def geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def geomeans(results):
    """Geometric mean of the speedups: over all rows ("overall"), and per pass."""
    out = {"overall": geomean([r.get("speedup") for r in results])}
    for p in dict.fromkeys(r["pass"] for r in results):
        out[p] = geomean([r.get("speedup") for r in results if r["pass"] == p])
    return out


def summary_line(gm):
    parts = [f"{p} {v:.2f}x" for p, v in gm.items() if p != "overall" and v]
    overall = f"{gm['overall']:.2f}x" if gm.get("overall") else "-"
    return f"geometric-mean speedup (torch time / conv_ext time): {overall}" + (f"  ({', '.join(parts)})" if len(parts) > 1 else "")


def write_csv(path, results):
    keys = ["suite", "case", "shape", "pass", "n", "c", "h", "w", "k", "r", "s", "stride", "padding", "dilation",
            "groups", "bias", "count", "flops", "torch_ms", "conv_ext_ms", "torch_spread", "conv_ext_spread",
            "speedup", "torch_gflops", "conv_ext_gflops", "torch_pct_peak", "conv_ext_pct_peak", "reps",
            "max_rel_error", "check", "error"]
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        out.writeheader()
        for r in results:
            row = dict(r)
            for side, key in (("torch", "torch"), ("conv_ext", "conv_ext")):
                if r.get(side):
                    row[f"{key}_ms"] = r[side]["median_s"] * 1e3
                    row[f"{key}_spread"] = r[side]["spread"]
                    row["reps"] = r[side]["reps"]
            for k in ("stride", "padding", "dilation"):
                if k in row and row[k] is not None:
                    row[k] = "x".join(map(str, row[k]))
            out.writerow(row)


def write_markdown(path, results, meta, gm):
    round_trip = round_trip_line(results)
    lines = [
        f"conv_ext vs torch — {meta['device_name']}, {meta['dtype']}, {meta['layout']}, "
        f"threads={meta['threads']}, {meta['date']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Peak (measured in this run): {meta['peak_gflops']:.0f} GFLOP/s ({meta['peak_basis']})" +
        (f"  \n{round_trip}" if round_trip else ""),
        "",
        "| " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "|" + "|".join("---" if a == "<" else "---:" for _, a, _ in COLUMNS) + "|",
    ]
    for r in results:
        lines.append("| " + " | ".join(str(c) for c in row_cells(r)) + " |")
    lines += ["", summary_line(gm), ""]
    Path(path).write_text("\n".join(lines))


def write_plot(path, results, meta):
    """Speedup per case (bars, 1.0 line) on top; GFLOP/s of torch and conv_ext per pass below,
    against the peak measured in the run. Log scales, so 10x slower and 10x faster read alike."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path}", file=sys.stderr)
        return

    ok = [r for r in results if not r.get("error")]
    passes = list(dict.fromkeys(r["pass"] for r in ok))
    cases = list(dict.fromkeys(r["case"] for r in ok))
    if not ok:
        return
    colors = {"forward": "#1f77b4", "backward_input": "#ff7f0e", "backward_weight": "#2ca02c", "all": "#9467bd",
              "inference": "#1f77b4", "train_step": "#9467bd"}
    width_in = max(8.0, 0.45 * len(cases) * max(1, len(passes)) ** 0.5 + 2)
    fig, axes = plt.subplots(1 + len(passes), 1, figsize=(width_in, 3.6 + 2.8 * len(passes)), squeeze=False)
    axes = axes[:, 0]
    index = {c: i for i, c in enumerate(cases)}
    bar = 0.8 / len(passes)

    ax = axes[0]
    for j, p in enumerate(passes):
        rows = [r for r in ok if r["pass"] == p]
        xs = [index[r["case"]] - 0.4 + bar * (j + 0.5) for r in rows]
        # bars grow from the 1.0 line: up when conv_ext is faster, down when slower
        ax.bar(xs, [r["speedup"] - 1.0 for r in rows], bar, bottom=1.0, color=colors.get(p, None), label=p)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_yscale("log")
    speedups = [r["speedup"] for r in ok] + [1.0]
    ax.set_ylim(min(speedups) / 1.5, max(speedups) * 1.5)
    ax.set_ylabel("speedup vs torch\n(>1: conv_ext faster)")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([])
    gm = geomeans(ok)["overall"]
    ax.set_title(
        f"conv_ext vs torch — {meta['device_name']}, {meta['dtype']}, {meta['layout']}, threads={meta['threads']}, "
        f"{meta['date'][:16]}\ngeometric-mean speedup {gm:.2f}x" if gm else "", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)

    peak = meta.get("peak_gflops")
    for ax, p in zip(axes[1:], passes):
        rows = [r for r in ok if r["pass"] == p]
        xs = [index[r["case"]] for r in rows]
        rates = all(r.get("torch_gflops") for r in rows)  # whole models have no FLOP count: times
        value = (lambda r, side: r[f"{side}_gflops"]) if rates else (lambda r, side: r[side]["median_s"] * 1e3)
        ax.bar([x - 0.2 for x in xs], [value(r, "torch") for r in rows], 0.4, color="#999999", label="torch")
        ax.bar([x + 0.2 for x in xs], [value(r, "conv_ext") for r in rows], 0.4, color=colors.get(p), label="conv_ext")
        if peak and rates:
            ax.axhline(peak, color="red", linestyle="--", linewidth=1, label=f"peak\n{peak:.0f} GFLOP/s")
        ax.set_yscale("log")
        values = [value(r, side) for r in rows for side in ("torch", "conv_ext")]
        ax.set_ylim(min(values) / 3, max(values + ([peak] if (peak and rates) else [])) * 2)
        ax.set_ylabel(f"{p}\n" + ("GFLOP/s" if rates else "ms per call (lower is better)"))
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([])
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
    shape_of = {r["case"]: r["shape"] for r in ok}
    axes[-1].set_xticklabels([f"{c}\n{shape_of[c]}" for c in cases], rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="conv-ext-bench", description="conv_ext's conv2d vs torch's, per layer (or per model with --models).",
    )
    ap.add_argument("--suite", default="default", help="suite from benchmarks/shapes.py (see --list); default: %(default)s")
    ap.add_argument("--models", default=None, help="comma-separated networks from benchmarks/models.py "
                    "(resnet18,resnet50,mobilenet_v2,...): time whole models instead of a suite")
    ap.add_argument("--image", type=int, default=None, help="image size for --models (default: the model's own)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if available")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="default: %(default)s")
    ap.add_argument("--layout", default="nchw", choices=["nchw", "nhwc"], help="nhwc: channels_last operands")
    ap.add_argument("--batch", type=int, default=None, help="batch size for every case (default: the suite's)")
    ap.add_argument("--passes", default="forward,backward_input,backward_weight",
                    help=f"comma-separated from {','.join(PASSES)} (models: {','.join(MODEL_PASSES)}); default: %(default)s")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for both sides (default: torch's)")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timed samples per case and pass; default: %(default)s")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per side before sampling; default: %(default)s")
    ap.add_argument("--min-reps", type=int, default=5, help="fewest samples per side; default: %(default)s")
    ap.add_argument("--max-reps", type=int, default=200, help="most samples per side; default: %(default)s")
    ap.add_argument("--cases", default=None, help="only cases whose name contains one of these comma-separated words")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness comparison before timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shapes", default=None, help="path of benchmarks/shapes.py (default: beside the package)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write results as JSON ({device} is replaced)")
    ap.add_argument("--csv", default=None, metavar="FILE", help="write results as CSV ({device} is replaced)")
    ap.add_argument("--md", default=None, metavar="FILE", help="write the table as Markdown ({device} is replaced)")
    ap.add_argument("--plot", default=None, metavar="FILE.png", help="write the plot ({device} is replaced)")
    ap.add_argument("--progress", choices=["auto", "on", "off"], default="auto", help="progress bar on stderr")
    ap.add_argument("--list", action="store_true", help="list the suites and their cases, then exit")
    ap.add_argument("--from-json", default=None, metavar="FILE",
                    help="measure nothing: re-write --csv/--md/--plot from an earlier run's JSON")
    return ap, ap.parse_args(argv)


def pick_device(ap, requested):
    import conv_ext

    has_gpu = torch.cuda.is_available()
    built = conv_ext.info()["cuda_available"]
    if requested == "auto":
        return "cuda" if (has_gpu and built) else "cpu"
    if requested == "cuda":
        if not has_gpu:
            ap.error(f"--device cuda: no CUDA device is available (torch {torch.__version__}, "
                     f"torch.version.cuda={torch.version.cuda}, torch.cuda.is_available()=False); use --device cpu or auto")
        if not built:
            ap.error("--device cuda: this conv_ext was built without its CUDA kernels "
                     "(rebuild with nvcc on PATH, or FORCE_CUDA=1)")
    return requested


def main(argv=None):
    """Run the benchmark; returns the exit status (0 ok, 1 some case failed or mismatched, 2 usage)."""
    threads_before = torch.get_num_threads()
    try:
        return _main(argv)
    finally:
        torch.set_num_threads(threads_before)  # in-process callers (tests) keep their setting


def _main(argv):
    ap, args = parse_args(argv)
    import conv_ext

    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        results, meta = data["results"], data["meta"]
        gm = geomeans(results)
        if args.csv:
            write_csv(args.csv, results)
        if args.md:
            write_markdown(args.md, results, meta, gm)
        if args.plot:
            write_plot(args.plot, results, meta)
        print(summary_line(gm))
        return 0

    shapes = load_shapes(args.shapes)
    if args.list:
        for name in shapes.SUITES:
            cases = shapes.get_suite(name, args.batch)
            print(f"{name}: {len(cases)} cases, {sum(c.flops() for c in cases) / 1e9:.2f} GFLOP per pass")
            for c in cases:
                print(f"    {c.name:40s} {c.describe():34s} x{c.count}")
        return 0

    device = pick_device(ap, args.device)
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model_mode = args.models is not None
    if model_mode and dtype.is_complex:
        ap.error("--models: the models' other layers (batch norm, ReLU) take no complex tensors; use --suite")
    allowed = MODEL_PASSES if model_mode else PASSES
    passes = [p.strip() for p in args.passes.split(",") if p.strip()]
    if model_mode and args.passes == ap.get_default("passes"):
        passes = list(MODEL_PASSES)
    for p in passes:
        if p not in allowed:
            ap.error(f"--passes: unknown pass {p!r}; expected some of {','.join(allowed)}")

    if model_mode:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        for m in names:
            if m not in shapes.models.MODELS:
                ap.error(f"--models: unknown model {m!r}; known: {', '.join(shapes.models.MODELS)}")
        work = [(m, p) for m in names for p in passes]
        suite_label = "models"
    else:
        try:
            cases = shapes.get_suite(args.suite, args.batch)
        except KeyError as e:
            ap.error(f"--suite: {e.args[0]}")
        if args.cases:
            words = [w for w in args.cases.split(",") if w]
            cases = [c for c in cases if any(w in c.name for w in words)]
            if not cases:
                ap.error(f"--cases: no case of suite {args.suite!r} has {args.cases!r} in its name (see --list)")
        work = [(c, p) for c in cases for p in passes]
        suite_label = args.suite

    timer = CudaTimer(device) if device == "cuda" else CpuTimer()
    device_name = torch.cuda.get_device_name(device) if device == "cuda" else (platform.processor() or platform.machine())
    peak_dtype = dtype.to_real()  # complex: the peak of its parts' dtype
    if device == "cpu":
        nominal = nominal_cpu_peak(threads, peak_dtype)
        cpu_model = [ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if ln.startswith("model name")]
        device_name = cpu_model[0] if cpu_model else device_name
    else:
        nominal = (None, "")
    peak_start, peak_basis, matmul_start = measured_peak(device, peak_dtype, timer)

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m conv_ext.bench"] + list(sys.argv[1:] if argv is None else argv)),
        "suite": suite_label, "device": device, "device_name": device_name, "dtype": dtype_name(dtype),
        "layout": args.layout, "threads": threads, "passes": passes, "budget_s": args.budget,
        "timer": timer.name, "torch": torch.__version__, "conv_ext": conv_ext.info(),
        "python": platform.python_version(), "host": platform.node(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if device == "cuda" else None,
        "nominal_fma_peak_gflops": nominal[0], "nominal_fma_peak_basis": nominal[1],
    }

    print(f"conv_ext {conv_ext.__version__} vs torch {torch.__version__} | {suite_label} | {device_name} | "
          f"{meta['dtype']} {args.layout} | threads={threads} | timer: {timer.name}")
    print(f"peak: {peak_start:.1f} GFLOP/s ({peak_basis})" +
          (f"; nominal FMA peak {nominal[0]:.0f} GFLOP/s" if nominal[0] else ""))
    print(text_row([name for name, _, _ in COLUMNS]))
    progress = Progress(len(work), {"auto": None, "on": True, "off": False}[args.progress])
    results = []
    wall = time.perf_counter()
    for item, p in work:
        label = (item if model_mode else item.name) + " " + p
        progress.show(label)
        round_trip = thread_round_trip(device)
        r = measure_one(item, p, args, device, dtype, timer, shapes, model_mode)
        if round_trip is not None:
            r["thread_round_trip_ns"] = round_trip
        set_pct_peak(r, peak_start)
        r["suite"] = suite_label
        results.append(r)
        progress.done += 1
        progress.clear()
        print(text_row(row_cells(r)), flush=True)
        if r.get("error"):
            print(f"    error: {r['error']}", flush=True)
    progress.show("done")
    progress.clear()

    # the peak again at the end: how much the machine's state drifted during the run
    peak_end, basis_end, _ = measured_peak(device, peak_dtype, timer)
    # the better of the two: a measurement that ran while the other core was taken from us (a VM's
    # neighbour; seen once here: 117 GFLOP/s at the start of a run, 231 at its end) is not the peak
    peak, peak_basis = (peak_start, peak_basis) if peak_start >= peak_end else (peak_end, basis_end)
    for r in results:
        set_pct_peak(r, peak)
    meta.update(peak_gflops=peak, peak_basis=peak_basis, peak_start_gflops=peak_start, peak_end_gflops=peak_end,
                matmul_gflops=matmul_start,
                wall_s=time.perf_counter() - wall)
    gm = geomeans(results)
    print(summary_line(gm))
    round_trips = round_trip_line(results)
    if round_trips:
        print(round_trips)
    print(f"peak {peak_start:.1f} GFLOP/s at the start, {peak_end:.1f} at the end (drift of the machine; the "
          f"files' % of peak use the better, {peak:.1f}); "
          f"{meta['wall_s']:.0f} s")
    failed = [r for r in results if r.get("error") or r.get("check") == "MISMATCH"]
    if failed:
        print(f"{len(failed)} case(s) failed: " + ", ".join(f"{r['case']} {r['pass']} ({r['check']})" for r in failed))

    def target(path):
        out = Path(path.replace("{device}", device))
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    if args.json:
        target(args.json).write_text(json.dumps({"meta": meta, "geomean_speedup": gm, "results": results}, indent=1))
    if args.csv:
        write_csv(target(args.csv), results)
    if args.md:
        write_markdown(target(args.md), results, meta, gm)
    if args.plot:
        write_plot(target(args.plot), results, meta)
    return 1 if failed else 0


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def measure_one(item, pass_name, args, device, dtype, timer, shapes, model_mode):
    """One result row: check, then time torch and conv_ext."""
    if model_mode:
        row = {"case": item, "shape": f"{args.batch or 8}x3x{args.image or shapes.models.MODELS[item][1]}^2",
               "pass": pass_name, "flops": None}
    else:
        row = {"case": item.name, "shape": item.describe(), "pass": pass_name,
               **{k: getattr(item, k) for k in ("n", "c", "h", "w", "k", "r", "s", "stride", "padding", "dilation",
                                                 "groups", "bias", "count")}}
        row["flops"] = item.flops() * (3 if pass_name == "all" else 1) * FLOPS_PER_MAC.get(dtype, 1)
    try:
        if model_mode:
            torch_fn, ext_fn, compare = make_model_fns(
                item, pass_name, device, dtype, args.layout, args.batch or 8, args.image, shapes, args.seed)
        else:
            torch_fn, ext_fn, compare = make_case_fns(item, pass_name, device, dtype, args.layout, args.seed)
        if args.no_check:
            row["max_rel_error"], row["check"] = None, "-"
        else:
            err = compare()
            timer.sync()
            row["max_rel_error"] = err if math.isfinite(err) else None  # inf: wrong shape; nan: nan output
            # whole models: the error grows through the layers; a generous bound, reported as is
            tol = TOLERANCE[dtype] * (10 if model_mode else 1)
            row["check"] = "ok" if err <= tol else "MISMATCH"
        timed = measure({"torch": torch_fn, "conv_ext": ext_fn}, timer, args.budget, args.warmup,
                        args.min_reps, args.max_reps, device)
    except Exception as e:  # one unsupported case must not end the run: record it and go on
        row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", check="ERROR")
        return row
    row["torch"], row["conv_ext"] = timed["torch"], timed["conv_ext"]
    row["speedup"] = timed["torch"]["median_s"] / timed["conv_ext"]["median_s"]
    if row["flops"]:
        row["torch_gflops"] = row["flops"] / timed["torch"]["median_s"] / 1e9
        row["conv_ext_gflops"] = row["flops"] / timed["conv_ext"]["median_s"] / 1e9
    else:
        row["torch_gflops"] = row["conv_ext_gflops"] = None
    row["torch_pct_peak"] = row["conv_ext_pct_peak"] = None
    return row


if __name__ == "__main__":
    sys.exit(main())
