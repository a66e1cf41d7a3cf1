"""Classifier-scaled pixel thresholds (Severstal 55th place): t = t0 * s - t0 * (s - 1) * p, a soft gate
stored in postprocess.json (gate_scale) and searched by tune beside the hard gate."""

from __future__ import annotations

import numpy as np
import pytest

from steelseg.inference.crosstune import dice_under
from steelseg.inference.postprocess import PostProcess, apply, pixel_thresholds
from steelseg.inference.tune import detected_from_histograms, detected_images, tune_min_component, tune_postprocess


def test_the_threshold_moves_with_the_classifier():
    pp = PostProcess([0.4], [0], gate_scale=[5.0])
    assert pixel_thresholds(pp, 0, np.array([1.0, 0.75, 0.5, 0.0])) == pytest.approx([0.4, 0.8, 1.0, 1.0])
    assert pixel_thresholds(PostProcess([0.4], [0], gate_scale=[1.0]), 0, np.array([0.1])) == pytest.approx([0.4])
    assert float(pixel_thresholds(pp, 0, None)) == pytest.approx(0.4)  # no classifier: the fixed t0
    probs = np.full((4, 4, 1), 0.7)
    assert apply(probs, pp, np.array([1.0])).all()  # t = 0.4
    assert not apply(probs, pp, np.array([0.8])).any()  # t = 0.4 * (5 - 4 * 0.8) = 0.72 > 0.7
    assert apply(probs, pp).all()  # a bundle without a classifier keeps t0


def test_gate_scale_is_checked_and_saved(tmp_path):
    for bad in ([0.5], [1.0, 2.0], [float("nan")], [True]):
        with pytest.raises(ValueError, match="gate_scale"):
            PostProcess([0.5], [0], gate_scale=bad)
    pp = PostProcess([0.5, 0.4], [0, 10], gate_threshold=[0.0, 0.3], gate_scale=[3, 1])
    assert PostProcess.load(pp.save(tmp_path / "postprocess.json")) == pp
    assert PostProcess.load(PostProcess([0.5], [0]).save(tmp_path / "old.json")).gate_scale is None


def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images of 100 pixels where no hard gate keeps every crack without a false alarm, a scaled one does:
    crack at q 0.55 with p 0.95; crack at q 0.9 with p 0.4; defect-free with 20 noise pixels at q 0.6, p 0.7."""
    kinds = [(0.55, 0.95, True), (0.9, 0.4, True), (0.6, 0.7, False), (0.6, 0.7, False)]
    probs = np.zeros((len(kinds), 10, 10, 1), np.uint8)
    true = np.zeros_like(probs)
    gate = np.zeros((len(kinds), 1))
    for i, (q, p, defect) in enumerate(kinds):
        probs[i, :2, :, 0] = round(q * 255)
        true[i, :2, :, 0] = defect
        gate[i, 0] = p
    hist_all = np.stack([np.bincount(p.ravel(), minlength=256) for p in probs])[:, None, :]
    hist_true = np.stack([np.bincount(p[t > 0], minlength=256) for p, t in zip(probs, true)])[:, None, :]
    return probs, true, gate, np.stack([hist_all[:, 0], hist_true[:, 0]])


def test_tune_keeps_the_scaled_threshold_where_it_beats_the_hard_gate():
    probs, true, gate, (hist_all, hist_true) = _case()
    hist_all, hist_true = hist_all[:, None], hist_true[:, None]
    hard = tune_postprocess(hist_all, hist_true, 100, gate, scaled=False)
    soft = tune_postprocess(hist_all, hist_true, 100, gate)
    assert hard.after[0] < 0.99  # some crack missed or some defect-free image flagged
    assert soft.after == [pytest.approx(1.0)] and soft.chosen.gate_scale[0] > 1
    assert soft.chosen.gate_threshold == [0.0] and soft.chosen.gate_any is None
    # every scorer agrees on the chosen setting: histograms, saved probabilities, the predict path
    assert dice_under(hist_all, hist_true, soft.chosen, gate) == pytest.approx(soft.after)
    found_h = detected_from_histograms(hist_all, soft.chosen, gate)
    found_p = detected_images(probs, soft.chosen, gate)
    assert (found_h == found_p).all() and found_p[:, 0].tolist() == [True, True, False, False]
    refined, scores = tune_min_component(probs, true, soft.chosen, gate)
    assert scores == [pytest.approx(1.0)] and refined.gate_scale == soft.chosen.gate_scale
    no_cls = tune_postprocess(hist_all, hist_true, 100)  # no classifier: nothing to scale by
    assert no_cls.chosen.gate_scale is None


def test_cross_tune_can_leave_the_scaled_thresholds_out():
    """cv-tune --no-scaled: the same folds tuned with hard gates only, to measure what scaling adds."""
    from steelseg.inference.crosstune import cross_tune

    _, _, gate, (hist_all, hist_true) = _case()
    folds = [{"hist_all": hist_all[:, None], "hist_true": hist_true[:, None], "gate": gate,
              "image_pixels": np.full(4, 100), "image_ids": np.array([f"f{k}_{i}" for i in range(4)])}
             for k in range(2)]
    soft = cross_tune(folds, ["a", "b"])
    hard = cross_tune(folds, ["a", "b"], scaled=False)
    assert all(f.chosen.gate_scale[0] > 1 for f in soft.folds) and soft.pooled.gate_scale[0] > 1
    assert all(f.chosen.gate_scale is None for f in hard.folds) and hard.pooled.gate_scale is None
    assert soft.summary()["oof_dice"]["mean"] == pytest.approx(1.0)
    assert hard.summary()["oof_dice"]["mean"] < 0.99
