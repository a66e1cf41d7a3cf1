"""The Kaggle layout: ``train.csv`` beside ``train_images/``; images without a row are defect-free.

``train.csv`` is read in any of the three forms Kaggle has used: ``ImageId,ClassId,EncodedPixels``,
the older ``ImageId_ClassId,EncodedPixels``, or a submission's ``ImageId,EncodedPixels,ClassId``
(UTF-8, with or without Excel's BOM). Masks stay as their RLE strings and are decoded on demand.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data import rle
from steelseg.data.images import copy_upright, list_images
from steelseg.data.registry import Layout, OpenRequest
from steelseg.data.table import DefectDataset, build_table, image_row, progress_bar, read_image_ids
from steelseg.errors import DataError, RLEError
from steelseg.fsutil import atomic_text, atomic_write

__all__ = ["KaggleMasks", "detect", "open_kaggle", "rle_dataset", "write_kaggle", "write_kaggle_csv"]


@dataclass
class KaggleMasks:
    """The Kaggle layout's masks: one RLE string per (image id, class id) that has pixels."""

    rles: dict[tuple[str, int], str] = field(default_factory=dict)

    def load(self, image_id: str, shape: tuple[int, int], num_classes: int) -> np.ndarray:
        out = np.zeros((*shape, num_classes), np.uint8)
        for c in range(1, num_classes + 1):
            code = self.rles.get((image_id, c))
            if code:
                out[..., c - 1] = rle.decode(code, shape)
        return out


def detect(root: Path, csv_path: Path) -> bool:
    return csv_path.is_file()


