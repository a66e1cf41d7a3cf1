"""The model registry (issue #40): register, promote through the gate (accepted for a better version, refused for
one that misses a defect the champion finds), rollback, and models:/LINE@champion followed by `steelseg watch`.

The two kinds of bundle are known on the gate without training: a tiny U-Net whose pixel threshold is 0 reports
every pixel (it finds every defect), and the all-empty bundle reports none (it misses them all)."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.data import rle

from .conftest import cli_run, tiny_model_at

pytest.importorskip("mlflow")


def _gate(root: Path, n: int = 4) -> Path:
    """A Kaggle-layout set of 32x48 images, each wholly one defect of class 1."""
    (root / "train_images").mkdir(parents=True)
    rows = []
    for k in range(n):
        Image.fromarray(np.full((32, 48), 60 + 20 * k, np.uint8)).save(root / "train_images" / f"g{k}.png")
        rows.append([f"g{k}.png", 1, rle.encode(np.ones((32, 48), np.uint8))])
    with open(root / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["ImageId", "ClassId", "EncodedPixels"], *rows])
    (root / "classes.txt").write_text("defect\n")
    return root


def _bundles(root: Path) -> tuple[Path, Path]:
    from steelseg.inference import write_bundle
    from steelseg.inference.postprocess import PostProcess

    seg = tiny_model_at(root / "seg", ["defect"])
    everything = write_bundle(root / "all", [seg], pp=PostProcess([0.0], [0]), kind="plain")
    nothing = write_bundle(root / "none", [], [], None, ["defect"], kind="all-empty")
    return everything, nothing


def test_register_promote_refuse_rollback_and_watch_follows(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("STEELSEG_CACHE", str(tmp_path / "cache"))
    reg = f"sqlite:///{tmp_path / 'reg' / 'mlflow.db'}"
    gate = _gate(tmp_path / "gate")
    everything, nothing = _bundles(tmp_path)
    flags = ["--registry", reg]
    versions = []
    for b in (nothing, everything, nothing):
        rc, out, err = cli_run(capsys, "register", b, "--name", "line2", *flags)
        assert rc == 0, err
        versions.append(int(out.split("as version ")[1].split()[0]))
    assert versions == [1, 2, 3]
    rc, out, _ = cli_run(capsys, "promote", "line2", "--candidate", "1", "--gate", gate, *flags)
    assert rc == 0 and "PROMOTED: no champion yet" in out, out
    rc, out, _ = cli_run(capsys, "promote", "line2", "--candidate", "2", "--gate", gate, *flags)
    assert rc == 0 and "PROMOTED" in out and "missed 0 of 4" in out, out  # finds all, Dice 1.0 against 0.0
    rc, out, _ = cli_run(capsys, "promote", "line2", "--candidate", "3", "--gate", gate, *flags)
    assert rc == 4 and "REFUSED: misses 4 defective image(s) the champion finds" in out, out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(reg, reg)
    assert int(client.get_model_version_by_alias("line2", "champion").version) == 2
    refused = json.loads(client.get_model_version("line2", "3").tags["steelseg.promotion"])
    assert not refused["promoted"] and refused["champion_score"]["dice"] == pytest.approx(1.0)
    assert refused["candidate_score"]["dice"] == pytest.approx(0.0)
    _watch_follows(tmp_path, reg, client, capsys)
    _serve_follows(tmp_path, reg, everything)


def _serve_follows(tmp_path: Path, reg: str, everything: Path) -> None:
    """serve started on a bundle that finds everything, following the champion (v1 after the rollback: finds
    nothing): the swap changes the predictions, the id answers carry, and the review queue's and feedback's bundle."""
    from steelseg.serve.service import ServeConfig, Service

    queue = tmp_path / "queue"
    queue.mkdir()
    cfg = ServeConfig(bundle=str(everything), feedback=str(tmp_path / "fb"), queue=str(queue),
                      follow="models:/line2@champion", registry=reg, check_every=3600)
    svc = Service(cfg)
    image = np.full((32, 48), 90, np.uint8)
    before, old_id = svc.predict([image])[0], svc.bundle_id
    assert before.masks.any()
    assert svc.follow() is True and svc.follow() is False
    assert svc.bundle_id != old_id and svc.queue.bundle_id == svc.bundle_id == svc.feedback.bundle_id
    assert not svc.predict([image])[0].masks.any()


def _watch_follows(tmp_path: Path, reg: str, client, capsys) -> None:
    """watch on models:/line2@champion (v2, finds everything); rollback to v1 (finds nothing) takes over."""
    from steelseg.line.registry import fetch
    from steelseg.line.watch import WatchConfig, watch

    cam, out = tmp_path / "cam", tmp_path / "out"
    cam.mkdir()
    bundle, version = fetch("models:/line2@champion", reg)
    assert version == 2
    stop, said = threading.Event(), []
    cfg = WatchConfig(str(bundle), cam, out, follow="models:/line2@champion", registry=reg, check_every=0.2)
    t = threading.Thread(target=lambda: watch(cfg, stop, said.append))
    t.start()
    try:
        Image.new("L", (48, 32), 90).save(cam / "a.png")
        _wait(lambda: _rows(out) == 1)
        rc, text, _ = cli_run(capsys, "rollback", "line2", "--registry", reg)
        assert rc == 0 and "from version 2 to version 1" in text, text
        _wait(lambda: any("switched to version 1" in s for s in said))
        Image.new("L", (48, 32), 90).save(cam / "b.png")
        _wait(lambda: _rows(out) == 2)
    finally:
        stop.set()
        t.join(timeout=30)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["classes"]["defect"]["found"] for r in rows] == [True, False]  # v2, then v1 after the rollback
    assert int(client.get_model_version_by_alias("line2", "champion").version) == 1
    rc, _, err = cli_run(capsys, "rollback", "line2", "--registry", reg)
    assert rc == 2 and "no earlier champion" in err


def _rows(out: Path) -> int:
    f = out / "results.jsonl"
    return f.read_text().count("\n") if f.exists() else 0


def _wait(cond, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
