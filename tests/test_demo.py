"""`make demo`'s code path in CI, at reduced sizes (STEELSEG_DEMO_SMALL=1): every step runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "STEELSEG_DEMO_SMALL": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "steelseg.demo", str(out)], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "held-out Kaggle Dice" in proc.stdout and "where everything is" in proc.stdout
    for path in ("eda/index.html", "report/index.html", "bundle/bundle.json", "bundle-int8/bundle.json",
                 "predict/submission.csv", "predict-int8/submission.csv", "runs/tiny-gate/model/model.json"):
        assert (out / path).is_file(), path
    assert json.loads((out / "bundle" / "bundle.json").read_text())["classifiers"] == 1
    again = subprocess.run([sys.executable, "-m", "steelseg.demo", str(out)], capture_output=True, text=True,
                           timeout=900, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-2000:]  # the demo folder is made anew
