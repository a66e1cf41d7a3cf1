"""The ``masks`` layout (VOC-style, e.g. NEU-Seg): ``JPEGImages/`` with ``SegmentationClass/*.png`` of
class indices (0 = background, 8- or 16-bit) and optional ``ImageSets/Segmentation/*.txt`` split lists.
Reader and writer side by side."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data.images import copy_upright, list_images, open_upright
from steelseg.data.registry import Layout
from steelseg.data.table import DefectDataset, build_table, image_row, one_hot, progress_bar, read_image_ids
from steelseg.errors import DataError
from steelseg.fsutil import atomic_text, confine

__all__ = ["IndexMasks", "detect", "open_masks", "read_label_png", "write_masks"]


def read_label_png(path: Path, shape: tuple[int, int] | None, num_classes: int | None) -> np.ndarray:
    """A single-channel PNG of class indices -> (H, W) labels, checked against the image size and classes.
    Read through :func:`steelseg.data.images.open_upright`: the same formats and EXIF rule as images."""
    with open_upright(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise DataError(
                f"{path}: mask mode {im.mode}; masks must be single-channel PNGs of class "
                "indices (0 = background)"
            )
        if im.mode == "P":
            _check_palette(path, im)
        labels = np.asarray(im)
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


def _check_palette(path: Path, im: Any) -> None:
    """A palette PNG's indices are class ids only when entry 0 (the background) is black, as in VOC; an
    editor that re-indexed its palette (adaptive palettes) would make the background a class."""
    pal = im.getpalette() or [0, 0, 0]
    if tuple(pal[:3]) != (0, 0, 0):
        raise DataError(f"{path}: palette entry 0 is RGB{tuple(pal[:3])}, not black: this PNG's indices are "
                        "not class ids (an editor re-indexed its palette). Save the mask as 8-bit gray class "
                        "indices (0 = background), or use the folders layout for binary masks")


def _names_from_ids(mask_dir: Path, seen: np.ndarray) -> list[str]:
    """class1..classN from the ids the masks hold (0 = background); refused when the ids are sparse, as in
    binary 0/255 masks (255 classes) or colour masks saved as gray (dozens of scattered values)."""
    ids = [int(v) for v in seen if v > 0]
    n = max(ids, default=1)
    if ids and n > 2 * len(ids):
        shown = ", ".join(map(str, ids[:8])) + (" ..." if len(ids) > 8 else "")
        raise DataError(f"{mask_dir}: masks hold the values {shown}: read as class ids that would be {n} classes "
                        f"of which {len(ids)} appear. Binary (0/255) or colour masks are not index masks: name "
                        "the classes with --class-names (ids 1..N), save masks as class indices, or use the "
                        "folders layout (one folder per class, binary masks)")
    return [f"class{c}" for c in range(1, n + 1)]


@dataclass
class IndexMasks:
    """The masks layout's masks: one index PNG per image id."""

    paths: dict[str, Path] = field(default_factory=dict)

    def load(self, image_id: str, shape: tuple[int, int], num_classes: int) -> np.ndarray:
        return one_hot(read_label_png(self.paths[image_id], shape, num_classes), num_classes)


def detect(root: Path, csv_path: Path) -> bool:
    return (root / "SegmentationClass").is_dir() or (root / "JPEGImages").is_dir()


def _by_stem(paths: Any, folder: Path) -> dict[str, Path]:
    """Images by file stem; two files with one stem (a.jpg + a.png) are refused with their names."""
    out: dict[str, Path] = {}
    for p in paths:
        if p.stem in out:
            raise DataError(f"{folder}: {out[p.stem].name} and {p.name} share the name {p.stem!r}; "
                            "masks are matched by name, so keep one of them")
        out[p.stem] = p
    return out


