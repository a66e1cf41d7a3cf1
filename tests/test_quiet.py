"""Quiet by default (issue #37): a training run prints steelseg's own lines and none of the libraries'
chatter, which goes to the run folder's log.txt; ``-v`` shows it; a library warning about the data is said
again in steelseg's words."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from steelseg import logs

CHATTER = ["litlogger", "💡", "LeafSpec", "Trainer(limit_train_batches", "INFO mlflow", "GPU available",
           "TPU available", "Experiment with name", "Loading `train_dataloader`", "`Trainer.fit` stopped"]
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _train(tmp: Path, data: Path, name: str, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "steelseg.cli", *flags, "train", str(CONFIG), "--data", str(data), "--name", name,
           "--out-dir", str(tmp / "runs"), "--epochs", "1", "--set", "train.limit_train_batches=2",
           "--set", "train.limit_val_batches=2", "--set", "data.num_workers=0", "--set", "data.crop=null"]
    env = {k: v for k, v in os.environ.items() if k != "STEELSEG_VERBOSE"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env, timeout=300, check=False)


def test_training_prints_no_library_chatter_unless_verbose(tmp_path: Path, synth_small: Path) -> None:
    quiet = _train(tmp_path, synth_small, "quiet")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    said = quiet.stdout + quiet.stderr
    assert "epoch 1/1" in said and "run folder:" in said
    assert [c for c in CHATTER if c in said] == [], said
    log = (tmp_path / "runs" / "quiet" / "log.txt").read_text()
    assert "GPU available" in log and "Trainer.fit` stopped" in log
    loud = _train(tmp_path, synth_small, "loud", "-v")
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "GPU available" in loud.stdout + loud.stderr


def test_a_library_warning_about_the_data_is_said_again(capsys, tmp_path: Path) -> None:
    line = logs.resay("PIL/TiffImagePlugin.py:900: UserWarning: Corrupt EXIF data.  Expecting to read 12 bytes",
                      tmp_path / "log.txt")
    assert line is not None and "an image was read with a problem" in line and str(tmp_path) in line
    assert "Corrupt EXIF" in capsys.readouterr().err
    assert logs.resay("`isinstance(treespec, LeafSpec)` is deprecated", None) is None
