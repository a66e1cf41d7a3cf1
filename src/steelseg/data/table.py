"""The sample table every layout reads into: :class:`DefectDataset`.

The table knows no file format. Each layout (:mod:`steelseg.data.kaggle`, ``voc``, ``folders``,
``mvtec``, ``coco``) builds the table from its own files and hands it a :class:`MaskSource`, the
decoder of its own rows, which :meth:`DefectDataset.load_mask` calls. A new layout therefore adds a
module and a registry entry (:mod:`steelseg.data.open`), never a branch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from steelseg.data.images import image_size, read_image
from steelseg.errors import DataError
from steelseg.fsutil import confine

__all__ = ["DefectDataset", "MaskSource", "build_table", "image_row", "one_hot", "progress_bar", "read_class_names",
           "read_image_ids"]


class MaskSource(Protocol):
    """A layout's decoder of its own rows: one image's masks as (H, W, C) uint8 of 0/1."""

    def load(self, image_id: str, shape: tuple[int, int], num_classes: int) -> np.ndarray: ...


def read_class_names(root: Path) -> list[str] | None:
    """Names from ``classes.txt`` in the dataset root (one per line; a leading background is dropped)."""
    f = root / "classes.txt"
    if not f.is_file():
        return None
    names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
    if names and names[0].lower() in {"background", "_background_", "bg"}:
        names = names[1:]
    return names or None


def read_image_ids(path: str | Path) -> list[str]:
    """Read a split or id list: one image id (or file stem) per line."""
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]


def progress_bar(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    """``iterable`` with a tqdm bar when ``enabled`` (an interactive terminal), else as it is."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", leave=False)


def image_row(image_id: str, path: Path, root: Path) -> dict[str, Any]:
    """A table row for one image, read from its header; every layout makes its rows here, so no layout
    reads an image outside ``root`` (:func:`steelseg.fsutil.confine`, links followed)."""
    h, w = image_size(confine(path, root, "image"))
    return {"image_id": image_id, "path": str(path), "height": h, "width": w}


def build_table(rows: list[dict[str, Any]], num_classes: int, areas: np.ndarray) -> pd.DataFrame:
    """The sample table from :func:`image_row` rows and (N, C) mask areas."""
    table = pd.DataFrame(rows, columns=["image_id", "path", "height", "width"])
    for c in range(num_classes):
        table[f"area_{c + 1}"] = areas[:, c] if len(rows) else np.zeros(0, np.int64)
    for c in range(num_classes):
        table[f"has_{c + 1}"] = table[f"area_{c + 1}"] > 0
    return table


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) class indices (0 = background) -> (H, W, C) uint8 masks."""
    return (labels[..., None] == np.arange(1, num_classes + 1, dtype=labels.dtype)).astype(np.uint8)


@dataclass
class DefectDataset:
    """A defect dataset: the sample table plus what is needed to load images and masks.

    ``table`` has one row per image: ``image_id``, ``path``, ``height``, ``width`` and for each
    class id c (1-based) ``area_c`` (mask pixels) and ``has_c`` (presence); layouts with groups (a
    physical part, a coil) add ``group``, which splits keep together. ``masks`` is the layout's
    decoder of its rows.
    """

    root: Path
    layout: str
    class_names: list[str]
    table: pd.DataFrame
    masks: MaskSource = field(repr=False)
    splits: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list, repr=False)  # files the reader did not take, by name
    reason: str = ""  # why this layout was chosen, for `steelseg info`
    options: dict[str, Any] = field(default_factory=dict)  # the layout options it was read with (line_width, ...)
    _idx: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_ids(self) -> list[str]:
        return self.table["image_id"].tolist()

    @property
    def groups(self) -> list[str] | None:
        """Each image's group (the ``group`` column), or None when the layout has no groups."""
        return self.table["group"].astype(str).tolist() if "group" in self.table else None

    def presence(self) -> np.ndarray:
        """(N, C) bool matrix of which classes each image holds."""
        return self.table[[f"has_{c}" for c in range(1, self.num_classes + 1)]].to_numpy(bool)

    def areas(self) -> np.ndarray:
        """(N, C) mask pixel counts."""
        return self.table[[f"area_{c}" for c in range(1, self.num_classes + 1)]].to_numpy(np.int64)

    def row(self, image_id: str) -> pd.Series:
        idx = self._index().get(image_id)
        if idx is None:
            raise DataError(f"{self.root}: no image {image_id!r} in this dataset")
        return self.table.iloc[idx]

    def _index(self) -> dict[str, int]:
        if self._idx is None or len(self._idx) != len(self.table):
            self._idx = {k: i for i, k in enumerate(self.table["image_id"])}
        return self._idx

    def load_image(self, image_id: str, channels: int | None = 1) -> np.ndarray:
        """uint8 (H, W) or (H, W, 3), read through :func:`steelseg.data.images.read_image`."""
        return read_image(self.row(image_id)["path"], channels)

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W, C) uint8 mask of 0/1 for one image, decoded by the layout's :class:`MaskSource`."""
        r = self.row(image_id)
        return self.masks.load(image_id, (int(r["height"]), int(r["width"])), self.num_classes)

    def subset(self, image_ids: Sequence[str]) -> DefectDataset:
        """A dataset restricted to ``image_ids`` (order kept); unknown ids are an error."""
        idx = self._index()
        missing = [i for i in image_ids if i not in idx]
        if missing:
            raise DataError(
                f"{len(missing)} image id(s) not in {self.root}, e.g. {missing[:3]}: "
                "check the split or folds file against the dataset"
            )
        table = self.table.iloc[[idx[i] for i in image_ids]].reset_index(drop=True)
        keep = set(image_ids)
        return replace(
            self,
            table=table,
            splits={k: [i for i in v if i in keep] for k, v in self.splits.items()},
        )

    def split(self, name: str) -> DefectDataset:
        if name not in self.splits:
            raise DataError(
                f"{self.root}: no split {name!r}; available: {sorted(self.splits) or 'none'}"
            )
        return self.subset(self.splits[name])

    def summary(self) -> dict[str, Any]:
        """Counts a user wants first: images, defect-free share, per-class images and pixels."""
        pres = self.presence()
        areas = self.areas()
        pixels = float((self.table["height"] * self.table["width"]).sum())
        sizes = sorted({(int(h), int(w)) for h, w in zip(self.table["height"], self.table["width"])})
        return {
            "root": str(self.root),
            "layout": self.layout,
            "reason": self.reason,
            "images": int(len(self.table)),
            "groups": None if self.groups is None else len(set(self.groups)),
            "defect_free": int((~pres.any(axis=1)).sum()),
            "defect_free_share": float((~pres.any(axis=1)).mean()) if len(pres) else 0.0,
            "image_sizes": [f"{w}x{h}" for h, w in sizes],
            "skipped": list(self.skipped),
            "splits": {k: len(v) for k, v in self.splits.items()},
            "classes": [
                {
                    "id": c + 1,
                    "name": name,
                    "images": int(pres[:, c].sum()),
                    "pixel_share": float(areas[:, c].sum() / pixels) if pixels else 0.0,
                }
                for c, name in enumerate(self.class_names)
            ],
        }
