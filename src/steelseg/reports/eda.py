"""Exploratory data analysis: ``steelseg eda DATA --out DIR`` writes ``DIR/index.html`` (plots as
PNG files beside it, opens offline) and ``DIR/summary.json`` with the same numbers.

One pass over the data: every mask is decoded once (mask-folder masks while the dataset is opened,
Kaggle RLE in the pass) and every image is decoded once for brightness statistics and the gallery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from steelseg import metrics, viz
from steelseg.data.images import read_image
from steelseg.data.open import open_dataset
from steelseg.data.table import DefectDataset, one_hot
from steelseg.errors import DataError
from steelseg.fsutil import atomic_text
from steelseg.pages import render
from steelseg.reports.eda_plots import EdaNumbers, plot_all

# the report's plot sections: (heading, [(figure key, alt text)])
SECTIONS = [("Counts", [("counts", "images per class")]), ("Co-occurrence", [("cooccurrence", "class co-occurrence")]),
            ("Mask areas and connected components", [("areas", "mask areas"), ("components", "components per mask")]),
            ("Where defects sit", [("heatmaps", "position heatmaps")]),
            ("Image statistics", [("brightness", "brightness and contrast")])]

__all__ = ["MaskStats", "run_eda"]

HEATMAP_WIDTH = 400  # per-class position heatmaps are averaged at this width (aspect kept)
GALLERY_PER_CLASS = 3


@dataclass
class MaskStats:
    """Per-class statistics gathered from one decode of each mask."""

    heat_shape: tuple[int, int] | None = None
    heat: dict[int, np.ndarray] = field(default_factory=dict)  # class index -> summed resized masks
    components: dict[int, list[int]] = field(default_factory=dict)  # class -> components per mask
    component_sizes: dict[int, list[int]] = field(default_factory=dict)

    def add(self, binary_by_class: dict[int, np.ndarray]) -> None:
        for c, m in binary_by_class.items():
            m = np.ascontiguousarray(m, dtype=np.uint8)
            if self.heat_shape is None:
                h, w = m.shape
                self.heat_shape = (max(1, round(h * HEATMAP_WIDTH / w)), HEATMAP_WIDTH) if w > HEATMAP_WIDTH else (h, w)
            hh, ww = self.heat_shape
            small = cv2.resize(m.astype(np.float32), (ww, hh), interpolation=cv2.INTER_AREA)
            self.heat[c] = self.heat.get(c, 0) + small
            n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
            self.components.setdefault(c, []).append(n - 1)
            self.component_sizes.setdefault(c, []).extend(stats[1:, cv2.CC_STAT_AREA].tolist())

    def add_labels(self, labels: np.ndarray) -> None:
        present = np.unique(labels)
        self.add({int(v) - 1: labels == v for v in present if v > 0})


def _pct(values: np.ndarray, qs: list[float]) -> dict[str, float]:
    if not len(values):
        return {f"p{q:g}": float("nan") for q in qs}
    return {f"p{q:g}": float(np.percentile(values, q)) for q in qs}


class _Visitor:
    """Sees each mask-folder label map once while the dataset is opened: mask statistics, and the label
    maps of the first images of each class kept for the gallery (no second decode)."""

    def __init__(self, stats: MaskStats, active: bool) -> None:
        self.stats, self.active = stats, active
        self.seen: set[str] = set()
        self.kept: dict[str, np.ndarray] = {}
        self.quota: dict[int, int] = {}

    def __call__(self, image_id: str, labels: np.ndarray) -> None:
        if not self.active:  # a sample is drawn after opening: its masks are decoded in the pass
            return
        self.stats.add_labels(labels)
        self.seen.add(image_id)
        keys = [int(v) - 1 for v in np.unique(labels) if v > 0] or [-1]
        if any(self.quota.get(key, 0) < GALLERY_PER_CLASS for key in keys):
            self.kept[image_id] = labels
            for key in keys:
                self.quota[key] = self.quota.get(key, 0) + 1


def _gallery_ids(ds: DefectDataset, kept: dict[str, np.ndarray], seed: int) -> dict[int, list[int]]:
    """Row indices to show per class (-1: defect-free); mask-folder data shows images whose masks were kept."""
    rng = np.random.default_rng(seed)
    pres = ds.presence()
    pool = np.ones(len(ds.table), bool)
    if kept:
        pool = ds.table["image_id"].isin(list(kept)).to_numpy()
    ids = {c: rng.permutation(np.flatnonzero(pres[:, c] & pool))[:GALLERY_PER_CLASS].tolist()
           for c in range(ds.num_classes)}
    ids[-1] = rng.permutation(np.flatnonzero(~pres.any(axis=1) & pool))[:GALLERY_PER_CLASS].tolist()
    return ids


def _read_pass(ds: DefectDataset, visitor: _Visitor, wanted: set[int],
               progress: bool) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """One pass over the images: brightness and contrast per image, gallery overlays, and the masks the
    opening did not decode (Kaggle RLE, sampled data) into the mask statistics."""
    n, k, pres = len(ds.table), ds.num_classes, ds.presence()
    brightness, contrast = np.zeros(n), np.zeros(n)
    gallery: dict[int, np.ndarray] = {}
    it: Any = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="reading images", unit="img")
    for i in it:
        row = ds.table.iloc[i]
        image_id = row["image_id"]
        img = read_image(row["path"])
        brightness[i], contrast[i] = float(img.mean()), float(img.std())
        mask = None
        if image_id not in visitor.seen:  # decode the mask here, once
            mask = ds.load_mask(image_id)
            visitor.stats.add({c: mask[..., c] for c in range(k) if pres[i, c]})
        if i in wanted:
            if mask is None:
                mask = one_hot(visitor.kept[image_id], k) if image_id in visitor.kept else ds.load_mask(image_id)
            gallery[i] = viz.overlay(img, mask)
    return brightness, contrast, gallery


def _class_row(ds: DefectDataset, c: int, stats: MaskStats, brightness: np.ndarray, contrast: np.ndarray,
               all_empty: np.ndarray) -> dict[str, Any]:
    pres, areas, n = ds.presence(), ds.areas(), len(ds.table)
    a = areas[pres[:, c], c]
    comps = np.asarray(stats.components.get(c, []))
    sizes = np.asarray(stats.component_sizes.get(c, []))
    return {
        "id": c + 1, "name": ds.class_names[c], "images": int(pres[:, c].sum()),
        "image_share": float(pres[:, c].mean()) if n else 0.0,
        "pixel_share": float(areas[:, c].sum() / max(float((ds.table["height"] * ds.table["width"]).sum()), 1)),
        "area": {**_pct(a, [1, 5, 25, 50, 75, 95, 99]), "mean": float(a.mean()) if len(a) else float("nan")},
        "components_per_mask": {"mean": float(comps.mean()) if len(comps) else float("nan"),
                                "max": int(comps.max()) if len(comps) else 0},
        "component_size": _pct(sizes, [5, 50, 95]),
        "brightness_mean": float(brightness[pres[:, c]].mean()) if pres[:, c].any() else float("nan"),
        "contrast_mean": float(contrast[pres[:, c]].mean()) if pres[:, c].any() else float("nan"),
        "all_empty_dice": float(all_empty[:, c].mean()) if n else float("nan"),
        "suggested_min_area": float(np.percentile(a, 5)) if len(a) else None,
    }


def _summary(data: str | Path, ds: DefectDataset, sampled: bool, stats: MaskStats, brightness: np.ndarray,
             contrast: np.ndarray) -> dict[str, Any]:
    """The numbers of the report (summary.json): counts, co-occurrence, the all-empty Kaggle Dice, per class."""
    pres, areas, n, k = ds.presence(), ds.areas(), len(ds.table), ds.num_classes
    free = ~pres.any(axis=1)
    empty_pred = np.zeros_like(areas)
    all_empty = metrics.dice_from_counts(empty_pred, empty_pred, areas)
    classes_per_image = pres.sum(axis=1)
    return {
        "data": str(data), "layout": ds.layout, "images": n, "sampled": sampled,
        "image_sizes": sorted({f"{int(w)}x{int(h)}" for h, w in zip(ds.table["height"], ds.table["width"])}),
        "class_names": ds.class_names,
        "defect_free": int(free.sum()), "defect_free_share": float(free.mean()) if n else 0.0,
        "pairs": n * k, "nonempty_pairs": int(pres.sum()),
        "defects_per_image": {str(v): int((classes_per_image == v).sum()) for v in range(k + 1)},
        "cooccurrence": (pres.T.astype(int) @ pres.astype(int)).tolist(),
        "all_empty_dice": float(all_empty.mean()) if n else float("nan"),
        "brightness_defect_free": float(brightness[free].mean()) if free.any() else None,
        "contrast_defect_free": float(contrast[free].mean()) if free.any() else None,
        "classes": [_class_row(ds, c, stats, brightness, contrast, all_empty) for c in range(k)],
    }


def _gallery(ds: DefectDataset, img_dir: Path, gallery_ids: dict[int, list[int]],
             gallery: dict[int, np.ndarray]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The gallery's PNGs (at most 800 pixels wide), and per class and defect-free: (title, [(file, image id)])."""
    out = []
    for c in list(range(ds.num_classes)) + [-1]:
        cells = []
        for i in gallery_ids[c]:
            pic = gallery[i]
            if pic.shape[1] > 800:
                pic = cv2.resize(pic, (800, round(pic.shape[0] * 800 / pic.shape[1])), interpolation=cv2.INTER_AREA)
            fname = f"gallery_{'free' if c < 0 else c + 1}_{i}.png"
            viz.write_rgb(img_dir / fname, pic)
            cells.append((fname, str(ds.table.iloc[i]["image_id"])))
        out.append(("defect-free" if c < 0 else ds.class_names[c], cells))
    return out


