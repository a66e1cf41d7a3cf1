"""Post-processing of per-class probability maps. NumPy and OpenCV only (no torch).

Per class c, in this order:

1. gating: drop class c when the classifier's probability for c (or for "any defect") is below
   its gate threshold;
2. pixel threshold: ``prob > pixel_threshold[c]``; with ``gate_scale[c]`` = s > 1 the threshold moves
   with the classifier's probability p instead (Severstal 55th place, a soft gate):
   ``t = t0 * s - t0 * (s - 1) * p``, t0 at p = 1 and s * t0 (at most 1: nothing) at p = 0;
3. small components: remove connected components smaller than ``min_component[c]`` pixels;
4. minimum area: drop the whole mask when fewer than ``min_area[c]`` pixels remain.

These are the knobs that decided the Severstal leaderboard; ``steelseg tune`` fits them on
validation predictions and stores them in ``postprocess.json``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

__all__ = ["PostProcess", "apply", "apply_batch", "components", "pixel_thresholds", "remove_small_components"]


@dataclass
class PostProcess:
    """Per-class parameters; lists are indexed by class (0-based)."""

    pixel_threshold: list[float]
    min_area: list[int]
    min_component: list[int] = field(default_factory=list)
    gate_threshold: list[float] | None = None  # per-class classifier gates; None = no gating
    gate_any: float | None = None  # gate on the classifier's "any defect" probability
    gate_scale: list[float] | None = None  # per class s >= 1: classifier-scaled pixel thresholds; None or 1 = fixed

    def __post_init__(self) -> None:
        k = len(self.pixel_threshold)
        if not k:
            raise ValueError("pixel_threshold: empty; one value per class is needed")
        if not self.min_component:
            self.min_component = [0] * k
        for name in ("min_area", "min_component"):
            if len(getattr(self, name)) != k:
                raise ValueError(f"{name} has {len(getattr(self, name))} values for {k} classes")
            if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in getattr(self, name)):
                raise ValueError(f"{name}: {getattr(self, name)}; pixel counts must be whole numbers >= 0")
            setattr(self, name, [int(v) for v in getattr(self, name)])
        if self.gate_threshold is not None and len(self.gate_threshold) != k:
            raise ValueError(f"gate_threshold has {len(self.gate_threshold)} values for {k} classes")
        # A probability threshold outside 0..1 (or NaN) marks every pixel or none: refused.
        for name in ("pixel_threshold", "gate_threshold"):
            for v in getattr(self, name) or []:
                if not _is_prob(v):
                    raise ValueError(f"{name}: {v!r} is not a probability in 0..1")
        if self.gate_scale is not None:
            if len(self.gate_scale) != k:
                raise ValueError(f"gate_scale has {len(self.gate_scale)} values for {k} classes")
            if any(isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 1
                   for v in self.gate_scale):
                raise ValueError(f"gate_scale: {self.gate_scale}; each a number >= 1 (1 = the fixed threshold)")
            self.gate_scale = [float(v) for v in self.gate_scale]
        if self.gate_any is not None and not _is_prob(self.gate_any):
            raise ValueError(f"gate_any: {self.gate_any!r} is not a probability in 0..1 (or null)")

    @classmethod
    def default(cls, num_classes: int) -> PostProcess:
        """Threshold 0.5, no minimum area, no gating: the untuned baseline."""
        return cls([0.5] * num_classes, [0] * num_classes)

    @property
    def num_classes(self) -> int:
        return len(self.pixel_threshold)

    def save(self, path: str | Path) -> Path:
        from steelseg.fsutil import atomic_json

        return atomic_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> PostProcess:
        """Read and validate ``postprocess.json``; errors name the file and the field."""
        from steelseg.schema import load_json

        return load_json(path, cls)


def _is_prob(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Zero connected components (8-connected) of a binary (H, W) mask smaller than ``min_size``."""
    if min_size <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_size)
    small = small[small > 0]  # label 0 is the background
    if not small.size:
        return mask
    keep = np.ones(n, bool)
    keep[small] = False
    keep[0] = False
    return keep[labels].astype(mask.dtype)


def components(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """Connected components (8-connected) of a binary (H, W) mask as (x, y, width, height, area)."""
    if not mask.any():
        return []
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [tuple(int(v) for v in stats[i, :5]) for i in range(1, n)]


def pixel_thresholds(pp: PostProcess, c: int, gate_probs: np.ndarray | float | None = None) -> np.ndarray:
    """Class ``c``'s pixel threshold for each image whose classifier probability is in ``gate_probs``:
    ``t0 * (s - (s - 1) * p)`` clipped to 1 with ``gate_scale[c]`` = s, else t0."""
    t0 = pp.pixel_threshold[c]
    s = 1.0 if pp.gate_scale is None else pp.gate_scale[c]
    if gate_probs is None or s == 1.0:
        return np.full(np.shape(gate_probs) if gate_probs is not None else (), t0, np.float64)
    return np.minimum(t0 * (s - (s - 1.0) * np.asarray(gate_probs, np.float64)), 1.0)


def apply(probs: np.ndarray, pp: PostProcess, gate_probs: np.ndarray | None = None,
          gate_any_prob: float | None = None) -> np.ndarray:
    """(H, W, C) probabilities -> (H, W, C) uint8 masks. ``gate_probs`` is (C,) from a classifier."""
    if probs.shape[-1] != pp.num_classes:
        raise ValueError(f"probabilities have {probs.shape[-1]} classes, post-processing {pp.num_classes}")
    out = np.zeros(probs.shape, np.uint8)
    if pp.gate_any is not None and gate_any_prob is not None and gate_any_prob < pp.gate_any:
        return out
    for c in range(pp.num_classes):
        if pp.gate_threshold is not None and gate_probs is not None and gate_probs[c] < pp.gate_threshold[c]:
            continue
        t = float(pixel_thresholds(pp, c, None if gate_probs is None else gate_probs[c]))
        m = (probs[..., c] > t).astype(np.uint8)
        m = remove_small_components(m, pp.min_component[c])
        if int(m.sum()) >= max(pp.min_area[c], 1):
            out[..., c] = m
    return out


def apply_batch(probs: np.ndarray, pp: PostProcess, gate_probs: np.ndarray | None = None,
                gate_any_probs: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, C) probabilities -> (N, H, W, C) masks."""
    return np.stack([
        apply(p, pp, None if gate_probs is None else gate_probs[i],
              None if gate_any_probs is None else float(gate_any_probs[i]))
        for i, p in enumerate(probs)
    ])
