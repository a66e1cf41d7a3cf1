"""Pseudo-labels: unlabelled images the model is sure about, written as a training folder for ``data.extra``.

Two rules from the Severstal winners:

* ``1st`` (1st place): keep an image when every class's image-level probability p is above ``hi`` (0.95)
  or below ``lo`` (0.05), and the segmentation agrees: a mask for each class above ``hi``, none for each
  class below ``lo``;
* ``confidence`` (12th place): rank the images by confidence = mean over classes of |p - 0.5| and keep
  the most confident ``max`` (default: half of them).

The image-level probability is the bundle's classifier's when it has one, else the segmenter's largest
pixel probability of the class (what steelseg's image AP ranks). ``max`` caps either rule, most
confident first. The folder holds ``train_images/`` (the files, unchanged), ``train.csv`` (the kept
masks), ``classes.txt`` and ``pseudo_labels.csv``: every image's probabilities, confidence and verdict.
Training refuses ``data.extra_in_val`` for such a folder: pseudo-labels never validate.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data import rle
from steelseg.data.combine import PSEUDO_FILE
from steelseg.data.images import list_images
from steelseg.data.kaggle import write_kaggle_csv
from steelseg.errors import DataError
from steelseg.fsutil import atomic_text, atomic_write, staged_dir
from steelseg.metrics import class_max

__all__ = ["PSEUDO_FILE", "RULES", "PseudoConfig", "accept_1st", "confidence", "pseudo_label", "select"]

RULES = ("1st", "confidence")


@dataclass
class PseudoConfig:
    rule: str = "1st"
    hi: float = 0.95
    lo: float = 0.05
    max_images: int | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise DataError(f"--rule {self.rule!r}: one of {', '.join(RULES)}")
        if not 0.0 <= self.lo < self.hi <= 1.0:
            raise DataError(f"--lo {self.lo} / --hi {self.hi}: need 0 <= lo < hi <= 1")
        if self.max_images is not None and self.max_images < 1:
            raise DataError(f"--max {self.max_images}: at least 1")


def confidence(p: np.ndarray) -> float:
    """12th place's confidence of one image: mean over classes of |p - 0.5| (0 = unsure, 0.5 = sure)."""
    return float(np.mean(np.abs(np.asarray(p, np.float64) - 0.5)))


def accept_1st(p: np.ndarray, masks_present: np.ndarray, hi: float = 0.95, lo: float = 0.05) -> tuple[bool, str]:
    """1st place's rule for one image: (kept, why)."""
    p, present = np.asarray(p, np.float64), np.asarray(masks_present, bool)
    unsure = np.flatnonzero((p <= hi) & (p >= lo))
    if unsure.size:
        return False, f"class {int(unsure[0]) + 1} probability {p[unsure[0]]:.3f} is between {lo} and {hi}"
    disagree = np.flatnonzero((p > hi) != present)
    if disagree.size:
        c = int(disagree[0])
        return False, (f"class {c + 1}: probability {p[c]:.3f} but the segmentation "
                       f"{'found no mask' if p[c] > hi else 'found a mask'}")
    return True, "every class is sure and the segmentation agrees"


def select(probs: np.ndarray, present: np.ndarray, cfg: PseudoConfig) -> tuple[np.ndarray, list[str]]:
    """Which images (N, C image-level probabilities; N, C mask presence) the rule keeps, and why each."""
    n = len(probs)
    conf = np.array([confidence(p) for p in probs])
    if cfg.rule == "1st":
        verdicts = [accept_1st(p, m, cfg.hi, cfg.lo) for p, m in zip(probs, present)]
        keep = np.array([v[0] for v in verdicts], bool)
        why = [v[1] for v in verdicts]
    else:
        k = cfg.max_images if cfg.max_images is not None else max(1, n // 2)
        keep = np.zeros(n, bool)
        keep[np.argsort(-conf, kind="stable")[:k]] = True
        why = [f"confidence {c:.3f}, {'among' if kept else 'below'} the {k} most confident" for c, kept in zip(conf, keep)]
    if cfg.max_images is not None and keep.sum() > cfg.max_images:
        ranked = [i for i in np.argsort(-conf, kind="stable") if keep[i]]
        for i in ranked[cfg.max_images:]:
            keep[i] = False
            why[i] = f"kept by the rule, but beyond --max {cfg.max_images} (confidence {conf[i]:.3f})"
    return keep, why


def _image_level(pred: Any) -> np.ndarray:
    if pred.gate is not None:
        return np.asarray(pred.gate, np.float64)
    return class_max(pred.probs).astype(np.float64)


def _predict(predictor: Any, images: list[Path], progress: bool) -> Iterable[tuple[Path, np.ndarray, np.ndarray]]:
    for path, pred in predictor.predict_paths(images, progress=progress):
        yield path, _image_level(pred), pred.masks


def pseudo_label(predictor: Any, images_dir: str | Path, out: str | Path, cfg: PseudoConfig,
                 progress: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Predict every image of ``images_dir``, keep those ``cfg`` accepts, write the folder ``out``."""
    images, _ = list_images(Path(images_dir))
    if not images:
        raise DataError(f"{images_dir}: no images to pseudo-label")
    names = [p.name for p in images]
    if len(set(names)) != len(names):
        raise DataError(f"{images_dir}: two images share a file name; pseudo-labels name images by file name")
    paths, probs, masks = [], [], {}
    for path, p, m in _predict(predictor, images, progress):
        paths.append(path)
        probs.append(p)
        masks[path.name] = [rle.encode(m[..., c]) for c in range(m.shape[-1])]
    probs_a = np.stack(probs)
    present = np.array([[bool(r) for r in masks[p.name]] for p in paths])
    keep, why = select(probs_a, present, cfg)
    with staged_dir(out, overwrite, "pseudo-label folder", signatures=("pseudo_labels.csv",)) as stage:
        (stage / "train_images").mkdir()
        rows = []
        for path, kept in zip(paths, keep):
            if kept:
                shutil.copyfile(path, stage / "train_images" / path.name)
                rows += [(path.name, c + 1, r) for c, r in enumerate(masks[path.name]) if r]
        write_kaggle_csv(stage / "train.csv", rows)
        atomic_text(stage / "classes.txt", "\n".join(predictor.class_names) + "\n")
        _write_side_file(stage / PSEUDO_FILE, paths, probs_a, keep, why, cfg, predictor.class_names)
    return {"images": len(paths), "kept": int(keep.sum()), "rule": cfg.rule, "out": str(out),
            "kept_with_defect": int((present[keep].any(axis=1)).sum()), "mean_confidence_kept":
            float(np.mean([confidence(p) for p in probs_a[keep]])) if keep.any() else None}


def _write_side_file(path: Path, paths: list[Path], probs: np.ndarray, keep: np.ndarray, why: list[str],
                     cfg: PseudoConfig, names: list[str]) -> None:
    with atomic_write(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["ImageId", "kept", "confidence", "rule", *[f"p_{n}" for n in names], "why"])
        for p, pr, k, y in zip(paths, probs, keep, why):
            w.writerow([p.name, int(k), f"{confidence(pr):.6f}", cfg.rule, *[f"{v:.6f}" for v in pr], y])