def run_eda(data: str | Path, out: str | Path, class_names: list[str] | None = None, sample: int | None = None,
            seed: int = 0, progress: bool = False, layout: str | None = None,
            free_dirs: list[str] | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the report; returns the summary dict also written to ``summary.json``."""
    if sample is not None and sample < 1:
        raise DataError(f"--sample {sample}: must be >= 1 (or left out for every image)")
    out = Path(out)
    img_dir = out / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    stats = MaskStats()
    visitor = _Visitor(stats, active=sample is None)
    ds = open_dataset(data, class_names, progress=progress, mask_visitor=visitor, layout=layout, free_dirs=free_dirs,
                      options=options)
    sampled = sample is not None and sample < len(ds.table)
    if sampled:
        rng = np.random.default_rng(seed)
        ds = ds.subset(sorted(rng.choice(ds.image_ids, size=sample, replace=False).tolist()))
    gallery_ids = _gallery_ids(ds, visitor.kept, seed)
    wanted = {i for v in gallery_ids.values() for i in v}
    brightness, contrast, gallery = _read_pass(ds, visitor, wanted, progress)
    summary = _summary(data, ds, sampled, stats, brightness, contrast)
    numbers = EdaNumbers(ds.class_names, ds.presence(), ds.areas(), brightness, contrast, stats,
                         summary["defects_per_image"], summary["cooccurrence"])
    figs = plot_all(img_dir, numbers)
    legend = [(nm, tuple(viz.color_of(c))) for c, nm in enumerate(ds.class_names)]
    atomic_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_text(out / "index.html", render("eda.html", s=summary, figs=figs, sections=SECTIONS, legend=legend,
                                           gallery=_gallery(ds, img_dir, gallery_ids, gallery)))
    return summary
