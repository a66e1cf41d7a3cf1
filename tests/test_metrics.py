from __future__ import annotations

import numpy as np
import pytest

from steelseg import metrics


def test_empty_on_empty_is_one() -> None:
    z = np.zeros((1, 4, 4, 2), np.uint8)
    r = metrics.kaggle_dice(z, z)
    assert r.mean == 1.0 and r.per_class == [1.0, 1.0]


def test_empty_vs_nonempty_is_zero() -> None:
    z = np.zeros((1, 4, 4, 1), np.uint8)
    t = z.copy()
    t[0, 0, 0, 0] = 1
    assert metrics.kaggle_dice(z, t).mean == 0.0
    assert metrics.kaggle_dice(t, z).mean == 0.0


def test_partial_overlap_by_hand() -> None:
    p = np.zeros((1, 4, 4, 1), np.uint8)
    t = np.zeros((1, 4, 4, 1), np.uint8)
    p[0, 0, :3, 0] = 1  # 3 pixels
    t[0, 0, 1:, 0] = 1  # 3 pixels, 2 shared
    assert metrics.kaggle_dice(p, t).mean == pytest.approx(2 * 2 / 6)


def test_several_images_and_classes() -> None:
    p = np.zeros((2, 2, 2, 2), np.uint8)
    t = np.zeros((2, 2, 2, 2), np.uint8)
    p[0, :, :, 0] = 1
    t[0, :, :, 0] = 1  # image 0 class 0: 1.0
    p[0, 0, 0, 1] = 1  # image 0 class 1: false positive -> 0.0
    t[1, 0, 0, 0] = 1  # image 1 class 0: missed -> 0.0
    # image 1 class 1: empty/empty -> 1.0
    r = metrics.kaggle_dice(p, t)
    assert r.mean == pytest.approx(0.5)
    assert r.per_class == pytest.approx([0.5, 0.5])
    acc = metrics.DiceAccumulator()
    acc.update(p[:1], t[:1])
    acc.update(p[1:], t[1:])
    assert acc.compute().mean == pytest.approx(0.5)


def test_confusion_iou_by_hand() -> None:
    truth = np.array([[0, 0, 1, 1], [2, 2, 0, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 0]])
    cm = metrics.confusion_matrix(pred, truth, 3)
    assert cm.sum() == 8
    iou = metrics.iou_from_confusion(cm)
    # class 1: tp 2, fp 1, fn 0 -> 2/3 ; class 2: tp 1, fn 1 -> 1/2 ; background: tp 3, fp 1, fn 1 -> 3/5
    assert iou == pytest.approx([3 / 5, 2 / 3, 1 / 2])
    assert metrics.mean_iou(cm) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics.mean_iou(cm, ignore_background=False) == pytest.approx((3 / 5 + 2 / 3 + 1 / 2) / 3)


def test_labels_from_masks() -> None:
    m = np.zeros((2, 2, 3), np.uint8)
    m[0, 0, 1] = 1
    m[1, 1, 2] = 1
    assert metrics.labels_from_masks(m).tolist() == [[2, 0], [0, 3]]


def test_monitor_key_breaks_ties_on_a_saturated_score():
    from steelseg.metrics import monitor_key

    epochs = [{"val/ap": 1.0, "val/dice": 0.69}, {"val/ap": 0.98, "val/dice": 0.95}, {"val/ap": 1.0, "val/dice": 0.96},
              {"val/ap": 1.0, "val/dice": 0.96}]
    best = max(range(4), key=lambda i: monitor_key(epochs[i], "val/ap,val/dice"))
    assert best == 2  # AP first, then Dice; a later tie keeps the earlier epoch
    assert max(range(4), key=lambda i: monitor_key(epochs[i], "val/ap")) == 0  # one name: the first 1.0 wins
    assert monitor_key({"val/loss": 0.3}, "val/loss") > monitor_key({"val/loss": 0.4}, "val/loss")  # lower is better
    assert monitor_key({"val/dice": 0.9}, "val/ap,val/dice") is None  # the first is missing: not eligible
    assert monitor_key({"val/ap": "0.9", "val/dice": ""}, "val/ap, val/dice") == (0.9, float("-inf"))  # CSV strings