def _pair_masks(img_dir: Path, mask_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Images and masks by stem; a mask without an image or an image without a mask is refused."""
    images = _by_stem(list_images(img_dir)[0], img_dir)
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
    return images, masks


def _read_splits(root: Path, images: dict[str, Path]) -> dict[str, list[str]]:
    split_dir = root / "ImageSets" / "Segmentation"
    splits = {}
    if split_dir.is_dir():
        for p in sorted(split_dir.glob("*.txt")):
            ids = [Path(i).stem for i in read_image_ids(p)]
            unknown = [i for i in ids if i not in images]
            if unknown:
                raise DataError(f"{p}: {len(unknown)} id(s) with no image, e.g. {unknown[:3]}")
            splits[p.stem] = ids
    return splits


def open_masks(root: Path, class_names: list[str] | None, progress: bool,
               mask_visitor: Callable[[str, np.ndarray], None] | None = None) -> DefectDataset:
    """Read the layout, decoding every mask once for the areas; ``mask_visitor(image_id, labels)`` sees
    each label map then (EDA's statistics need no second decode)."""
    img_dir, mask_dir = root / "JPEGImages", root / "SegmentationClass"
    images, masks = _pair_masks(img_dir, mask_dir)
    num_classes = len(class_names) if class_names else None
    table_rows, hists = [], []
    for stem, path in progress_bar(images.items(), len(images), "reading masks", progress):
        row = image_row(stem, path, root)
        labels = read_label_png(confine(masks[stem], root, "mask"), (row["height"], row["width"]), num_classes)
        if mask_visitor is not None:
            mask_visitor(stem, labels)
        hists.append(np.bincount(labels.ravel().astype(np.int64), minlength=256))
        table_rows.append(row)
    width = max((len(h) for h in hists), default=256)  # 16-bit masks may hold class ids above 255
    hist = np.stack([np.pad(h, (0, width - len(h))) for h in hists]) if hists else np.zeros((0, 256), np.int64)
    if class_names is None:
        class_names = _names_from_ids(mask_dir, np.flatnonzero(hist.sum(0)))
    areas = hist[:, 1 : len(class_names) + 1]
    return DefectDataset(root, "masks", list(class_names), build_table(table_rows, len(class_names), areas),
                         IndexMasks({k: masks[k] for k in images}), _read_splits(root, images))


def write_masks(ds: DefectDataset, stage: Path, names: dict[str, str], progress: bool = False) -> None:
    """VOC-style mask folders: JPEGImages/, SegmentationClass/*.png (class indices), classes.txt,
    ImageSets/Segmentation/*.txt. Refuses pixels in two classes (an index mask cannot hold them)."""
    from PIL import Image

    stems = {}
    for image_id, name in names.items():
        stem = Path(name).stem
        if stem in stems:
            raise DataError(f"{image_id} and {stems[stem]} share the stem {stem!r}; the mask layout matches by stem")
        stems[stem] = image_id
    (stage / "JPEGImages").mkdir()
    (stage / "SegmentationClass").mkdir()
    for image_id in progress_bar(ds.image_ids, len(ds.image_ids), "converting", progress):
        mask = ds.load_mask(image_id)
        if int(mask.sum(axis=2).max(initial=0)) > 1:
            raise DataError(f"{image_id}: some pixels belong to two classes; the masks layout holds one class "
                            "per pixel (use --to kaggle or coco)")
        labels = (mask * np.arange(1, ds.num_classes + 1, dtype=np.uint16)).sum(axis=2)
        labels = labels.astype(np.uint8 if ds.num_classes < 256 else np.uint16)
        name = names[image_id]
        copy_upright(ds.row(image_id)["path"], stage / "JPEGImages" / name)
        Image.fromarray(labels).save(stage / "SegmentationClass" / f"{Path(name).stem}.png")
    atomic_text(stage / "classes.txt", "\n".join(ds.class_names) + "\n")
    if ds.splits:
        split_dir = stage / "ImageSets" / "Segmentation"
        split_dir.mkdir(parents=True)
        for split, ids in ds.splits.items():
            atomic_text(split_dir / f"{split}.txt", "".join(Path(names[i]).stem + "\n" for i in ids))


LAYOUT = Layout("masks", lambda req: detect(req.root, req.csv_path),
                lambda req: open_masks(req.root, req.class_names, req.progress, req.mask_visitor), rank=0,
                write=write_masks, describe="JPEGImages/ + SegmentationClass/ (masks)")
