"""What one prediction found, per class, in the one form every consumer writes (the archive job's rows, the
watcher's log): found, area in pixels, the gate's probability (None without a gate), the largest pixel
probability and the mask as Kaggle RLE; and the smallest image side every model takes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from steelseg.data import rle

__all__ = ["MIN_SIDE", "per_class", "too_small"]

MIN_SIDE = 16  # pixels a side: what every model takes (the encoders' five halvings need 2**4 and a margin)


def too_small(height: int, width: int, min_side: int = MIN_SIDE) -> str | None:
    """Why an image of this size cannot be predicted, or None."""
    if min(height, width) < min_side:
        return f"image is {width}x{height}; the model needs at least {min_side}x{min_side} pixels"
    return None


def per_class(pred: Any, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{class: {found, area, gate, max_probability, rle}} of a :class:`~steelseg.inference.predictor.Prediction`."""
    out = {}
    for c, name in enumerate(names):
        mask = pred.masks[..., c]
        area = int(mask.sum())
        out[name] = {"found": area > 0, "area": area,
                     "gate": None if pred.gate is None else round(float(pred.gate[c]), 6),
                     "max_probability": round(float(pred.probs[..., c].max()), 6),
                     "rle": rle.encode(mask) if area else ""}
    return out
