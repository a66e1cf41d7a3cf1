"""The dataset fingerprint ``steelseg plan`` and ``steelseg fit`` plan from (as nnU-Net's "dataset
fingerprint"): sizes, channels, the defect-free share, groups and, per class, how many images hold it,
its pixel share and the areas and widths of its connected components. NumPy and OpenCV only.

A component's *width* is its thickness: twice the largest distance from an inside pixel to the
background, minus one (a 1-pixel line is 1 wide, a 3-pixel band 3), whatever its length or bend. Width and
area percentiles are weighted by pixels (the 5th percentile width is the width below which 5% of the
class's defect pixels lie), so that specks of label noise, many but tiny, do not set them. The planner
keeps the thinnest defects (the 5th percentile width of the thinnest class) a few pixels wide inside the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from steelseg.data.table import DefectDataset, progress_bar

__all__ = ["ClassPrint", "Fingerprint", "component_stats", "fingerprint"]

SAMPLE_DEFECTIVE = 400  # masks decoded per class at most for the component statistics
SAMPLE_CHANNELS = 16  # image headers read to tell gray from colour


@dataclass
class ClassPrint:
    """One class: images holding it, its share of all pixels, its components' areas and widths (pixels)."""

    name: str
    images: int
    image_share: float
    pixel_share: float
    components: int = 0  # counted on the masks sampled
    area_median: float | None = None
    area_p5: float | None = None
    width_median: float | None = None
    width_p5: float | None = None
    masks_sampled: int = 0


@dataclass
class Fingerprint:
    """What the planner knows of a dataset (JSON-able: ``asdict``)."""

    root: str
    layout: str
    images: int
    heights: dict[str, float]  # min, median, max
    widths: dict[str, float]
    sizes: int  # distinct image sizes
    channels: int  # 1 = every sampled image gray (or colour with equal channels), 3 = colour
    defect_free: int
    defect_free_share: float
    groups: int | None
    splits: dict[str, int]
    classes: list[ClassPrint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        return cls(**{**d, "classes": [ClassPrint(**c) for c in d.get("classes", [])]})

    @property
    def thinnest_width(self) -> float | None:
        """The 5th percentile width of the thinnest class (None when no component was measured)."""
        ws = [c.width_p5 for c in self.classes if c.width_p5 is not None]
        return min(ws) if ws else None

    @property
    def rarest_image_share(self) -> float:
        shares = [c.image_share for c in self.classes if c.images]
        return min(shares) if shares else 0.0


def component_stats(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(areas, widths) of the 8-connected components of a binary (H, W) mask."""
    import cv2

    m = (mask > 0).astype(np.uint8)
    if not m.any():
        return np.zeros(0), np.zeros(0)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    padded = np.pad(m, 1)  # a component touching the border is not thinner for it
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    peak = np.zeros(n)
    np.maximum.at(peak, labels.ravel(), dist.ravel())
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    widths = np.maximum(2 * peak[1:] - 1, 1.0)
    return areas, widths


def _channels(ds: DefectDataset) -> int:
    from steelseg.data.images import read_image

    paths = ds.table["path"].tolist()
    step = max(1, len(paths) // SAMPLE_CHANNELS)
    for p in paths[::step][:SAMPLE_CHANNELS]:
        img = read_image(p, None)
        # colour when over 1% of the pixels differ between channels by more than JPEG's chroma noise
        if img.ndim == 3 and img.shape[-1] >= 3 and (np.ptp(img[..., :3].astype(np.int16), axis=-1) > 12).mean() > 0.01:
            return 3
    return 1


def _stat(values: list[float], q: float, weights: list[float]) -> float | None:
    """The ``q``-th percentile of ``values``, each counted ``weights`` times (pixels)."""
    if not values:
        return None
    order = np.argsort(values)
    v, w = np.asarray(values)[order], np.asarray(weights, np.float64)[order]
    cum = np.cumsum(w) / w.sum()
    return float(v[min(int(np.searchsorted(cum, q / 100)), v.size - 1)])


def fingerprint(ds: DefectDataset, sample: int = SAMPLE_DEFECTIVE, seed: int = 0, progress: bool = False) -> Fingerprint:
    """The fingerprint of ``ds``; component statistics from up to ``sample`` masks per class (seeded)."""
    pres = ds.presence()
    areas = ds.areas()
    n = len(ds.table)
    pixels = float((ds.table["height"] * ds.table["width"]).sum()) or 1.0
    rng = np.random.default_rng(seed)
    chosen: dict[int, set[int]] = {}
    for c in range(ds.num_classes):
        rows = np.flatnonzero(pres[:, c])
        chosen[c] = set(rng.choice(rows, size=min(sample, rows.size), replace=False).tolist()) if rows.size else set()
    comp: dict[int, tuple[list[float], list[float]]] = {c: ([], []) for c in range(ds.num_classes)}
    todo = sorted(set().union(*chosen.values())) if chosen else []
    ids = ds.image_ids
    for i in progress_bar(todo, len(todo), "fingerprint", progress):
        mask = ds.load_mask(ids[i])
        for c in range(ds.num_classes):
            if i in chosen[c]:
                a, w = component_stats(mask[..., c])
                comp[c][0].extend(a.tolist())
                comp[c][1].extend(w.tolist())
    classes = []
    for c, name in enumerate(ds.class_names):
        a, w = comp[c]
        classes.append(ClassPrint(name, int(pres[:, c].sum()), float(pres[:, c].mean()) if n else 0.0,
                                  float(areas[:, c].sum() / pixels), len(a), _stat(a, 50, a), _stat(a, 5, a),
                                  _stat(w, 50, a), _stat(w, 5, a), len(chosen[c])))
    h, w = ds.table["height"].to_numpy(float), ds.table["width"].to_numpy(float)

    def spread(v: np.ndarray) -> dict[str, float]:
        return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())} if v.size else {}

    free = int((~pres.any(axis=1)).sum())
    return Fingerprint(str(ds.root), ds.layout, n, spread(h), spread(w), len(set(zip(h.tolist(), w.tolist()))),
                       _channels(ds) if n else 1, free, free / n if n else 0.0,
                       None if ds.groups is None else len(set(ds.groups)),
                       {k: len(v) for k, v in ds.splits.items()}, classes)
