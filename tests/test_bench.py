"""The bench scripts keep running (their numbers are recorded in docs/results.md, not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_rle_bench_runs() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "rle.py"), "--repeat", "3"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "outputs identical" in out.stdout and "enc+dec" in out.stdout


def test_train_bench_runs() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "train.py"), "--encoder", "tu-test_resnet", "--steps", "2",
                          "--warmup", "1", "--batch", "2", "--crop", "64,128", "--workers", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ratio steelseg/plain" in out.stdout and "waiting for data" in out.stdout
