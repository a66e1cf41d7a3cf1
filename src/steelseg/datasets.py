"""Datasets on disk -> one sample table and masks as (H, W, C) arrays.

Two layouts are read:

* **kaggle**: ``train.csv`` (``ImageId,ClassId,EncodedPixels``, the older
  ``ImageId_ClassId,EncodedPixels``, or a submission's ``ImageId,EncodedPixels,ClassId``) beside
  ``train_images/``. Images without a row are defect-free.
* **masks** (VOC-style, e.g. NEU-Seg): ``JPEGImages/`` with ``SegmentationClass/*.png`` of class
  indices (0 = background) and optional ``ImageSets/Segmentation/*.txt`` split lists.

Class names come from a ``classes.txt`` in the dataset root (one name per line), from the caller,
or default to ``class1..classC`` with C read from the data. Image sizes come from the images.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steelseg import rle
from steelseg.errors import DataError, RLEError
from steelseg.fsutil import atomic_text, atomic_write, staged_dir
from steelseg.images import InputSpec, image_size, list_images, normalize, read_image

__all__ = [
    "DefectDataset",
    "SegmentationSamples",
    "convert",
    "convert_to_kaggle",
    "one_hot",
    "open_dataset",
    "read_image_ids",
    "write_kaggle_csv",
]

def _list_images(folder: Path) -> dict[str, Path]:
    images, _ = list_images(folder)
    return {p.name: p for p in images}


def _read_class_names(root: Path) -> list[str] | None:
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


@dataclass
class DefectDataset:
    """A defect dataset: the sample table plus what is needed to load images and masks.

    ``table`` has one row per image: ``image_id``, ``path``, ``height``, ``width`` and for each
    class id c (1-based) ``area_c`` (mask pixels) and ``has_c`` (presence).
    """

    root: Path
    layout: str
    class_names: list[str]
    table: pd.DataFrame
    splits: dict[str, list[str]] = field(default_factory=dict)
    rles: dict[tuple[str, int], str] = field(default_factory=dict, repr=False)
    mask_paths: dict[str, Path] = field(default_factory=dict, repr=False)
    mask_items: dict[str, list] = field(default_factory=dict, repr=False)  # folders / mvtec / coco sources
    skipped: list[str] = field(default_factory=list, repr=False)  # files the reader did not take, by name
    _idx: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_ids(self) -> list[str]:
        return self.table["image_id"].tolist()

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
        """uint8 (H, W) or (H, W, 3), read through :func:`steelseg.images.read_image`."""
        return read_image(self.row(image_id)["path"], channels)

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W, C) uint8 mask of 0/1 for one image."""
        r = self.row(image_id)
        h, w = int(r["height"]), int(r["width"])
        if self.layout == "kaggle":
            out = np.zeros((h, w, self.num_classes), np.uint8)
            for c in range(1, self.num_classes + 1):
                code = self.rles.get((image_id, c))
                if code:
                    out[..., c - 1] = rle.decode(code, (h, w))
            return out
        if self.layout in ("folders", "mvtec", "coco"):
            from steelseg.layouts import decode_item

            out = np.zeros((h, w, self.num_classes), np.uint8)
            for c, *item in self.mask_items.get(image_id, []):
                out[..., c] |= decode_item(tuple(item), (h, w)).astype(np.uint8)  # type: ignore[arg-type]
            return out
        labels = _read_label_png(self.mask_paths[image_id], (h, w), self.num_classes)
        return one_hot(labels, self.num_classes)

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
            "images": int(len(self.table)),
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


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) class indices (0 = background) -> (H, W, C) uint8 masks."""
    return (labels[..., None] == np.arange(1, num_classes + 1, dtype=labels.dtype)).astype(np.uint8)


def _read_label_png(path: Path, shape: tuple[int, int] | None, num_classes: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"{path}: mask mode {im.mode}; masks must be single-channel PNGs of class "
                    "indices (0 = background)"
                )
            labels = np.asarray(im)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable mask image") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable or truncated mask ({exc})") from None
    if shape is not None and labels.shape != tuple(shape):
        raise DataError(
            f"{path}: mask is {labels.shape[1]}x{labels.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]}; masks must match their image size"
        )
    if num_classes is not None and labels.size and int(labels.max()) > num_classes:
        raise DataError(
            f"{path}: unknown class id {int(labels.max())} in mask; this dataset has classes "
            f"1..{num_classes} (0 = background)"
        )
    return labels


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", leave=False)


def _build_table(
    rows: list[dict[str, Any]], num_classes: int, areas: np.ndarray
) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=["image_id", "path", "height", "width"])
    for c in range(num_classes):
        table[f"area_{c + 1}"] = areas[:, c] if len(rows) else np.zeros(0, np.int64)
    for c in range(num_classes):
        table[f"has_{c + 1}"] = table[f"area_{c + 1}"] > 0
    return table


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


def _parse_kaggle_rows(csv_path: Path, reader: Any) -> list[tuple[int, str, int, str]]:
    out = []
    header = next(reader, None)
    if header is None:
        raise DataError(f"{csv_path}: empty file; expected a header ImageId,ClassId,EncodedPixels")
    cols = [h.strip() for h in header]
    if "ImageId_ClassId" in cols and "EncodedPixels" in cols:
        i_id, i_rle, i_cls = cols.index("ImageId_ClassId"), cols.index("EncodedPixels"), None
    elif {"ImageId", "ClassId", "EncodedPixels"} <= set(cols):
        i_id, i_cls, i_rle = cols.index("ImageId"), cols.index("ClassId"), cols.index("EncodedPixels")
    else:
        raise DataError(
            f"{csv_path}:1: header {','.join(cols)!r} not understood; expected "
            "'ImageId,ClassId,EncodedPixels' or 'ImageId_ClassId,EncodedPixels'"
        )
    for row in reader:
        line = reader.line_num
        if not row or all(not x.strip() for x in row):
            continue
        if len(row) != len(cols):
            raise DataError(f"{csv_path}:{line}: {len(row)} fields, header has {len(cols)}")
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


def _open_kaggle(root: Path, csv_path: Path, class_names: list[str] | None, images_dir: Path,
                 progress: bool) -> DefectDataset:
    rows = _read_kaggle_csv(csv_path)
    if class_names is None:
        n = max((c for _, _, c, _ in rows), default=0)
        class_names = [f"class{c}" for c in range(1, max(n, 1) + 1)]
    num_classes = len(class_names)
    images = _list_images(images_dir)
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
    table_rows, sizes = [], {}
    for image_id, path in _progress(images.items(), len(images), "reading headers", progress):
        h, w = image_size(path)
        sizes[image_id] = (h, w)
        table_rows.append({"image_id": image_id, "path": str(path), "height": h, "width": w})
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
    return DefectDataset(root, "kaggle", list(class_names), _build_table(table_rows, num_classes, areas),
                         splits, rles=rles)


def _by_stem(paths: Any, folder: Path) -> dict[str, Path]:
    """Images by file stem; two files with one stem (a.jpg + a.png) are refused with their names."""
    out: dict[str, Path] = {}
    for p in paths:
        if p.stem in out:
            raise DataError(f"{folder}: {out[p.stem].name} and {p.name} share the name {p.stem!r}; "
                            "masks are matched by name, so keep one of them")
        out[p.stem] = p
    return out


def _open_masks(root: Path, class_names: list[str] | None, progress: bool,
                mask_visitor: Callable[[str, np.ndarray], None] | None = None) -> DefectDataset:
    img_dir, mask_dir = root / "JPEGImages", root / "SegmentationClass"
    images = _by_stem(_list_images(img_dir).values(), img_dir)
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: mask folder not found")
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() == ".png"}
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(
            f"{mask_dir / (orphans[0] + '.png')}: mask without an image (missing image "
            f"{img_dir / orphans[0]}.*); {len(orphans)} such mask(s)"
        )
    unmasked = sorted(set(images) - set(masks))
    if unmasked:
        raise DataError(
            f"{images[unmasked[0]]}: image without a mask in {mask_dir} ({len(unmasked)} such "
            "image(s)); give defect-free images an all-zero mask"
        )
    num_classes = len(class_names) if class_names else None
    table_rows, hists = [], []
    for stem, path in _progress(images.items(), len(images), "reading masks", progress):
        h, w = image_size(path)
        labels = _read_label_png(masks[stem], (h, w), num_classes)
        if mask_visitor is not None:
            mask_visitor(stem, labels)
        hists.append(np.bincount(labels.ravel().astype(np.int64), minlength=256))
        table_rows.append({"image_id": stem, "path": str(path), "height": h, "width": w})
    width = max((len(h) for h in hists), default=256)  # 16-bit masks may hold class ids above 255
    hist = np.stack([np.pad(h, (0, width - len(h))) for h in hists]) if hists else np.zeros((0, 256), np.int64)
    if class_names is None:
        seen = np.flatnonzero(hist.sum(0))
        n = int(seen.max()) if seen.size else 1
        class_names = [f"class{c}" for c in range(1, max(n, 1) + 1)]
    areas = hist[:, 1 : len(class_names) + 1]
    split_dir = root / "ImageSets" / "Segmentation"
    splits = {}
    if split_dir.is_dir():
        for p in sorted(split_dir.glob("*.txt")):
            ids = [Path(i).stem for i in read_image_ids(p)]
            unknown = [i for i in ids if i not in images]
            if unknown:
                raise DataError(f"{p}: {len(unknown)} id(s) with no image, e.g. {unknown[:3]}")
            splits[p.stem] = ids
    return DefectDataset(root, "masks", list(class_names), _build_table(table_rows, len(class_names), areas),
                         splits, mask_paths={k: masks[k] for k in images})


BUILTIN_LAYOUTS = ("kaggle", "masks")


def _detected(root: Path, csv_path: Path) -> list[str]:
    from steelseg.layouts import LAYOUTS

    found = []
    if csv_path.is_file():
        found.append("kaggle")
    if (root / "SegmentationClass").is_dir() or (root / "JPEGImages").is_dir():
        found.append("masks")
    if found:  # the two built-in layouts are unambiguous by their file names
        return found
    hits = [name for name, (detect, _) in LAYOUTS.items() if detect(root)]
    # a COCO JSON or MVTec's folder names are specific; plain class folders are what is left
    specific = [h for h in hits if h != "folders"]
    return specific or hits


def open_dataset(path: str | Path, class_names: Sequence[str] | None = None,
                 progress: bool = False,
                 mask_visitor: Callable[[str, np.ndarray], None] | None = None,
                 layout: str | None = None, free_dirs: Sequence[str] | None = None) -> DefectDataset:
    """Open a dataset in any supported layout, detected from what is on disk (or ``layout``).

    Layouts: ``kaggle`` (train.csv + train_images/), ``masks`` (VOC-style), and those of
    :mod:`steelseg.layouts`: ``folders`` (class folders), ``mvtec``, ``coco``. ``path`` is the
    dataset folder (or a Kaggle CSV, or a COCO JSON). In the mask-folder layout every mask is decoded
    once to count areas; ``mask_visitor(image_id, labels)`` sees each label map then, so callers that
    need more mask statistics (EDA) need no second decode.
    """
    from steelseg.layouts import LAYOUTS

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: dataset path does not exist")
    if p.is_file() and p.suffix.lower() == ".csv":
        root, csv_path = p.parent, p
    else:
        root, csv_path = p, p / "train.csv"
    names = list(class_names) if class_names else _read_class_names(root if root.is_dir() else root.parent)
    known = list(BUILTIN_LAYOUTS) + list(LAYOUTS)
    if layout is not None and layout not in known:
        raise DataError(f"--layout {layout!r}: not one of {', '.join(known)}")
    found = [layout] if layout else _detected(root, csv_path)
    if len(found) > 1:
        raise DataError(f"{p}: looks like several layouts ({', '.join(found)}); choose one with --layout")
    if not found:
        raise DataError(
            f"{p}: no dataset found; expected train.csv + train_images/ (kaggle), JPEGImages/ + "
            "SegmentationClass/ (masks), one folder per class with masks beside the images (folders), "
            "train/good + test/<defect> + ground_truth/ (mvtec), or a COCO JSON (coco)"
        )
    kind = found[0]
    if kind == "kaggle":
        if not csv_path.is_file():
            raise DataError(f"{csv_path}: missing (the kaggle layout needs train.csv beside train_images/)")
        return _open_kaggle(root, csv_path, names, root / "train_images", progress)
    if kind == "masks":
        return _open_masks(root, names, progress, mask_visitor)
    reader = LAYOUTS[kind][1]
    return reader(root, names, progress, free_dirs) if kind == "folders" else reader(root, names, progress)


def write_kaggle_csv(path: str | Path, rows: list[tuple[str, int, str]]) -> None:
    """Write (image id, class id, rle) rows as a 3-column Kaggle ``train.csv``, atomically."""
    with atomic_write(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["ImageId", "ClassId", "EncodedPixels"])
        w.writerows(rows)


CONVERT_TARGETS = ("kaggle", "masks", "coco")


def convert(src: DefectDataset, dst: str | Path, to: str = "kaggle", progress: bool = False,
            overwrite: bool = False) -> Path:
    """Write any dataset in the ``to`` layout (kaggle, masks or coco); masks are carried losslessly.

    The new folder is built beside ``dst`` and swapped in when complete; an existing ``dst`` is
    refused unless ``overwrite``, and never when it is the source itself (or inside it).
    """
    from steelseg.layouts import write_coco, write_masks

    if to not in CONVERT_TARGETS:
        raise DataError(f"--to {to!r}: not one of {', '.join(CONVERT_TARGETS)}")
    dst = Path(dst)
    src_root = Path(src.root).resolve()
    if dst.resolve() == src_root or src_root in dst.resolve().parents:
        raise DataError(f"{dst}: is the source dataset (or inside it); write the conversion elsewhere")
    with staged_dir(dst, overwrite, "dataset") as stage:
        if to == "kaggle":
            _write_kaggle(src, stage, progress)
        elif to == "masks":
            write_masks(src, stage, progress)
        else:
            write_coco(src, stage, progress)
    return dst


def convert_to_kaggle(src: DefectDataset, dst: str | Path, progress: bool = False,
                      overwrite: bool = False) -> Path:
    """Write any dataset as a Kaggle layout: train_images/, train.csv, classes.txt, splits/."""
    return convert(src, dst, "kaggle", progress, overwrite)


def _write_kaggle(src: DefectDataset, stage: Path, progress: bool) -> None:
    from steelseg.layouts import flat_names

    names = flat_names(src)
    img_dir = stage / "train_images"
    img_dir.mkdir()
    rows: list[tuple[str, int, str]] = []
    for image_id in _progress(src.image_ids, len(src.table), "converting", progress):
        name = names[image_id]
        shutil.copyfile(src.row(image_id)["path"], img_dir / name)
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


class SegmentationSamples:
    """Map-style dataset for a torch DataLoader: dicts of image, mask and labels as arrays.

    ``transform`` is an albumentations-style callable ``(image=..., mask=...) -> dict``. Images
    come out as float32 (C, H, W) through :func:`steelseg.images.normalize`, masks as
    float32 (K, H, W) and ``labels`` as float32 (K,) class presence.
    """

    def __init__(self, dataset: DefectDataset, transform: Callable[..., dict] | None = None,
                 channels: int = 1, mean: Sequence[float] = (0.449,), std: Sequence[float] = (0.226,),
                 with_masks: bool = True) -> None:
        self.dataset = dataset
        self.ids = dataset.image_ids
        self.transform = transform
        self.spec = InputSpec(channels, tuple(mean), tuple(std))
        self.with_masks = with_masks
        self._decoded: list[tuple[np.ndarray, np.ndarray | None]] | None = None  # preload()

    def __len__(self) -> int:
        return len(self.ids)

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The decoded uint8 image and mask of item ``i``, from the files or the preload()ed copy."""
        if self._decoded is not None:
            return self._decoded[i]
        image_id = self.ids[i]
        image = self.dataset.load_image(image_id, self.spec.channels)
        return image, self.dataset.load_mask(image_id) if self.with_masks else None

    def decoded_bytes(self) -> int:
        """Memory that :meth:`preload` needs: the first item's decoded bytes per pixel times all pixels."""
        if not self.ids:
            return 0
        image, mask = self._read(0)
        per_pixel = (image.nbytes + (0 if mask is None else mask.nbytes)) / (image.shape[0] * image.shape[1])
        pixels = (self.dataset.table["height"].astype(np.int64) * self.dataset.table["width"]).sum()
        return int(per_pixel * pixels)

    def preload(self, desc: str = "decoding", progress: bool = False) -> None:
        """Decode every image and mask once and keep them in memory (``data.cache``): later epochs
        skip the file reads and decoding. The arrays are made read-only, so a transform that wrote
        into its input would fail loudly instead of changing the kept copy. DataLoader workers
        started after this share the copy (fork, copy-on-write)."""
        items = []
        for i in _progress(range(len(self.ids)), len(self.ids), desc, progress):
            image, mask = self._read(i)
            image.setflags(write=False)
            if mask is not None:
                mask.setflags(write=False)
            items.append((image, mask))
        self._decoded = items

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.ids[i]
        image, mask = self._read(i)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask) if mask is not None else self.transform(image=image)
            image, mask = out["image"], out.get("mask", mask)
        x = normalize(image, self.spec)  # the same function Predictor and export use
        item: dict[str, Any] = {"image": np.ascontiguousarray(x, np.float32), "image_id": image_id}
        if mask is not None:
            m = np.ascontiguousarray(mask.transpose(2, 0, 1), np.float32)
            item["mask"] = m
            item["labels"] = (m.reshape(m.shape[0], -1).max(axis=1) > 0).astype(np.float32)
        return item
