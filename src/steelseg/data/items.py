"""Masks kept as a list of sources per image (a mask file, a COCO segmentation), for the layouts that
store one source per (image, class) or per object: ``folders``, ``mvtec`` and ``coco``.

Each layout gives its own ``decode(source, where, shape) -> bool (H, W)``; :func:`build_from_items`
decodes every source once to fill the sample table's areas, and :class:`ItemMasks` decodes them again
when a mask is asked for. Binary mask files are read by :func:`read_binary_mask`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data.images import read_image
from steelseg.data.table import DefectDataset, build_table, image_row, progress_bar
from steelseg.errors import DataError
from steelseg.fsutil import confine

__all__ = ["Decoder", "ItemMasks", "build_from_items", "read_binary_mask", "read_mask_file"]

# (class index, source, where): where names the file or JSON entry in errors
Item = tuple[int, Any, str]
Decoder = Callable[[Any, str, tuple[int, int]], np.ndarray]


def read_binary_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A binary mask file -> bool (H, W), binarised at half of its maximum (0/1, 0/255, JPEG noise)."""
    m = read_image(path, None)
    if m.ndim == 3:
        m = m.max(axis=2)
    if m.shape != tuple(shape):
        raise DataError(f"{path}: mask is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}; "
                        "masks must match their image size")
    top = int(m.max()) if m.size else 0
    return m > top / 2 if top else np.zeros(shape, bool)


def read_mask_file(src: Any, where: str, shape: tuple[int, int]) -> np.ndarray:
    """The :data:`Decoder` of layouts whose sources are mask files."""
    return read_binary_mask(Path(src), shape)


def _union(items: list[Item], decode: Decoder, shape: tuple[int, int]) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for c, src, where in items:
        m = decode(src, where, shape)
        out[c] = out[c] | m if c in out else m
    return out


@dataclass
class ItemMasks:
    """Per image id, its (class, source, where) items, decoded by the layout's ``decode``."""

    items: dict[str, list[Item]] = field(default_factory=dict)
    decode: Decoder = read_mask_file

    def load(self, image_id: str, shape: tuple[int, int], num_classes: int) -> np.ndarray:
        out = np.zeros((*shape, num_classes), np.uint8)
        for c, m in _union(self.items.get(image_id, []), self.decode, shape).items():
            out[..., c] = m
        return out


def build_from_items(root: Path, layout: str, class_names: list[str], entries: list[tuple[str, Path, list[Item]]],
                     splits: dict[str, list[str]], skipped: list[str], progress: bool,
                     decode: Decoder = read_mask_file, confine_to: Path | None = None) -> DefectDataset:
    """Sample table from (image id, image path, mask items), decoding every mask once for the areas.
    Images and mask files must lie inside ``confine_to`` (default ``root``)."""
    k = len(class_names)
    base = confine_to or root
    rows, areas, items = [], np.zeros((len(entries), k), np.int64), {}
    for i, (image_id, path, its) in enumerate(progress_bar(entries, len(entries), "reading masks", progress)):
        rows.append(image_row(image_id, path, base))
        for _, src, where in its:
            if isinstance(src, Path):  # a mask file (COCO segmentations are inline)
                confine(src, base, "mask")
        for c, m in _union(its, decode, (rows[-1]["height"], rows[-1]["width"])).items():
            areas[i, c] = int(m.sum())
        items[image_id] = its
    return DefectDataset(root, layout, class_names, build_table(rows, k, areas), ItemMasks(items, decode),
                         splits, skipped)
