"""One way in for datasets: :func:`open_dataset` detects the layout from what is on disk (or takes
``layout``) and hands the folder to that layout's reader. Every layout gives the same sample table
(:class:`steelseg.data.table.DefectDataset`).

Class names come from the caller, from a ``classes.txt`` in the dataset root (one name per line), from
the layout (class folders, COCO categories), or default to ``class1..classC`` with C read from the data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data import coco, cvat, folders, kaggle, labelme, labelstudio, mvtec, voc, yolo
from steelseg.data.registry import Layout, OpenRequest
from steelseg.data.table import DefectDataset, read_class_names
from steelseg.errors import DataError

__all__ = ["LAYOUTS", "LAYOUT_OPTIONS", "check_options", "detect_layouts", "open_dataset"]

# the registry: name -> layout, in the order the messages list them
LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (kaggle.LAYOUT, voc.LAYOUT, folders.LAYOUT, folders.GROUPS,
                                                         mvtec.LAYOUT, coco.LAYOUT, yolo.LAYOUT, labelme.LAYOUT,
                                                         cvat.LAYOUT, labelstudio.LAYOUT)}


def detect_layouts(req: OpenRequest) -> list[str]:
    """The layouts whose files are there, of the most specific rank that has any (see :class:`Layout`)."""
    hits = [lay for lay in LAYOUTS.values() if lay.detect(req)]
    if not hits:
        return []
    best = min(lay.rank for lay in hits)
    return [lay.name for lay in hits if lay.rank == best]


LAYOUT_OPTIONS = {"line_width": "labelme, cvat: pixels a line, polyline or point is drawn wide (an int >= 1)",
                  "boxes": "yolo: read box-only lines (5 columns) as filled boxes (true / false)"}


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The layout options, checked: a known name and a value of the right kind, else a DataError."""
    out = {}
    for k, v in options.items():
        if k not in LAYOUT_OPTIONS:
            raise DataError(f"layout option {k!r}: not one of {', '.join(LAYOUT_OPTIONS)}")
        if k == "line_width" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise DataError(f"line_width {v!r}: must be an integer >= 1 (pixels)")
        if k == "boxes" and not isinstance(v, bool):
            raise DataError(f"boxes {v!r}: must be true or false")
        out[k] = v
    return out


def _request(p: Path, class_names: Sequence[str] | None, progress: bool,
             mask_visitor: Callable[[str, np.ndarray], None] | None,
             free_dirs: Sequence[str] | None, layout: str | None, options: Mapping[str, Any]) -> OpenRequest:
    if p.is_file() and p.suffix.lower() == ".csv":
        root, csv_path = p.parent, p
    else:
        root, csv_path = p, p / "train.csv"
    names = list(class_names) if class_names else read_class_names(root if root.is_dir() else root.parent)
    return OpenRequest(root, csv_path, names, progress, mask_visitor, free_dirs, layout, options)


def open_dataset(path: str | Path, class_names: Sequence[str] | None = None,
                 progress: bool = False,
                 mask_visitor: Callable[[str, np.ndarray], None] | None = None,
                 layout: str | None = None, free_dirs: Sequence[str] | None = None,
                 options: Mapping[str, Any] | None = None) -> DefectDataset:
    """Open a dataset in any supported layout, detected from what is on disk (or ``layout``).

    Layouts: ``kaggle`` (train.csv + train_images/), ``masks`` (VOC-style), ``folders`` (class
    folders) or ``groups`` (group folders, told apart from class folders by the masks), ``mvtec``,
    ``coco``. ``path`` is the dataset folder (or a Kaggle CSV, or a COCO JSON). In
    the mask-folder layout every mask is decoded once to count areas; ``mask_visitor(image_id, labels)``
    sees each label map then, so callers that need more mask statistics (EDA) need no second decode.
    ``options`` (:data:`LAYOUT_OPTIONS`): ``line_width``, the pixels a line or point shape is drawn wide
    (labelme, CVAT); ``boxes``, read YOLO box-only lines as filled boxes. The dataset keeps them.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: dataset path does not exist")
    options = check_options(options or {})
    req = _request(p, class_names, progress, mask_visitor, free_dirs, layout, options)
    if layout is not None and layout not in LAYOUTS:
        raise DataError(f"--layout {layout!r}: not one of {', '.join(LAYOUTS)}")
    found = [layout] if layout else detect_layouts(req)
    if len(found) > 1:
        raise DataError(f"{p}: looks like several layouts ({', '.join(found)}); choose one with --layout")
    if not found:
        raise DataError(f"{p}: no dataset found; expected "
                        + ", ".join(lay.describe for lay in list(LAYOUTS.values())[:-1])
                        + f", or {list(LAYOUTS.values())[-1].describe}")
    ds = LAYOUTS[found[0]].read(req)
    ds.options = dict(options)
    if not ds.reason:
        ds.reason = f"--layout {layout}" if layout else f"found {LAYOUTS[found[0]].describe}"
    return ds
