"""Evaluation of models or bundles on a labelled split, saving what tuning needs.

``evaluate`` predicts every image once and writes to its output folder:

* ``metrics.json``: Kaggle mean Dice overall and per class, the all-empty baseline, IoU per class
  and mIoU over the defect classes, classifier precision / recall per class, and image-level
  detection per class and for "any defect": average precision of the image score (the classifier's
  probability, or the segmenter's maximum probability without one), defective images missed and
  defect-free images flagged by the final masks;
* ``per_image.csv``: Dice, true and predicted area per class for each image (find the worst);
* ``predictions.npz``: per-image histograms of quantised probabilities (for ``tune``), classifier
  probabilities, and the probabilities themselves (uint8, compressed) unless ``save_probs=False``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelseg import metrics
from steelseg.data.open import open_dataset
from steelseg.data.table import DefectDataset
from steelseg.errors import DataError
from steelseg.fsutil import atomic_text, atomic_write, check_writable_dir
from steelseg.inference import postprocess
from steelseg.inference.bundle import resolve_model_dir
from steelseg.inference.predictor import Predictor

__all__ = ["detection_scores", "evaluate", "eval_ids", "load_predictions"]


def eval_ids(ds: DefectDataset, split: str, runs: Sequence[str | Path]) -> list[str]:
    """Image ids of ``split``: the run's own validation list, a named split, or ``all``."""
    if split == "all":
        return ds.image_ids
    for run in runs:
        sp = Path(run) / "split.json"
        if not sp.is_file():
            sp = resolve_model_dir(run).parent / "split.json"
        if sp.is_file() and split in ("val", "train"):
            ids = json.loads(sp.read_text())[split]
            known = set(ds.image_ids)
            if all(i in known for i in ids):
                return ids
    if split in ds.splits:
        return ds.splits[split]
    raise DataError(f"no split {split!r}: not in the runs' split.json nor the dataset "
                    f"(dataset splits: {sorted(ds.splits) or 'none'}); use --split all")


def _classifier_scores(gate: np.ndarray, true_presence: np.ndarray, names: list[str]) -> dict[str, Any]:
    out = {}
    for c, name in enumerate(names):
        p = gate[:, c] >= 0.5
        t = true_presence[:, c]
        tp = int((p & t).sum())
        out[name] = {"precision": tp / max(int(p.sum()), 1), "recall": tp / max(int(t.sum()), 1),
                     "support": int(t.sum())}
    return out


