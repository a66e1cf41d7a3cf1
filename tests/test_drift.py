"""Drift monitoring (issue #40): the statistics on generated streams with known shifts (no alert on 10,000
unchanged images; a brightness shift, a dark camera and a defect-rate jump each raise their own alert within one
window), the reference a bundle gets at tune time, the watcher judging a stream and serving its metrics, `steelseg
monitor`, and the shipped alert rules and dashboard (parsed, their metric names served, `promtool` when there)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from steelseg.drift import DriftConfig, DriftMonitor, Reference, describe, worst

from .conftest import cli_run, tiny_bundle_at

ROOT = Path(__file__).resolve().parents[1]


def _signal(rng, shift: float = 0.0, gain: float = 1.0, rate: float = 0.3) -> dict:
    found = rng.random() < rate
    return {"brightness": gain * rng.normal(120 + shift, 10), "contrast": gain * abs(rng.normal(30, 4)),
            "size": "1600x256", "scores": [rng.beta(5, 2) if found else rng.beta(1, 8), rng.beta(1, 8)],
            "found": [found, False]}


def _stream(rng, n: int, **kw) -> list[dict]:
    return [_signal(rng, **kw) for _ in range(n)]


def test_unchanged_stream_raises_nothing_and_each_shift_its_alert() -> None:
    rng = np.random.default_rng(0)
    ref = Reference.from_signals(["pit", "scratch"], _stream(rng, 400))
    quiet = DriftMonitor(ref, DriftConfig(window=500))
    for s in _stream(rng, 10_000):
        quiet.add(s)
    assert len(quiet.verdicts) == 20 and {worst(v["rows"]) for v in quiet.verdicts} == {"ok"}
    for kw, signals in (({"shift": 25}, {"brightness"}), ({"gain": 0.05}, {"brightness", "contrast"}),
                        ({"rate": 0.6}, {"rate:pit", "score:pit"})):
        m = DriftMonitor(ref, DriftConfig(window=500))
        for s in _stream(rng, 500, **kw):  # one window
            m.add(s)
        (v,) = m.verdicts
        assert {r["signal"] for r in v["rows"] if r["level"] == "alert"} == signals, (kw, describe(v["rows"]))
    small = DriftMonitor(Reference.from_signals(["pit", "scratch"], _stream(rng, 40)), DriftConfig(window=50))
    for s in _stream(rng, 50, gain=0.05):
        small.add(s)
    assert worst(small.verdicts[0]["rows"]) == "unjudged"  # 40 reference images: reported, never alerted


def _images(folder: Path, n: int, seed: int, gain: float = 1.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        img = np.clip(rng.normal(120, 30, (48, 64)) * gain, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{seed}-{k:04d}.png")
        out.append(folder / f"{seed}-{k:04d}.png")
    return out


def test_watch_judges_a_dark_camera_and_monitor_says_so(tmp_path: Path, capsys) -> None:
    import httpx

    from steelseg.inference.reference import read_reference, write_reference
    from steelseg.line.watch import WatchConfig, watch

    bundle = tiny_bundle_at(tmp_path, ["pit", "scratch"])
    ref = write_reference(bundle, _images(tmp_path / "ref", 120, 0), "test")
    assert read_reference(bundle).images == 120 and ref.class_names == ["pit", "scratch"]
    cam = tmp_path / "cam"
    _images(cam, 50, 1)  # as the reference
    _images(cam, 50, 2, gain=0.03)  # the lamp fails
    said: list[str] = []
    port = _free_port()
    seen: dict[str, str] = {}

    def scrape(s: str) -> None:
        said.append(s)
        if not seen:
            seen["metrics"] = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    stats = watch(WatchConfig(str(bundle), cam, tmp_path / "out", once=True, metrics_port=port,
                              drift=DriftConfig(window=50)), say=scrape)
    assert stats.images == 100
    verdicts = json.loads((tmp_path / "out" / "drift.json").read_text())["verdicts"]
    assert [worst(v["rows"]) for v in verdicts] == ["ok", "alert"], [describe(v["rows"]) for v in verdicts]
    assert any("drift alert over images 51-100" in s and "brightness" in s for s in said), said
    served = set(re.findall(r"^(steelseg_\w+?)(?:_total|_bucket|_count|_sum|_created)?[{ ]", seen["metrics"], re.MULTILINE))
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "steelseg-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json.loads((ROOT / "deploy" / "grafana" / "steelseg-line.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    wanted = {re.sub(r"_(total|bucket)$", "", m) for e in exprs for m in re.findall(r"steelseg_\w+", e)}
    assert wanted <= served | {"steelseg_drift_excess_psi", "steelseg_drift_level", "steelseg_defect_rate"}, \
        wanted - served
    rc, out, err = cli_run(capsys, "monitor", tmp_path / "out", "--drift", ROOT / "deploy" / "drift.yaml")
    assert rc == 0 and "  images " not in out and "latest 100 images: alert: brightness" in out, out  # no full window
    (tmp_path / "d.yaml").write_text("window: 50\n")
    rc, out, _ = cli_run(capsys, "monitor", tmp_path / "out", "--drift", tmp_path / "d.yaml")
    assert rc == 0 and "images 1-50: no drift" in out and "images 51-100: alert: brightness" in out, out
    assert (tmp_path / "out" / "monitor.png").is_file()
    page = (tmp_path / "out" / "monitor.html").read_text()  # the monitoring report, the same product as the others
    assert 'class="level-alert">alert</b>' in page and "51-100" in page and 'src="monitor.png"' in page


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed here")
def test_alert_rules_pass_promtool() -> None:
    proc = subprocess.run(["promtool", "check", "rules", str(ROOT / "deploy" / "prometheus" / "steelseg-alerts.yml")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