def _read_kaggle_csv(csv_path: Path) -> list[tuple[int, str, int, str]]:
    """Rows of (line number, image id, class id, rle) from any of the three Kaggle CSV forms."""
    try:
        fh = open(csv_path, newline="", encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
    except OSError as exc:
        raise DataError(f"{csv_path}: cannot open ({exc})") from None
    try:
        with fh:
            rle.allow_long_csv_fields()
            return _parse_kaggle_rows(csv_path, csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as "
                        "'CSV UTF-8' (Latin-1 and UTF-16 files are not read)") from None


def _header_columns(csv_path: Path, header: list[str] | None) -> tuple[int, int, int | None, int]:
    """(image id column, rle column, class column or None for ImageId_ClassId, field count)."""
    if header is None:
        raise DataError(f"{csv_path}: empty file; expected a header ImageId,ClassId,EncodedPixels")
    cols = [h.strip() for h in header]
    if "ImageId_ClassId" in cols and "EncodedPixels" in cols:
        return cols.index("ImageId_ClassId"), cols.index("EncodedPixels"), None, len(cols)
    if {"ImageId", "ClassId", "EncodedPixels"} <= set(cols):
        return cols.index("ImageId"), cols.index("EncodedPixels"), cols.index("ClassId"), len(cols)
    raise DataError(
        f"{csv_path}:1: header {','.join(cols)!r} not understood; expected "
        "'ImageId,ClassId,EncodedPixels' or 'ImageId_ClassId,EncodedPixels'"
    )


def _parse_kaggle_rows(csv_path: Path, reader: Any) -> list[tuple[int, str, int, str]]:
    out = []
    i_id, i_rle, i_cls, n_cols = _header_columns(csv_path, next(reader, None))
    for row in reader:
        line = reader.line_num
        if not row or all(not x.strip() for x in row):
            continue
        if len(row) != n_cols:
            raise DataError(f"{csv_path}:{line}: {len(row)} fields, header has {n_cols}")
        if i_cls is None:
            image_id, _, cls = row[i_id].rpartition("_")
        else:
            image_id, cls = row[i_id], row[i_cls]
        try:
            class_id = int(cls)
        except ValueError:
            raise DataError(f"{csv_path}:{line}: class id {cls!r} is not an integer") from None
        out.append((line, image_id.strip(), class_id, row[i_rle].strip()))
    return out


def _check_rows(csv_path: Path, rows: list[tuple[int, str, int, str]], class_names: list[str],
                images: dict[str, Path], images_dir: Path) -> tuple[dict[tuple[str, int], str], dict]:
    """RLE by (image, class) and the CSV line of each key; unknown classes / images and duplicates refused."""
    num_classes = len(class_names)
    rles: dict[tuple[str, int], str] = {}
    first_line: dict[tuple[str, int], int] = {}
    for line, image_id, class_id, code in rows:
        if not 1 <= class_id <= num_classes:
            raise DataError(
                f"{csv_path}:{line}: unknown class id {class_id}; valid ids are 1..{num_classes} "
                f"({', '.join(class_names)})"
            )
        if image_id not in images:
            raise DataError(f"{csv_path}:{line}: image {image_id!r} not found in {images_dir}")
        key = (image_id, class_id)
        if key in first_line:
            raise DataError(
                f"{csv_path}:{line}: duplicate row for image {image_id!r} class {class_id} "
                f"(first at line {first_line[key]}); keep one row per (image, class)"
            )
        first_line[key] = line
        if code:
            rles[key] = code
    return rles, first_line


def open_kaggle(root: Path, csv_path: Path, class_names: list[str] | None, progress: bool) -> DefectDataset:
    """Read ``csv_path`` and ``root/train_images``: every RLE is checked against its image's size."""
    images_dir = root / "train_images"
    rows = _read_kaggle_csv(csv_path)
    if class_names is None:
        n = max((c for _, _, c, _ in rows), default=0)
        class_names = [f"class{c}" for c in range(1, max(n, 1) + 1)]
    num_classes = len(class_names)
    images = {p.name: p for p in list_images(images_dir)[0]}
    rles, first_line = _check_rows(csv_path, rows, class_names, images, images_dir)
    table_rows, sizes = [], {}
    for image_id, path in progress_bar(images.items(), len(images), "reading headers", progress):
        table_rows.append(image_row(image_id, path, root))
        sizes[image_id] = (table_rows[-1]["height"], table_rows[-1]["width"])
    index = {r["image_id"]: i for i, r in enumerate(table_rows)}
    areas = np.zeros((len(table_rows), num_classes), np.int64)
    for (image_id, class_id), code in rles.items():
        h, w = sizes[image_id]
        try:
            areas[index[image_id], class_id - 1] = rle.rle_area(code, h * w)
        except RLEError as exc:
            raise RLEError(
                f"{csv_path}:{first_line[(image_id, class_id)]}: image {image_id} class {class_id} "
                f"({w}x{h}): {exc}"
            ) from None
    splits = {}
    split_dir = root / "splits"
    if split_dir.is_dir():
        splits = {p.stem: read_image_ids(p) for p in sorted(split_dir.glob("*.txt"))}
    return DefectDataset(root, "kaggle", list(class_names), build_table(table_rows, num_classes, areas),
                         KaggleMasks(rles), splits)


def rle_dataset(root: Path, csv_path: Path, images: dict[str, Path], class_names: list[str],
                layout: str = "predicted") -> DefectDataset:
    """The images ``{image id: path}`` (inside ``root``) with the masks of a Kaggle CSV (a submission.csv:
    predictions as a dataset, for ``predict --format``); a row for an image not given is an error."""
    rles, _ = _check_rows(csv_path, _read_kaggle_csv(csv_path), class_names, images, root)
    rows = [image_row(i, p, root) for i, p in images.items()]
    index = {r["image_id"]: k for k, r in enumerate(rows)}
    areas = np.zeros((len(rows), len(class_names)), np.int64)
    for (image_id, class_id), code in rles.items():
        r = rows[index[image_id]]
        areas[index[image_id], class_id - 1] = rle.rle_area(code, r["height"] * r["width"])
    return DefectDataset(root, layout, list(class_names), build_table(rows, len(class_names), areas),
                         KaggleMasks(rles))


def write_kaggle_csv(path: str | Path, rows: list[tuple[str, int, str]]) -> None:
    """Write (image id, class id, rle) rows as a 3-column Kaggle ``train.csv``, atomically."""
    with atomic_write(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["ImageId", "ClassId", "EncodedPixels"])
        w.writerows(rows)


def write_kaggle(src: DefectDataset, stage: Path, names: dict[str, str], progress: bool) -> None:
    """``src`` as train_images/, train.csv, classes.txt and splits/ in the folder ``stage``; ``names``
    gives each image id its flat file name."""
    img_dir = stage / "train_images"
    img_dir.mkdir()
    rows: list[tuple[str, int, str]] = []
    for image_id in progress_bar(src.image_ids, len(src.table), "converting", progress):
        name = names[image_id]
        copy_upright(src.row(image_id)["path"], img_dir / name)
        mask = src.load_mask(image_id)
        for c in range(src.num_classes):
            if mask[..., c].any():
                rows.append((name, c + 1, rle.encode(mask[..., c])))
    write_kaggle_csv(stage / "train.csv", rows)
    atomic_text(stage / "classes.txt", "\n".join(src.class_names) + "\n")
    if src.splits:
        (stage / "splits").mkdir()
        for split, ids in src.splits.items():
            atomic_text(stage / "splits" / f"{split}.txt", "".join(names[i] + "\n" for i in ids))


def _read(req: OpenRequest) -> DefectDataset:
    if not req.csv_path.is_file():
        raise DataError(f"{req.csv_path}: missing (the kaggle layout needs train.csv beside train_images/)")
    return open_kaggle(req.root, req.csv_path, req.class_names, req.progress)


LAYOUT = Layout("kaggle", lambda req: detect(req.root, req.csv_path), _read, rank=0, write=write_kaggle,
                describe="train.csv + train_images/ (kaggle)")
