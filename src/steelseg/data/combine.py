"""Several dataset folders as one table: ``data.extra`` (reviewed images from ``steelseg serve
--feedback``, pseudo-labelled images) beside the main dataset.

Each extra folder may have any layout; its classes must be the main dataset's (by name, when the
folder says them in ``classes.txt``; by count otherwise). Its image ids get the prefix
``<folder name>/`` so they can never collide with the main dataset's, and each image keeps its
masks from its own layout's decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from steelseg.data.table import DefectDataset, read_class_names
from steelseg.errors import DataError

__all__ = ["PSEUDO_FILE", "ExtraSet", "combine", "extra_prefix"]

PSEUDO_FILE = "pseudo_labels.csv"  # marks a folder of `steelseg pseudo-label`: it never validates


@dataclass
class ExtraSet:
    """One extra folder as it entered the combined table."""

    path: str
    prefix: str
    image_ids: list[str]  # the prefixed ids
    layout: str


class _Dispatch:
    """The combined table's mask decoder: each image id goes to the decoder of the set it came from."""

    def __init__(self, main: DefectDataset, extras: list[tuple[str, DefectDataset]]) -> None:
        self.main = main
        self.extras = extras

    def load(self, image_id: str, shape: tuple[int, int], num_classes: int) -> np.ndarray:
        for prefix, ds in self.extras:
            if image_id.startswith(prefix):
                return ds.masks.load(image_id[len(prefix):], shape, num_classes)
        return self.main.masks.load(image_id, shape, num_classes)


def extra_prefix(path: str | Path, taken: set[str]) -> str:
    """``<folder name>/`` (``+2`` etc. appended when two extra folders share a name)."""
    name = Path(path).resolve().name or "extra"
    prefix, k = f"+{name}/", 1
    while prefix in taken:
        k += 1
        prefix = f"+{name}{k}/"
    return prefix


def _check_classes(main: DefectDataset, extra: DefectDataset, path: str) -> None:
    named = read_class_names(extra.root)
    if named is not None and named != main.class_names:
        raise DataError(f"data.extra {path}: its classes.txt names {named}, the main dataset's classes are "
                        f"{main.class_names}; an extra folder must use the same classes in the same order")
    if extra.num_classes != main.num_classes:
        raise DataError(f"data.extra {path}: {extra.num_classes} classes, the main dataset has {main.num_classes}")


def combine(main: DefectDataset, extras: Sequence[tuple[str, DefectDataset]]) -> tuple[DefectDataset, list[ExtraSet]]:
    """The main dataset with the extra ones appended (ids prefixed), and what each extra added."""
    if not extras:
        return main, []
    tables, sets, decoders = [main.table], [], []
    taken: set[str] = set()
    for path, ds in extras:
        _check_classes(main, ds, path)
        prefix = extra_prefix(path, taken)
        taken.add(prefix)
        t = ds.table.copy()
        t["image_id"] = prefix + t["image_id"].astype(str)
        if "group" in main.table.columns:  # extra images form their own groups: never merged with a main group
            own = ds.table["group"].astype(str) if "group" in ds.table.columns else ds.table["image_id"].astype(str)
            t["group"] = prefix + own.to_numpy()
        tables.append(t)
        decoders.append((prefix, ds))
        sets.append(ExtraSet(path, prefix, t["image_id"].tolist(), ds.layout))
    table = pd.concat(tables, ignore_index=True, sort=False)
    if "group" in table.columns and table["group"].isna().any():
        table["group"] = table["group"].fillna(table["image_id"])
    if table["image_id"].duplicated().any():
        dup = table["image_id"][table["image_id"].duplicated()].tolist()[:3]
        raise DataError(f"data.extra: image ids {dup} occur twice; rename a folder of data.extra")
    n_extra = sum(len(s.image_ids) for s in sets)
    combined = replace(main, table=table, masks=_Dispatch(main, decoders), skipped=list(main.skipped),
                       reason=f"{main.reason}; + {n_extra} image(s) from data.extra")
    return combined, sets
