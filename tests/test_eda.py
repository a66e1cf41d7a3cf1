from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from steelseg import metrics
from steelseg.cli import main
from steelseg.data.open import open_dataset
from steelseg.reports.eda import run_eda

ARTIFACTS = Path(os.environ.get("STEELSEG_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def test_report_numbers_match_independent_counts(synth_full, tmp_path) -> None:
    out = tmp_path / "eda"
    assert main(["eda", str(synth_full), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert (out / "index.html").is_file()
    # counts computed here from the CSV alone, independent of the loader
    rows = [ln.split(",") for ln in (synth_full / "train.csv").read_text().splitlines()[1:]]
    images = sorted(p.name for p in (synth_full / "train_images").iterdir())
    per_class = {c: len({r[0] for r in rows if int(r[1]) == c}) for c in range(1, 5)}
    with_defect = {r[0] for r in rows}
    assert s["images"] == len(images)
    assert s["defect_free"] == len(set(images) - with_defect)
    assert [c["images"] for c in s["classes"]] == [per_class[c] for c in range(1, 5)]
    assert s["nonempty_pairs"] == len(rows) and s["pairs"] == 4 * len(images)
    # the all-empty baseline is the metric module's score for empty predictions
    ds = open_dataset(synth_full)
    true = np.stack([ds.load_mask(i) for i in ds.image_ids])
    assert s["all_empty_dice"] == pytest.approx(metrics.kaggle_dice(np.zeros_like(true), true).mean)
    assert s["all_empty_dice"] == pytest.approx(1 - len(rows) / (4 * len(images)))
    for c, cls in enumerate(s["classes"]):
        areas = true[..., c].reshape(len(true), -1).sum(1)
        assert cls["area"]["p5"] == pytest.approx(np.percentile(areas[areas > 0], 5))


def test_sample_option(synth_full, tmp_path) -> None:
    s = run_eda(synth_full, tmp_path / "eda", sample=10, seed=1)
    assert s["images"] == 10 and s["sampled"]


def test_real_severstal_report(severstal_real, tmp_path) -> None:
    s = run_eda(severstal_real, tmp_path / "eda")
    ds = open_dataset(severstal_real)
    assert [c["images"] for c in s["classes"]] == ds.presence().sum(0).tolist() == [3, 1, 5, 4]


def test_neu_seg_report(neu_seg, tmp_path) -> None:
    s = run_eda(neu_seg, tmp_path / "eda", class_names=["inclusion", "patches", "scratches"])
    assert s["images"] == 4023
    assert [c["images"] for c in s["classes"]] == [1655, 1617, 1606]
    assert s["defect_free"] == 0


def test_mask_folder_masks_decoded_once(neu_seg, tmp_path, monkeypatch) -> None:
    from steelseg.data import voc

    calls = {"n": 0}
    real = voc.read_label_png

    def counting(*a, **kw):
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(voc, "read_label_png", counting)
    small = tmp_path / "neu_small"
    for sub in ("JPEGImages", "SegmentationClass"):
        (small / sub).mkdir(parents=True)
    for i, p in enumerate(sorted((neu_seg / "SegmentationClass").iterdir())[:30]):
        shutil.copy(p, small / "SegmentationClass" / p.name)
        shutil.copy(neu_seg / "JPEGImages" / (p.stem + ".jpg"), small / "JPEGImages")
    run_eda(small, tmp_path / "eda")
    assert calls["n"] == 30


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_opens_in_chromium(synth_full, tmp_path) -> None:
    out = tmp_path / "eda"
    run_eda(synth_full, out)
    page = (out / "index.html").read_text()
    probe = ("<script>window.addEventListener('load', () => { const i = [...document.images];"
             " document.body.setAttribute('data-loaded', i.filter(x => x.complete && x.naturalWidth > 0).length"
             " + '/' + i.length); });</script></body>")
    (out / "probe.html").write_text(page.replace("</body>", probe))
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run(base + ["--virtual-time-budget=5000", "--dump-dom", (out / "probe.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    assert found, dom[:500]
    loaded, total = map(int, found.groups())
    assert total >= 10 and loaded == total
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "eda_report.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,3000", (out / "index.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
