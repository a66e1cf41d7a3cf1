"""`make demo` in CI at its real sizes, on both instruction-set paths: it must show models that learned.

The demo runs in full on this CPU's own path (every step: EDA, report, ONNX int8 export, overlays), then
its scoring steps again on the AVX2 path (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, which an
AVX-512 machine follows when told; an AVX2 machine follows it anyway). On each path: the tuned pipeline
beats predicting nothing by 0.05 Kaggle Dice on the held-out strips, the gate's AUC is above 0.8, the
segmenter's mIoU is clearly above 0, and the gate's and the segmenter's logged image-level metrics equal
scikit-learn's on the saved validation predictions. The two paths agree within 0.05 Dice.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _demo(out: Path, cwd: Path, **env: str) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-m", "steelseg.demo", str(out)], capture_output=True, text=True,
                          timeout=900, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "demo.json").read_text()), proc.stdout


def _saved(run: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with open(run / "val_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = [k[len("score_"):] for k in rows[0] if k.startswith("score_")]
    scores = np.array([[float(r[f"score_{n}"]) for n in names] for r in rows])
    truth = np.array([[int(r[f"true_{n}"]) for n in names] for r in rows])
    best = json.loads((run / "model" / "model.json").read_text())["best"]
    assert {int(r["epoch"]) for r in rows} == {best["epoch"]}  # the predictions of the kept epoch
    return scores, truth, best["metrics"]


def _check_metrics(runs: Path) -> None:
    """The logged image-level metrics, recomputed independently from the saved predictions."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    scores, truth, logged = _saved(runs / "tiny-gate")
    aucs = [roc_auc_score(truth[:, c], scores[:, c]) for c in range(truth.shape[1])
            if 0 < truth[:, c].sum() < len(truth)]
    assert abs(np.mean(aucs) - logged["val/auc"]) < 1e-5
    f1 = np.mean([f1_score(truth[:, c], scores[:, c] > 0.5, zero_division=0.0) for c in range(truth.shape[1])])
    assert abs(f1 - logged["val/f1"]) < 1e-5
    assert abs(average_precision_score(truth.any(1), scores.max(1)) - logged["val/ap"]) < 1e-5
    assert abs(roc_auc_score(truth.any(1), scores.max(1)) - logged["val/auc_any"]) < 1e-5
    scores, truth, logged = _saved(runs / "tiny-unet")  # the segmenter: its largest pixel probability
    assert abs(average_precision_score(truth.any(1), scores.max(1)) - logged["val/ap"]) < 1e-5


def _floors(r: dict, path: str) -> None:
    assert r["dice"] >= r["empty"] + 0.05, (path, r)
    assert r["gate_auc"] > 0.8, (path, r)
    assert r["seg_miou"] > 0.2 and r["seg_ap"] > 0.9, (path, r)


def test_demo_learns_on_both_instruction_set_paths(tmp_path) -> None:
    out = tmp_path / "demo"
    native, stdout = _demo(out, tmp_path)
    assert "held-out Kaggle Dice" in stdout and "where everything is" in stdout
    for path in ("eda/index.html", "report/index.html", "bundle/bundle.json", "bundle-int8/bundle.json",
                 "predict/submission.csv", "predict-int8/submission.csv", "runs/tiny-gate/model/model.json"):
        assert (out / path).is_file(), path
    assert json.loads((out / "bundle" / "bundle.json").read_text())["classifiers"] == 1
    assert abs(native["int8"] - native["dice"]) <= 0.02, native  # the int8 export keeps its Dice
    _floors(native, "native")
    _check_metrics(out / "runs")
    # the AVX2 path, the steps that decide the score; the demo folder is made anew
    avx2, _ = _demo(out, tmp_path, STEELSEG_DEMO_CORE="1", **AVX2)
    assert not (out / "eda").exists()
    _floors(avx2, "avx2")
    _check_metrics(out / "runs")
    assert abs(native["dice"] - avx2["dice"]) <= 0.05, (native, avx2)
