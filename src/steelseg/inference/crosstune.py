"""Out-of-fold tuning: an honest score for tuned post-processing under k-fold cross-validation.

Tuning thresholds and minimum areas on a fold and scoring them on that same fold is optimistic. Given
the saved validation predictions of every fold (``steelseg evaluate`` of each fold's run), each fold is
scored with the setting tuned on the *other* folds' predictions, pooled; the setting tuned on all folds
pooled is the one to ship with the fold ensemble. Tuning transfers between folds only as far as the fold
models agree in calibration; :func:`split_by_group` instead splits one model's validation predictions into
parts (whole groups: the first folder of each image id) for the same leave-one-part-out score of that model
tuned on its own, disjoint images. NumPy, from the saved histograms (exact while no
component size is tuned, which needs the saved probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from steelseg.errors import DataError
from steelseg.inference.postprocess import PostProcess
from steelseg.inference.tune import (above_per_image, detected_from_histograms, image_thresholds, tune_postprocess,
                                     with_min_area)

__all__ = ["CrossTune", "FoldScore", "cross_tune", "dice_under", "split_by_group"]


def dice_under(hist_all: np.ndarray, hist_true: np.ndarray, pp: PostProcess,
               gate: np.ndarray | None = None) -> list[float]:
    """Per-class mean Kaggle Dice of (N, C, 256) histograms under ``pp`` (threshold, minimum area, gate)."""
    if any(pp.min_component):
        raise ValueError("min_component is set: scoring it needs the saved probabilities")
    out = []
    n = hist_all.shape[0]
    for c in range(hist_all.shape[1]):
        t = image_thresholds(pp, c, n, gate)[:, None]  # per image: classifier-scaled where pp says
        dice = with_min_area(above_per_image(hist_all[:, c], t), above_per_image(hist_true[:, c], t),
                              hist_true[:, c].sum(1), np.array([pp.min_area[c]]))[:, 0, 0]
        if pp.gate_threshold is not None and gate is not None:
            gated = gate[:, c] < pp.gate_threshold[c]
            dice = np.where(gated, (hist_true[:, c].sum(1) == 0).astype(np.float64), dice)
        out.append(float(dice.mean()))
    return out


@dataclass
class FoldScore:
    """One fold scored with the setting tuned on the other folds (``oof``) and on itself (``own``)."""

    name: str
    images: int
    chosen: PostProcess  # tuned on the other folds
    oof: list[float]  # per-class Dice on this fold under ``chosen``
    own: list[float]  # per-class Dice tuned on this fold itself (optimistic)
    all_empty: list[float]
    missed: int  # defective images (any class) without a mask under ``chosen``
    defective: int
    false_alarms: int  # defect-free images given a mask under ``chosen``
    defect_free: int


@dataclass
class CrossTune:
    folds: list[FoldScore]
    pooled: PostProcess  # tuned on every fold's predictions together

    def summary(self) -> dict[str, Any]:
        def stat(values: list[float]) -> dict[str, float]:
            return {"mean": float(np.mean(values)), "std": float(np.std(values))}

        return {"oof_dice": stat([float(np.mean(f.oof)) for f in self.folds]),
                "own_dice": stat([float(np.mean(f.own)) for f in self.folds]),
                "all_empty_dice": stat([float(np.mean(f.all_empty)) for f in self.folds]),
                "missed": sum(f.missed for f in self.folds), "defective": sum(f.defective for f in self.folds),
                "false_alarms": sum(f.false_alarms for f in self.folds),
                "defect_free": sum(f.defect_free for f in self.folds)}


def _pool(preds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    keys = ["hist_all", "hist_true", "image_pixels"] + (["gate"] if "gate" in preds[0] else [])
    return {k: np.concatenate([p[k] for p in preds]) for k in keys}


def _check(preds: list[dict[str, np.ndarray]], names: list[str]) -> None:
    if len(preds) < 2:
        raise DataError("out-of-fold tuning needs the saved predictions of at least 2 folds")
    classes = {p["hist_all"].shape[1] for p in preds}
    gated = {"gate" in p for p in preds}
    if len(classes) > 1 or len(gated) > 1:
        raise DataError(f"the folds' predictions differ ({sorted(classes)} classes, gated: {sorted(gated)}): "
                        "evaluate every fold with the same classes and the same kind of pipeline")
    ids = [set(p["image_ids"].tolist()) for p in preds]
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if ids[i] & ids[j]:
                raise DataError(f"folds {names[i]} and {names[j]} share images (e.g. {sorted(ids[i] & ids[j])[0]}): "
                                "out-of-fold tuning needs each fold's own validation images")


def _tune(p: dict[str, np.ndarray], min_recall: float | None, scaled: bool = True) -> Any:
    pixels = int(np.median(p["image_pixels"]))
    return tune_postprocess(p["hist_all"], p["hist_true"], pixels, p.get("gate"), min_recall=min_recall,
                            scaled=scaled)


def _fold_score(name: str, p: dict[str, np.ndarray], pp: PostProcess, min_recall: float | None,
                scaled: bool = True) -> FoldScore:
    true = p["hist_true"].sum(axis=2) > 0  # (N, C)
    found = detected_from_histograms(p["hist_all"], pp, p.get("gate"))
    empty = (~true).mean(axis=0).tolist()
    return FoldScore(name, int(true.shape[0]), pp, dice_under(p["hist_all"], p["hist_true"], pp, p.get("gate")),
                     _tune(p, min_recall, scaled).after, [float(v) for v in empty],
                     int((true.any(1) & ~found.any(1)).sum()), int(true.any(1).sum()),
                     int((~true.any(1) & found.any(1)).sum()), int((~true.any(1)).sum()))


def cross_tune(preds: list[dict[str, np.ndarray]], names: list[str], min_recall: float | None = None,
               scaled: bool = True) -> CrossTune:
    """Leave-one-fold-out tuning over the saved predictions of each fold (``load_predictions``);
    ``scaled=False`` searches hard classifier gates only (no classifier-scaled thresholds)."""
    _check(preds, names)
    folds = []
    for k, name in enumerate(names):
        others = _pool([p for j, p in enumerate(preds) if j != k])
        folds.append(_fold_score(name, preds[k], _tune(others, min_recall, scaled).chosen, min_recall, scaled))
    return CrossTune(folds, _tune(_pool(preds), min_recall, scaled).chosen)


def split_by_group(pred: dict[str, np.ndarray], parts: int) -> list[dict[str, np.ndarray]]:
    """One eval folder's predictions as ``parts`` disjoint parts of whole groups (the first folder of each
    image id; an id in no folder is its own group), dealt out so each part gets about as many defective
    groups and as many images: the inner folds of a within-model out-of-fold score."""
    ids = pred["image_ids"].tolist()
    groups = np.array([i.split("/")[0] if "/" in i else i for i in ids])
    names, inverse = np.unique(groups, return_inverse=True)
    if parts < 2 or names.size < parts:
        raise DataError(f"{names.size} groups cannot make {parts} parts (--inner needs 2 or more, at most one per group)")
    defective = np.zeros(names.size, int)
    np.add.at(defective, inverse, (pred["hist_true"].sum(axis=2) > 0).any(axis=1).astype(int))
    size = np.bincount(inverse, minlength=names.size)
    order = sorted(range(names.size), key=lambda g: (-defective[g], -size[g], names[g]))
    part_of = np.zeros(names.size, int)
    load = np.zeros((parts, 2))
    for g in order:  # greedy: the part with the fewest defective groups, then the fewest images
        part_of[g] = int(np.lexsort((load[:, 1], load[:, 0]))[0])
        load[part_of[g]] += (defective[g] > 0, size[g])
    n = len(ids)
    out = []
    for k in range(parts):
        rows = np.flatnonzero(part_of[inverse] == k)
        out.append({key: v[rows] if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n else v
                    for key, v in pred.items()})
    return out
