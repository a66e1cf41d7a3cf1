"""``steelseg watch`` (issue #40): the backlog oldest first, files arriving while it runs, a file still being
written read only once complete, a corrupt file quarantined with its reason, the archive, and kill -9 then
restart with no row lost or repeated, then SIGTERM ending it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.data import rle
from steelseg.line.watch import WatchConfig, watch

from .conftest import tiny_bundle_at

pytest.importorskip("watchdog")

NAMES = ["pit", "scratch"]


def _png(path: Path, seed: int, size: tuple[int, int] = (64, 96)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(path)
    return path


def _rows(out: Path) -> list[dict]:
    f = out / "results.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def _wait(cond, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle_at(tmp_path_factory.mktemp("watch"), NAMES)


def test_backlog_arrivals_partial_and_corrupt_files(bundle: Path, tmp_path: Path) -> None:
    cam, out, done = tmp_path / "cam", tmp_path / "out", tmp_path / "done"
    cam.mkdir()
    for k, name in enumerate(["old.png", "older.png"]):
        _png(cam / name, k)
    os.utime(cam / "older.png", (time.time() - 100, time.time() - 100))
    (cam / "notes.txt").write_text("not an image")  # ignored, left alone
    stop = threading.Event()
    lines: list[str] = []
    cfg = WatchConfig(str(bundle), cam, out, archive=done, settle=0.3, grace=0.5, overlays=True)
    t = threading.Thread(target=lambda: watch(cfg, stop, lines.append))
    t.start()
    try:
        _wait(lambda: len(_rows(out)) == 2)
        assert [r["id"] for r in _rows(out)] == ["older.png", "old.png"]  # the backlog, oldest first
        # a file written in two halves with a pause: not read before it is complete
        raw = _png(tmp_path / "slow.png", 7).read_bytes()
        with open(cam / "slow.png", "wb") as fh:
            fh.write(raw[: len(raw) // 2])
            fh.flush()
            time.sleep(0.6)  # longer than --settle: only the open file keeps it from being read
            fh.write(raw[len(raw) // 2:])
        (cam / "bad.png").write_bytes(b"\x89PNG not really")  # corrupt: quarantined once it stops changing
        (cam / "new.png.part").write_bytes(_png(tmp_path / "new.png", 3).read_bytes())
        os.replace(cam / "new.png.part", cam / "new.png")  # moved in: complete at once
        _wait(lambda: len(_rows(out)) == 4 and (out / "quarantine" / "bad.png").exists())
    finally:
        stop.set()
        t.join(timeout=30)
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == ["new.png", "old.png", "older.png", "slow.png"]
    assert len({r["key"] for r in rows}) == 4
    slow = next(r for r in rows if r["id"] == "slow.png")
    assert (slow["width"], slow["height"]) == (96, 64)  # read whole, not the first half
    for r in rows:
        assert set(r["classes"]) == set(NAMES) and r["latency_ms"] >= 0
        for c in r["classes"].values():
            assert c["found"] == (c["area"] > 0) and (not c["rle"] or rle.rle_area(c["rle"], 64 * 96) == c["area"])
    assert sorted(p.name for p in done.iterdir()) == ["new.png", "old.png", "older.png", "slow.png"]
    assert "bad.png" in (out / "quarantine" / "bad.png.reason.txt").read_text()  # the reader's error, naming it
    assert sorted(p.name for p in cam.iterdir()) == ["notes.txt"]
    assert len(list((out / "overlays").glob("*.png"))) == 4
    assert any("quarantined bad.png" in ln for ln in lines)


def test_kill_9_then_restart_loses_no_row_and_sigterm_ends_cleanly(bundle: Path, tmp_path: Path) -> None:
    cam, out = tmp_path / "cam", tmp_path / "out"
    cam.mkdir()
    n = 24
    for k in range(n):
        _png(cam / f"{k:03d}.png", k, (256, 512))
    cmd = [sys.executable, "-m", "steelseg.cli", "watch", str(bundle), str(cam), "--out", str(out), "--batch", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: len(_rows(out)) >= 3, 120)
    finally:
        first.kill()  # kill -9, mid-stream
        first.wait()
    assert len(_rows(out)) < n, "the first run ended before the kill: nothing was tested"
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"key":"cut short')  # as if killed while writing a row
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: len(_rows_safe(out)) == n, 120)
        _png(cam / "late.png", 99, (256, 512))  # arrives while it runs
        _wait(lambda: len(_rows_safe(out)) == n + 1, 60)
    finally:
        second.send_signal(signal.SIGTERM)
        said, _ = second.communicate(timeout=60)
    assert second.returncode == 0, said
    assert "stopped by SIGTERM" in said and "cut short" in said, said
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == sorted([f"{k:03d}.png" for k in range(n)] + ["late.png"])
    assert len({r["key"] for r in rows}) == n + 1  # none written twice


def _rows_safe(out: Path) -> list[dict]:
    try:
        return _rows(out)
    except json.JSONDecodeError:  # the cut-short line, before the second run drops it
        return []
