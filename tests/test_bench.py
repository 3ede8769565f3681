"""The benchmark tooling: suites, the in-repo models, the timing helpers and the CLI end to end.

Kept small: the CLI runs two tiny cases with a short time budget, on one thread.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import conv_ext
from conv_ext import bench

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import models, shapes  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and conv_ext.info()["cuda_available"]


def run_cli(args, cwd, timeout=240):
    env = dict(os.environ)
    # the checkout's conv_ext wins over an installed one, as in the rest of the test run
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-m", "conv_ext.bench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# models and suites
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, params, convs", [
    ("resnet18", 11_689_512, 20), ("resnet50", 25_557_032, 53), ("mobilenet_v2", 3_504_872, 52),
    ("resnext50_32x4d", 25_028_904, 53),
])
def test_models_have_the_published_sizes(name, params, convs):
    """Parameter counts of the published architectures (as torchvision reports them)."""
    with torch.device("meta"):
        model = models.MODELS[name][0]()
    assert sum(p.numel() for p in model.parameters()) == params
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == convs


def test_model_suites_cover_every_conv_once():
    r50 = shapes.get_suite("resnet50")
    assert len(r50) == 23  # distinct layers of ResNet-50 at 224x224
    assert sum(c.count for c in r50) == 53  # ... covering all its convs
    stem = r50[0]
    assert (stem.c, stem.h, stem.k, stem.r, stem.stride, stem.padding, stem.out_hw) == (3, 224, 64, 7, (2, 2), (3, 3), (112, 112))
    mb = shapes.get_suite("mobilenet_v2")
    assert any(c.groups == c.c == c.k and c.groups > 1 for c in mb), "depthwise layers missing"
    assert sum(c.count for c in mb) == 52
    assert len(shapes.get_suite("vgg16")) == 9


@pytest.mark.parametrize("suite", list(shapes.SUITES))
def test_suites_are_valid(suite):
    cases = shapes.get_suite(suite)
    assert cases and len({c.name for c in cases}) == len(cases)
    for c in cases:
        assert c.c % c.groups == 0 and c.k % c.groups == 0
        assert min(c.out_hw) > 0 and c.flops() > 0
    assert all(c.n == 3 for c in shapes.get_suite(suite, batch=3))


def test_tiny_suite_has_the_readme_layer():
    case = next(c for c in shapes.get_suite("tiny") if c.name == "readme.8x8")
    assert (case.n, case.c, case.h, case.w, case.k, case.out_hw) == (1, 3, 8, 8, 16, (8, 8))
    assert case.flops() == 2 * 16 * 8 * 8 * 3 * 3 * 3


# ---------------------------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------------------------
def test_measure_interleaves_and_respects_min_reps():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    out = bench.measure(fns, bench.CpuTimer(), budget=0.0, warmup=1, min_reps=4)
    assert out["a"]["reps"] == out["b"]["reps"] == 4
    inner = out["a"]["inner"]
    timed = calls[2:]  # after one warm-up call each
    blocks = [timed[i] for i in range(0, len(timed), inner)]
    assert blocks == ["a", "b", "b", "a", "a", "b", "b", "a"]  # alternating who goes first
    s = bench.summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_s"] == 3.0 and s["min_s"] == 1.0 and s["spread"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("pass_name", bench.PASSES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_case_functions_agree(pass_name, layout):
    case = shapes.Case("t", 2, 4, 7, 6, 6, 3, 3, (2, 1), (1, 1), (1, 1), 2, True)
    torch_fn, ext_fn, compare = bench.make_case_fns(case, pass_name, "cpu", torch.float32, layout)
    assert compare() < 1e-5
    a, b = torch_fn(), ext_fn()
    assert a.shape == b.shape


def test_fma_peak_loop():
    """The benchmark's FMA yardstick: a real rate with SIMD, float64 at about half of float32's
    (half the lanes per vector); nothing without SIMD (the portable test checks 0)."""
    f32 = conv_ext._C.cpu_fma_peak_gflops(False, 0.05)
    f64 = conv_ext._C.cpu_fma_peak_gflops(True, 0.05)
    if conv_ext._C.cpu_capability() == "portable":
        assert f32 == f64 == 0
    else:
        assert 0 < f64 < f32


def test_thread_round_trip():
    """The probe of whether torch's first two threads share an L3 (bench.thread_round_trip, one
    value a case): -1 from the library on one thread, a time on two; None on GPU; the summary line
    gives the cases' spread."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert conv_ext._C.cpu_thread_round_trip_ns() == -1
        assert bench.thread_round_trip("cpu") is None
        if (os.cpu_count() or 1) >= 2:
            torch.set_num_threads(2)
            assert 0 < conv_ext._C.cpu_thread_round_trip_ns() < 1e6
    finally:
        torch.set_num_threads(threads)
    assert bench.thread_round_trip("cuda") is None
    line = bench.round_trip_line([{"thread_round_trip_ns": 350.0}, {}, {"thread_round_trip_ns": 61.0},
                                  {"thread_round_trip_ns": 58.0}])
    assert "min 58, median 61, max 350 ns" in line
    assert bench.round_trip_line([{"case": "x"}]) is None


