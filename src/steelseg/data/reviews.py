"""What reviewers changed: ``reviews.jsonl`` beside a feedback folder's ``train.csv``.

``steelseg serve --feedback DIR`` appends one JSON line per reviewed image::

    {"image_id": ..., "source_name": ..., "stored": "train" | "needs_masks", "bundle": ..., "reviewer": ...,
     "time": "2026-12-01T15:00:00Z", "height": H, "width": W,
     "classes": {name: {"verdict": ..., "model_rle": ..., "final_rle": ..., "model_area": n, "final_area": n}}}

so the model's mask and the corrected one are both kept. :func:`summarize` turns the file into the
numbers ``steelseg info DIR`` prints: per class how often reviewers kept, rejected, corrected or
drew a mask, and the Dice between the model's mask and the reviewer's where either holds a defect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data import rle
from steelseg.errors import DataError

__all__ = ["REVIEWS_FILE", "VERDICTS", "mask_dice", "read_reviews", "summarize"]

REVIEWS_FILE = "reviews.jsonl"
# right: the model's mask kept; wrong: rejected (no defect); corrected: the model's mask edited;
# missed: a defect the model did not find (drawn, or sent undrawn to needs_masks/); absent: none, none found
VERDICTS = ("right", "wrong", "corrected", "missed", "absent")


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def read_reviews(root: str | Path) -> list[dict[str, Any]]:
    """The records of ``root/reviews.jsonl`` ([] when there is none); a broken line is an error naming it."""
    path = Path(root) / REVIEWS_FILE
    if not path.is_file():
        return []
    out = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{k}: not a JSON line ({exc.msg})") from None
    return out


def _class_stats(records: list[dict[str, Any]], name: str) -> dict[str, Any]:
    counts = dict.fromkeys(VERDICTS, 0)
    drawn, dice = 0, []
    for r in records:
        c = r["classes"].get(name)
        if c is None:
            continue
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
        drawn += int(c["verdict"] == "missed" and c["final_area"] > 0)
        if c["model_area"] or c["final_area"]:
            shape = (int(r["height"]), int(r["width"]))
            dice.append(mask_dice(rle.decode(c["model_rle"], shape), rle.decode(c["final_rle"], shape)))
    changed = counts["wrong"] + counts["corrected"] + drawn
    return {"name": name, **counts, "drawn": drawn, "changed": changed,
            "dice_model_vs_final": float(np.mean(dice)) if dice else None, "with_defect": len(dice)}


def summarize(root: str | Path, class_names: list[str]) -> dict[str, Any] | None:
    """Per class: verdict counts, masks changed, mean Dice between the model's and the final mask
    over the images where either holds this class. None when the folder has no reviews."""
    records = read_reviews(root)
    if not records:
        return None
    reviewers = sorted({r.get("reviewer") or "-" for r in records})
    return {"reviews": len(records), "stored": {s: sum(r["stored"] == s for r in records)
                                                for s in ("train", "needs_masks")},
            "reviewers": reviewers, "bundles": sorted({str(r.get("bundle")) for r in records}),
            "classes": [_class_stats(records, n) for n in class_names]}
