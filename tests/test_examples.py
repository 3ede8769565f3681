"""examples/ run as a user would run them (shortened)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cnn_basics_trains_and_matches_nn_conv2d(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cnn_basics.py"), "--epochs", "3", "--threads", "1", "--out", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "-> (1, 16, 8, 8)" in out and "weight (16, 3, 3, 3)" in out
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert len(rows) == 3
    ext_losses = [float(r[1]) for r in rows]
    nn_losses = [float(r[2]) for r in rows]
    assert ext_losses[-1] < 0.7 * ext_losses[0]  # the loss falls
    assert ext_losses == pytest.approx(nn_losses, rel=1e-3)  # and conv_ext follows nn.Conv2d
    accuracy = float(re.search(r"conv_ext.Conv2d\s+test accuracy\s+([\d.]+)%", out).group(1))
    assert accuracy > 50
    for name in ("loss.png", "filters.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