def test_geomean():
    assert bench.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert bench.geomean([None, float("nan")]) is None
    gm = bench.geomeans([{"pass": "forward", "speedup": 2.0}, {"pass": "all", "speedup": 0.5}])
    assert gm["overall"] == pytest.approx(1.0) and gm["forward"] == 2.0 and gm["all"] == 0.5


# ---------------------------------------------------------------------------------------------
# the command line, end to end
# ---------------------------------------------------------------------------------------------
def test_cli_writes_json_csv_markdown_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "results"
    args = ["--suite", "tiny", "--cases", "readme,cifar.shortcut", "--passes", "forward,all", "--device", "cpu",
            "--threads", "1", "--budget", "0.05", "--min-reps", "3", "--warmup", "1", "--progress", "on",
            "--json", str(out / "r-{device}.json"), "--csv", str(out / "r.csv"), "--md", str(out / "r.md"),
            "--plot", str(out / "r.png")]
    proc = run_cli(args, cwd=tmp_path)  # from another directory: the suites are found beside the package
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "geometric-mean speedup" in proc.stdout
    assert "[" in proc.stderr  # the progress bar

    data = json.loads((out / "r-cpu.json").read_text())
    assert data["meta"]["device"] == "cpu" and data["meta"]["threads"] == 1
    assert data["meta"]["peak_gflops"] > 0
    # the better of the FMA loop and torch.mm (both named in the basis)
    assert data["meta"]["peak_gflops"] >= data["meta"]["matmul_gflops"] > 0
    assert "FMA loop" in data["meta"]["peak_basis"] and "torch.mm" in data["meta"]["peak_basis"]
    rows = data["results"]
    assert [(r["case"], r["pass"]) for r in rows] == [
        ("readme.8x8", "forward"), ("readme.8x8", "all"), ("cifar.shortcut", "forward"), ("cifar.shortcut", "all")]
    for r in rows:
        assert r["check"] == "ok", r
        assert r["torch"]["median_s"] > 0 and r["conv_ext"]["median_s"] > 0 and r["conv_ext"]["reps"] >= 3
        assert r["speedup"] == pytest.approx(r["torch"]["median_s"] / r["conv_ext"]["median_s"])
        assert r["conv_ext_gflops"] == pytest.approx(r["flops"] / r["conv_ext"]["median_s"] / 1e9)
        assert 0 < r["conv_ext_pct_peak"]
    assert data["geomean_speedup"]["overall"] > 0

    with open(out / "r.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and float(table[0]["speedup"]) > 0 and table[0]["stride"] == "1x1"
    assert "| case |" in (out / "r.md").read_text()
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # redrawing from the JSON measures nothing and writes the same table
    assert bench.main(["--from-json", str(out / "r-cpu.json"), "--md", str(out / "again.md")]) == 0
    assert (out / "again.md").read_text() == (out / "r.md").read_text()


def test_cli_lists_suites(capsys):
    assert bench.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in shapes.SUITES:
        assert f"{name}:" in out


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present")
def test_cli_cuda_without_gpu_fails_clearly(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "cuda", "--suite", "tiny"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and ("no CUDA device" in err or "without its CUDA" in err)


@pytest.mark.parametrize("args, message", [
    (["--suite", "nope"], "unknown suite"), (["--passes", "sideways"], "unknown pass"),
    (["--models", "alexnet"], "unknown model"), (["--models", "resnet18", "--passes", "forward"], "unknown pass"),
])
def test_cli_rejects_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(args + ["--device", "cpu"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_cli_models_mode_in_process(tmp_path, capsys):
    """Whole networks: an nn.Conv2d copy and a converted copy, same weights, inference only."""
    code = bench.main(["--models", "cifar_resnet20", "--passes", "inference", "--batch", "2", "--threads", "1",
                       "--budget", "0.05", "--min-reps", "3", "--warmup", "1", "--device", "cpu",
                       "--json", str(tmp_path / "m.json")])
    assert code == 0, capsys.readouterr().out
    rows = json.loads((tmp_path / "m.json").read_text())["results"]
    assert rows[0]["case"] == "cifar_resnet20" and rows[0]["check"] == "ok" and rows[0]["speedup"] > 0


def test_pytest_benchmark_files_run(tmp_path):
    """benchmarks/ through pytest-benchmark (timing disabled: only that it runs)."""
    pytest.importorskip("pytest_benchmark")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
         "--suite", "tiny", "--passes", "forward,backward_weight", "-k", "readme"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 passed" in proc.stdout


def test_ab_of_builds_runs(tmp_path):
    """benchmarks/ab.py with the current build on both sides: it checks each side's result against
    torch and prints both sides' times (a cell a round) and the two ratios."""
    lib = next((ROOT / "conv_ext").glob("_C*.so"), None)
    if lib is None:
        pytest.skip("the extension is installed, not built in the checkout (ab.py swaps conv_ext/_C*.so)")
    proc = subprocess.run(
        [sys.executable, "benchmarks/ab.py", str(lib), str(lib), "2,6,9,9,6,3,2,1,3", "--pass", "backward_input",
         "--layout", "nhwc", "--reps", "3", "--rounds", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "old/new (best mins):" in proc.stdout and "median of the rounds' old/new mins:" in proc.stdout
    for side in ("old", "new"):
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"  {side}  "))
        assert line.count("/") == 2, line  # a min/median cell per round


def test_algos_step_runs():
    """benchmarks/algos.py --step: every algorithm of the pass (checked against torch), each timed
    between the other two passes of a training step."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run(
        [sys.executable, "benchmarks/algos.py", "2,32,9,9,32,3,1,1", "--pass", "backward_weight", "--step",
         "--reps", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "in a training step" in proc.stdout and "implicit_gemm" in proc.stdout and "torch" in proc.stdout


def test_in_network_runs():
    """benchmarks/in_network.py: every convolution of a network timed inside it, both sides."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run(
        [sys.executable, "benchmarks/in_network.py", "cifar_resnet20", "--batch", "2", "--reps", "1", "--layout", "nhwc"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "conv time per forward" in lines[0]
    assert any(line.startswith("16->16 k3x3 s1") for line in lines)  # cifar_resnet20's 16-channel layers


def test_accuracy_search_runs():
    """benchmarks/accuracy_search.py for a few seconds: it draws cases, checks them and counts them
    (a case it reports is printed, not failed: the search is a tool, its findings go to tests)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run(
        [sys.executable, "benchmarks/accuracy_search.py", "--seed", "1", "--seconds", "3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    count = int(proc.stdout.strip().splitlines()[-1].split()[0])
    assert count > 10 and " cases, " in proc.stdout
