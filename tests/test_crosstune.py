"""Out-of-fold tuning (steelseg cv-tune): each fold scored with the setting tuned on the others."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steelseg.errors import DataError
from steelseg.inference.crosstune import cross_tune, dice_under, split_by_group
from steelseg.inference.postprocess import PostProcess
from steelseg.inference.tune import tune_postprocess
from tests.conftest import cli_run, expect_error

PIXELS = 1000


def _fold(prefix: str, defect_q: int, noise_q: int, groups: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Saved predictions of one fold: ``groups`` parts of 4 images, one defective image per part whose
    100-pixel mask is predicted at level ``defect_q``; every image has 20 noise pixels at ``noise_q``."""
    rng = np.random.default_rng(seed)
    n = groups * 4
    hist_all = np.zeros((n, 1, 256), np.int64)
    hist_true = np.zeros((n, 1, 256), np.int64)
    hist_all[:, 0, 0] = PIXELS - 20
    hist_all[:, 0, noise_q] += 20
    for i in range(0, n, 4):
        q = int(np.clip(defect_q + rng.integers(-5, 6), 1, 255))
        hist_all[i, 0, 0] -= 100
        hist_all[i, 0, q] += 100
        hist_true[i, 0, q] = 100
    ids = np.array([f"{prefix}{g:02d}/Part{j}.jpg" for g in range(groups) for j in range(4)])
    score = np.array([[np.flatnonzero(h[0]).max() / 255] for h in hist_all])  # the maximum probability
    return {"hist_all": hist_all, "hist_true": hist_true, "image_ids": ids,
            "image_pixels": np.full(n, PIXELS), "image_score": score.astype(np.float32)}


def test_dice_under_matches_the_tuned_score():
    p = _fold("a", 200, 90)
    report = tune_postprocess(p["hist_all"], p["hist_true"], PIXELS)
    assert dice_under(p["hist_all"], p["hist_true"], report.chosen) == pytest.approx(report.after)
    # by hand: threshold 0.5 keeps the masks (q 195-205 > 127) and the noise below it: all Dice 1
    assert report.after == [pytest.approx(1.0)]
    # threshold 0.3 (q > 76) adds the 20 noise pixels: defective 200/220, defect-free images score 0
    d = dice_under(p["hist_all"], p["hist_true"], PostProcess([0.3], [0]))
    assert d == [pytest.approx((6 * 200 / 220) / 24)]


def test_a_fold_calibrated_apart_loses_out_of_fold():
    # folds a and b: masks at q~220, noise at 160 (> 0.6): the tuned threshold rises to 0.65.
    # fold c's model is less confident: masks at q~120, so a threshold tuned on a and b misses them.
    preds = [_fold("a", 220, 160, seed=1), _fold("b", 220, 160, seed=2), _fold("c", 120, 60, seed=3)]
    res = cross_tune(preds, ["a", "b", "c"])
    c = res.folds[2]
    assert c.chosen.pixel_threshold[0] == pytest.approx(0.65)
    assert c.own == [pytest.approx(1.0)] and c.oof[0] < 0.8
    assert c.missed == 6 and c.defective == 6 and c.false_alarms == 0 and c.defect_free == 18
    assert res.folds[0].oof == [pytest.approx(1.0)]
    s = res.summary()
    assert s["own_dice"]["mean"] == pytest.approx(1.0)
    assert s["oof_dice"]["mean"] == pytest.approx(np.mean([f.oof[0] for f in res.folds]))
    assert s["missed"] == sum(f.missed for f in res.folds)


def test_folds_that_share_images_are_refused():
    a = _fold("a", 200, 90)
    with pytest.raises(DataError, match="share images"):
        cross_tune([a, a], ["x", "y"])
    with pytest.raises(DataError, match="at least 2"):
        cross_tune([a], ["x"])


def test_split_by_group_keeps_groups_whole_and_balanced():
    p = _fold("a", 200, 90, groups=7)
    parts = split_by_group(p, 2)
    groups = [{i.split("/")[0] for i in q["image_ids"]} for q in parts]
    assert not groups[0] & groups[1] and len(groups[0] | groups[1]) == 7
    assert sorted(len(g) for g in groups) == [3, 4]
    assert sum(len(q["image_ids"]) for q in parts) == 28
    for q in parts:  # every array cut to the part's rows
        assert len(q["hist_all"]) == len(q["image_ids"]) == len(q["image_score"])
    with pytest.raises(DataError, match="cannot make"):
        split_by_group(p, 8)


def test_cv_tune_cli(tmp_path, capsys):
    dirs = []
    for k, (prefix, dq, nq) in enumerate([("a", 220, 160), ("b", 220, 160), ("c", 120, 60)]):
        d = tmp_path / f"eval-{k}"
        d.mkdir()
        np.savez(d / "predictions.npz", **_fold(prefix, dq, nq, seed=k))
        dirs.append(d)
    rc, out, _ = cli_run(capsys, "cv-tune", *dirs, "--json", tmp_path / "cv.json")
    assert rc == 0 and "out-of-fold Dice" in out and "6 / 6" in out
    saved = json.loads((tmp_path / "cv.json").read_text())
    assert saved["folds"][2]["missed"] == 6 and saved["summary"]["defective"] == 18
    assert saved["scaled_searched"] is True
    rc, out, _ = cli_run(capsys, "cv-tune", *dirs, "--no-scaled", "--json", tmp_path / "hard.json")
    assert rc == 0 and json.loads((tmp_path / "hard.json").read_text())["scaled_searched"] is False
    rc, out, _ = cli_run(capsys, "cv-tune", dirs[0], "--inner", "2")
    assert rc == 0 and "part 2" in out
    expect_error(capsys, "one eval folder", "cv-tune", *dirs, "--inner", "2")
    expect_error(capsys, "min-recall", "cv-tune", *dirs, "--min-recall", "2")
