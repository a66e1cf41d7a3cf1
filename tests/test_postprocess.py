from __future__ import annotations

import numpy as np
import pytest

from steelseg.inference import postprocess
from steelseg.inference.postprocess import PostProcess
from steelseg.inference.tune import dice_grid, tune_postprocess


def test_threshold_edges() -> None:
    probs = np.array([[0.49, 0.5, 0.51, 0.9]], np.float32)[..., None]
    out = postprocess.apply(probs, PostProcess([0.5], [0]))
    assert out[..., 0].tolist() == [[0, 0, 1, 1]]  # strictly above the threshold


def test_min_area_edges() -> None:
    probs = np.zeros((4, 4, 1), np.float32)
    probs[:2, :2, 0] = 0.9  # area 4
    assert postprocess.apply(probs, PostProcess([0.5], [4]))[..., 0].sum() == 4
    assert postprocess.apply(probs, PostProcess([0.5], [5]))[..., 0].sum() == 0


def test_small_components_removed() -> None:
    probs = np.zeros((10, 10, 1), np.float32)
    probs[0:3, 0:3, 0] = 0.9  # 9 px
    probs[8, 8, 0] = 0.9  # 1 px
    out = postprocess.apply(probs, PostProcess([0.5], [0], [2]))
    assert out[..., 0].sum() == 9 and out[8, 8, 0] == 0


def test_gating() -> None:
    probs = np.full((3, 3, 2), 0.9, np.float32)
    pp = PostProcess([0.5, 0.5], [0, 0], gate_threshold=[0.6, 0.2], gate_any=None)
    out = postprocess.apply(probs, pp, gate_probs=np.array([0.5, 0.5]))
    assert out[..., 0].sum() == 0 and out[..., 1].sum() == 9
    pp_any = PostProcess([0.5, 0.5], [0, 0], gate_any=0.7)
    assert postprocess.apply(probs, pp_any, gate_any_prob=0.69).sum() == 0
    assert postprocess.apply(probs, pp_any, gate_any_prob=0.7).sum() == 18


def _hists(probs: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.round(probs * 255).astype(np.uint8)
    n, _, _, k = probs.shape
    ha = np.zeros((n, k, 256), np.int64)
    ht = np.zeros((n, k, 256), np.int64)
    for i in range(n):
        for c in range(k):
            ha[i, c] = np.bincount(q[i, ..., c].ravel(), minlength=256)
            ht[i, c] = np.bincount(q[i, ..., c][true[i, ..., c] > 0], minlength=256)
    return ha, ht


def test_dice_grid_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((6, 12, 12, 1)).astype(np.float32) ** 3
    true = (rng.random((6, 12, 12, 1)) < 0.1).astype(np.uint8)
    true[:2] = 0
    q = np.round(probs * 255) / 255  # tuning sees quantised probabilities
    ha, ht = _hists(probs, true)
    thresholds, areas = np.array([0.3, 0.5, 0.7]), np.array([0, 3, 10])
    grid = dice_grid(ha[:, 0], ht[:, 0], thresholds, areas)
    from steelseg.metrics import kaggle_dice

    for ti, t in enumerate(thresholds):
        for ai, a in enumerate(areas):
            masks = postprocess.apply_batch(q, PostProcess([t], [a]))
            assert grid[:, ti, ai].mean() == pytest.approx(kaggle_dice(masks, true).mean)


def test_tune_finds_known_optimum() -> None:
    """Defects: interior at 0.7, border ring at 0.35; defect-free images hold 6-pixel false alarms
    at 0.8. The optimum: threshold 0.3 (keeps the border) with minimum area 10 (drops the alarms)."""
    n, h, w = 20, 32, 32
    probs = np.zeros((n, h, w, 1), np.float32)
    true = np.zeros((n, h, w, 1), np.uint8)
    for i in range(n):
        if i % 2 == 0:
            true[i, 8:24, 8:24, 0] = 1
            probs[i, 9:23, 9:23, 0] = 0.7
            probs[i, 8:24, 8, 0] = probs[i, 8:24, 23, 0] = probs[i, 8, 8:24, 0] = probs[i, 23, 8:24, 0] = 0.35
        else:
            probs[i, 0:2, 0:3, 0] = 0.8  # 6-pixel false alarm
    ha, ht = _hists(probs, true)
    report = tune_postprocess(ha, ht, h * w, thresholds=np.array([0.3, 0.5, 0.75]),
                              area_fractions=np.array([0, 4, 10, 300]) / (h * w))
    assert report.chosen.pixel_threshold == [0.3]
    assert report.chosen.min_area == [10]
    assert report.after[0] == pytest.approx(1.0)
    assert report.after[0] >= report.before[0]


def test_tune_with_gate() -> None:
    n = 10
    probs = np.zeros((n, 8, 8, 1), np.float32)
    true = np.zeros((n, 8, 8, 1), np.uint8)
    true[:5, 2:6, 2:6] = 1
    probs[:, 2:6, 2:6] = 0.9  # the segmenter fires everywhere; the classifier knows better
    gate = np.array([[0.9]] * 5 + [[0.1]] * 5)
    ha, ht = _hists(probs, true)
    report = tune_postprocess(ha, ht, 64, gate=gate)
    assert report.before[0] == pytest.approx(0.5) and report.after[0] == pytest.approx(1.0)
    assert 0.1 < report.chosen.gate_threshold[0] <= 0.9


def test_tune_min_component_removes_speckles() -> None:
    from steelseg.inference.tune import tune_min_component
    from steelseg.metrics import kaggle_dice

    rng = np.random.default_rng(0)
    n, h, w = 12, 64, 64
    probs = np.zeros((n, h, w, 1), np.float32)
    true = np.zeros((n, h, w, 1), np.uint8)
    for i in range(n):
        if i % 2 == 0:
            true[i, 20:36, 20:36, 0] = 1
            probs[i, 20:36, 20:36, 0] = 0.9
        for _ in range(30):  # isolated 2-pixel speckles everywhere
            y, x = rng.integers(0, h // 3) * 3, rng.integers(0, w // 3) * 3
            if not true[i, max(0, y - 2):y + 3, max(0, x - 2):x + 4].any():
                probs[i, y, x:x + 2, 0] = 0.9
    ha, ht = _hists(probs, true)
    q = np.round(probs * 255).astype(np.uint8)
    report = tune_postprocess(ha, ht, h * w)
    assert report.after[0] < 1.0  # thresholds and areas alone cannot remove the speckles
    same, score = tune_min_component(q, true, report.chosen, component_fractions=np.array([0]))
    assert score[0] == pytest.approx(report.after[0])  # the two searches agree without components
    refined, score = tune_min_component(q, true, report.chosen,
                                        component_fractions=np.array([0, 3, 10, 300]) / (h * w))
    assert refined.min_component == [3] or refined.min_component == [10]
    assert score[0] == pytest.approx(1.0)
    masks = postprocess.apply_batch(q / 255, refined)
    assert kaggle_dice(masks, true).mean == pytest.approx(1.0)  # what tuning promised, applied
