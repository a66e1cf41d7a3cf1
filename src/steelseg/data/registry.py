"""What a layout module gives the registry: how to recognise its files, read them, and (optionally)
write a dataset in its form. :mod:`steelseg.data.open` lists the layouts; adding one is a module with a
:class:`Layout` and a line there."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data.table import DefectDataset

__all__ = ["Layout", "OpenRequest"]


@dataclass(frozen=True)
class OpenRequest:
    """Everything a reader may need: the dataset folder, the Kaggle CSV path (``root/train.csv`` or the
    CSV given), class names from the user or ``classes.txt``, and the options some layouts take."""

    root: Path
    csv_path: Path
    class_names: list[str] | None
    progress: bool = False
    mask_visitor: Callable[[str, np.ndarray], None] | None = None  # masks layout: each decoded label map
    free_dirs: Sequence[str] | None = None  # folders layout: names or glob patterns of the defect-free folders
    layout: str | None = None  # the layout the user asked for (--layout), or None: detected
    options: Mapping[str, Any] = field(default_factory=dict)  # LAYOUT_OPTIONS: line_width, boxes

    @property
    def line_width(self) -> int | None:
        return self.options.get("line_width")

    @property
    def boxes(self) -> bool:
        return bool(self.options.get("boxes", False))


@dataclass(frozen=True)
class Layout:
    """One on-disk layout. ``rank`` orders detection: a layout found by its fixed file names (0) wins
    over one found by a specific structure (1), which wins over plain class folders (2); two hits of
    one rank are ambiguous and refused."""

    name: str
    detect: Callable[[OpenRequest], bool]
    read: Callable[[OpenRequest], DefectDataset]
    rank: int
    write: Callable[[DefectDataset, Path, dict[str, str], bool], None] | None = None  # (ds, stage, file names, progress)
    describe: str = ""  # what it looks like on disk, for the "no dataset found" message