def detection_scores(scores: np.ndarray, predicted: np.ndarray, true: np.ndarray, names: list[str],
                     source: str) -> dict[str, Any]:
    """Image-level detection: per class and for any defect, the average precision of the (N, C) image
    ``scores`` against the (N, C) ``true`` presence, and the images missed / flagged by ``predicted``."""
    def one(score: np.ndarray, found: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
        ap = metrics.average_precision(score, truth)
        return {"ap": ap if np.isfinite(ap) else None, **metrics.detection_counts(found, truth).as_dict()}

    return {"score": source, "per_class": {n: one(scores[:, c], predicted[:, c], true[:, c]) for c, n in enumerate(names)},
            "any": one(scores.max(axis=1), predicted.any(axis=1), true.any(axis=1))}


def _row(image_id: str, names: list[str], dice: np.ndarray, true: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """One image's line of per_image.csv: Dice, true and predicted area per class."""
    row: dict[str, Any] = {"image_id": image_id}
    for c, name in enumerate(names):
        row[f"dice_{name}"] = round(float(dice[c]), 6)
        row[f"true_area_{name}"] = int(true[..., c].sum())
        row[f"pred_area_{name}"] = int(masks[..., c].sum())
    row["dice_mean"] = round(float(dice.mean()), 6)
    return row


def evaluate(segmenters: Sequence[str | Path], data: str | Path, out: str | Path, split: str = "val",
             classifiers: Sequence[str | Path] = (), tta: bool = False, pp: postprocess.PostProcess | None = None,
             predictor: Predictor | None = None, save_probs: bool = True, progress: bool = False,
             device: str = "cpu") -> dict[str, Any]:
    """Predict ``split`` of ``data`` and write metrics, per-image rows and saved predictions."""
    out = check_writable_dir(out)
    if predictor is None:
        predictor = Predictor.from_models(segmenters, classifiers, pp, tta, device)
    names = predictor.class_names
    ds = open_dataset(data, names)
    ids = eval_ids(ds, split, list(segmenters) + list(classifiers))
    sub = ds.subset(ids)
    k = len(names)
    dice_acc = metrics.DiceAccumulator()
    cm = np.zeros((k + 1, k + 1), np.int64)
    hist_all = np.zeros((len(ids), k, 256), np.int64)
    hist_true = np.zeros((len(ids), k, 256), np.int64)
    gates, gate_any, probs_q, trues, rows, peaks, found = [], [], [], [], [], [], []
    paths = sub.table["path"].tolist()
    for i, (_, pred) in enumerate(predictor.predict_paths(paths, progress=progress)):
        image_id = ids[i]
        true = sub.load_mask(image_id)
        if true.shape[:2] != pred.probs.shape[:2]:
            raise DataError(f"{image_id}: prediction {pred.probs.shape[:2]} != mask {true.shape[:2]}")
        q = np.round(pred.probs * 255).astype(np.uint8)
        for c in range(k):
            hist_all[i, c] = np.bincount(q[..., c].ravel(), minlength=256)
            hist_true[i, c] = np.bincount(q[..., c][true[..., c] > 0], minlength=256)
        d = dice_acc.update(pred.masks[None], true[None])[0]
        cm += metrics.confusion_matrix(metrics.labels_from_masks(pred.masks), metrics.labels_from_masks(true), k + 1)
        peaks.append(pred.probs.reshape(-1, k).max(axis=0))
        found.append(pred.masks.reshape(-1, k).any(axis=0))
        if pred.gate is not None:
            gates.append(pred.gate)
        if pred.gate_any is not None:
            gate_any.append(pred.gate_any)
        if save_probs:
            probs_q.append(q)
            trues.append(np.packbits(true > 0, axis=None))
        rows.append(_row(image_id, names, d, true, pred.masks))
    report = dice_acc.compute()
    empty = (~sub.presence()).astype(np.float64)
    iou = metrics.iou_from_confusion(cm)
    result: dict[str, Any] = {
        "data": str(data), "split": split, "images": len(ids), "tta": predictor.tta,
        "segmenters": [str(s) for s in segmenters], "classifiers": [str(c) for c in classifiers],
        "postprocess": None if predictor.pp is None else predictor.pp.__dict__,
        "dice": report.mean, "dice_per_class": dict(zip(names, report.per_class)),
        "all_empty_dice": float(empty.mean()) if len(ids) else float("nan"),
        "all_empty_dice_per_class": dict(zip(names, empty.mean(0).tolist())) if len(ids) else {},
        "iou_per_class": {n: (None if not np.isfinite(v) else float(v)) for n, v in zip(names, iou[1:])},
        "miou": metrics.mean_iou(cm),
        "confusion_matrix": cm.tolist(),
    }
    arrays: dict[str, np.ndarray] = {"hist_all": hist_all, "hist_true": hist_true,
                                     "image_ids": np.array(ids), "image_pixels": np.array(
                                         [int(h) * int(w) for h, w in zip(sub.table["height"], sub.table["width"])])}
    if gates:
        g = np.stack(gates)
        arrays["gate"] = g
        result["classifier"] = _classifier_scores(g, sub.presence(), names)
    if ids:
        image_scores = np.stack(gates) if gates else np.stack(peaks)
        arrays["image_score"] = image_scores
        result["detection"] = detection_scores(image_scores, np.stack(found), sub.presence(), names,
                                               "classifier probability" if gates else "segmenter maximum probability")
    if gate_any:
        arrays["gate_any"] = np.asarray(gate_any)
    if probs_q and len({p.shape for p in probs_q}) == 1:
        arrays["probs"] = np.stack(probs_q)  # (N, H, W, C) uint8, for tuning component sizes
        arrays["true_packed"] = np.stack(trues)  # the masks as bits, so tuning needs no dataset
    _write(out, arrays, result, rows)
    return result


def _write(out: Path, arrays: dict[str, np.ndarray], result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """predictions.npz, metrics.json and per_image.csv, each written atomically."""
    with atomic_write(out / "predictions.npz", "wb") as fh:
        np.savez_compressed(fh, **arrays)
    atomic_text(out / "metrics.json", json.dumps(result, indent=2))
    with atomic_write(out / "per_image.csv", "w", newline="") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def load_predictions(folder: str | Path) -> dict[str, np.ndarray]:
    """Arrays saved by ``evaluate``; ``true`` is unpacked to (N, H, W, C) when probabilities were saved."""
    path = Path(folder) / "predictions.npz"
    if not path.is_file():
        raise DataError(f"{path}: missing; run `steelseg evaluate` first")
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    if "probs" in out and "true_packed" in out:
        shape = out["probs"].shape
        bits = int(np.prod(shape[1:]))
        out["true"] = np.unpackbits(out.pop("true_packed"), axis=1, count=bits).reshape(shape)
    return out
