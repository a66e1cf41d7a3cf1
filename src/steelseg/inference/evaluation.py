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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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

__all__ = ["EvalPart", "detection_scores", "evaluate", "eval_ids", "load_predictions", "merge_parts", "predict_part"]


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


@dataclass
class EvalPart:
    """What predicting some images of a split gives, image by image; the parts of a split, in order, concatenate
    (:func:`merge_parts`) into what predicting them in one go gives (an engine predicts the parts apart)."""

    ids: list[str]
    hist_all: np.ndarray  # (n, C, 256) quantised probabilities
    hist_true: np.ndarray  # (n, C, 256) those on true pixels
    dice: np.ndarray  # (n, C) Kaggle Dice per image and class
    cm: np.ndarray  # (C+1, C+1) pixel confusion
    peaks: np.ndarray  # (n, C) largest probability
    found: np.ndarray  # (n, C) a mask was predicted
    gates: list[np.ndarray] = field(default_factory=list)
    gate_any: list[float] = field(default_factory=list)
    probs_q: list[np.ndarray] = field(default_factory=list)
    trues: list[np.ndarray] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def predict_part(predictor: Predictor, sub: DefectDataset, ids: Sequence[str], save_probs: bool = True,
                 progress: bool = False) -> EvalPart:
    """Predict ``ids`` (of ``sub``) and keep what the metrics and tuning need."""
    names, k = predictor.class_names, len(predictor.class_names)
    part = EvalPart(list(ids), np.zeros((len(ids), k, 256), np.int64), np.zeros((len(ids), k, 256), np.int64),
                    np.zeros((len(ids), k)), np.zeros((k + 1, k + 1), np.int64), np.zeros((len(ids), k)),
                    np.zeros((len(ids), k), bool))
    paths = sub.table.set_index("image_id").loc[list(ids), "path"].tolist()
    for i, (_, pred) in enumerate(predictor.predict_paths(paths, progress=progress)):
        true = sub.load_mask(ids[i])
        if true.shape[:2] != pred.probs.shape[:2]:
            raise DataError(f"{ids[i]}: prediction {pred.probs.shape[:2]} != mask {true.shape[:2]}")
        q = np.round(pred.probs * 255).astype(np.uint8)
        for c in range(k):
            part.hist_all[i, c] = np.bincount(q[..., c].ravel(), minlength=256)
            part.hist_true[i, c] = np.bincount(q[..., c][true[..., c] > 0], minlength=256)
        part.dice[i] = metrics.kaggle_dice(pred.masks[None], true[None]).per_pair[0]
        part.cm += metrics.confusion_matrix(metrics.labels_from_masks(pred.masks), metrics.labels_from_masks(true),
                                            k + 1)
        part.peaks[i] = metrics.class_max(pred.probs)
        part.found[i] = metrics.class_max(pred.masks) > 0
        if pred.gate is not None:
            part.gates.append(pred.gate)
        if pred.gate_any is not None:
            part.gate_any.append(pred.gate_any)
        if save_probs:
            part.probs_q.append(q)
            part.trues.append(np.packbits(true > 0, axis=None))
        part.rows.append(_row(ids[i], names, part.dice[i], true, pred.masks))
    return part


def merge_parts(parts: Sequence[EvalPart]) -> EvalPart:
    """The parts of one split, in order, as one."""
    if len(parts) == 1:
        return parts[0]
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ("hist_all", "hist_true", "dice", "peaks",
                                                                       "found")}
    lists = {f: [x for p in parts for x in getattr(p, f)] for f in ("gates", "gate_any", "probs_q", "trues", "rows")}
    return EvalPart([i for p in parts for i in p.ids], cm=sum(p.cm for p in parts), **cat, **lists)


PartRunner = Callable[[list[list[str]]], list[EvalPart]]  # the ids in parts -> their EvalParts, in order


def evaluate(segmenters: Sequence[str | Path], data: str | Path, out: str | Path, split: str = "val",
             classifiers: Sequence[str | Path] = (), tta: bool = False, pp: postprocess.PostProcess | None = None,
             predictor: Predictor | None = None, save_probs: bool = True, progress: bool = False,
             device: str = "cpu", parts: tuple[int, PartRunner] | None = None) -> dict[str, Any]:
    """Predict ``split`` of ``data`` and write metrics, per-image rows and saved predictions. ``parts``: (how
    many, a runner) to predict the split in that many parts elsewhere (an engine's workers) instead of here."""
    out = check_writable_dir(out)
    if predictor is None:
        predictor = Predictor.from_models(segmenters, classifiers, pp, tta, device)
    names = predictor.class_names
    ds = open_dataset(data, names)
    ids = eval_ids(ds, split, list(segmenters) + list(classifiers))
    sub = ds.subset(ids)
    if parts is None or not ids:
        part = predict_part(predictor, sub, ids, save_probs, progress)
    else:
        n, runner = parts
        step = -(-len(ids) // max(1, min(n, len(ids))))
        part = merge_parts(runner([ids[k:k + step] for k in range(0, len(ids), step)]))
        if part.ids != list(ids):
            raise DataError("the engine's parts do not add up to the split (a part lost or repeated)")
    result, arrays = _scores(part, sub, names)
    result = {"data": str(data), "split": split, "images": len(ids), "tta": predictor.tta,
              "segmenters": [str(s) for s in segmenters], "classifiers": [str(c) for c in classifiers],
              "postprocess": None if predictor.pp is None else predictor.pp.__dict__, **result}
    if part.probs_q and len({p.shape for p in part.probs_q}) == 1:
        arrays["probs"] = np.stack(part.probs_q)  # (N, H, W, C) uint8, for tuning component sizes
        arrays["true_packed"] = np.stack(part.trues)  # the masks as bits, so tuning needs no dataset
    _write(out, arrays, result, part.rows)
    return result


def _scores(part: EvalPart, sub: DefectDataset, names: list[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """metrics.json's numbers and predictions.npz's arrays (but the probabilities) of a split's predictions."""
    n = len(part.ids)
    report = metrics.dice_report(part.dice if n else np.zeros((0, 0)))
    empty = (~sub.presence()).astype(np.float64)
    iou = metrics.iou_from_confusion(part.cm)
    result: dict[str, Any] = {
        "dice": report.mean, "dice_per_class": dict(zip(names, report.per_class)),
        "all_empty_dice": float(empty.mean()) if n else float("nan"),
        "all_empty_dice_per_class": dict(zip(names, empty.mean(0).tolist())) if n else {},
        "iou_per_class": {c: (None if not np.isfinite(v) else float(v)) for c, v in zip(names, iou[1:])},
        "miou": metrics.mean_iou(part.cm),
        "confusion_matrix": part.cm.tolist(),
    }
    arrays: dict[str, np.ndarray] = {"hist_all": part.hist_all, "hist_true": part.hist_true,
                                     "image_ids": np.array(part.ids), "image_pixels": np.array(
                                         [int(h) * int(w) for h, w in zip(sub.table["height"], sub.table["width"])])}
    if part.gates:
        g = np.stack(part.gates)
        arrays["gate"] = g
        result["classifier"] = _classifier_scores(g, sub.presence(), names)
    if n:
        image_scores = np.stack(part.gates) if part.gates else part.peaks
        arrays["image_score"] = image_scores
        result["detection"] = detection_scores(image_scores, part.found, sub.presence(), names,
                                               "classifier probability" if part.gates else
                                               "segmenter maximum probability")
    if part.gate_any:
        arrays["gate_any"] = np.asarray(part.gate_any)
    return result, arrays


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
