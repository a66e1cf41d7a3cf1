"""Any dataset written in another layout (``kaggle``, ``masks`` or ``coco``), masks carried losslessly."""

from __future__ import annotations

from pathlib import Path

from steelseg.data.images import IMAGE_EXTS
from steelseg.data.open import LAYOUTS
from steelseg.data.table import DefectDataset
from steelseg.errors import DataError
from steelseg.fsutil import staged_dir

__all__ = ["CONVERT_TARGETS", "convert", "convert_to_kaggle", "flat_names"]

CONVERT_TARGETS = tuple(name for name, lay in LAYOUTS.items() if lay.write is not None)


def flat_names(ds: DefectDataset) -> dict[str, str]:
    """Image id -> a unique file name without folders (class/x.jpg -> class__x.jpg; a VOC id, which
    has no extension, gets its file's)."""
    out, seen = {}, {}
    for image_id, path in zip(ds.table["image_id"], ds.table["path"]):
        name = image_id.replace("/", "__")
        if Path(name).suffix.lower() not in IMAGE_EXTS:
            name += Path(path).suffix
        if name in seen:
            raise DataError(f"images {seen[name]!r} and {image_id!r} would both be written as {name!r}")
        seen[name] = image_id
        out[image_id] = name
    return out



def convert(src: DefectDataset, dst: str | Path, to: str = "kaggle", progress: bool = False,
            overwrite: bool = False) -> Path:
    """Write any dataset in the ``to`` layout (kaggle, masks or coco); masks are carried losslessly.

    The new folder is built beside ``dst`` and swapped in when complete; an existing ``dst`` is
    refused unless ``overwrite``, and never when it is the source itself (or inside it).
    """
    if to not in CONVERT_TARGETS:
        raise DataError(f"--to {to!r}: not one of {', '.join(CONVERT_TARGETS)}")
    write = LAYOUTS[to].write
    assert write is not None
    dst = Path(dst)
    src_root = Path(src.root).resolve()
    if dst.resolve() == src_root or src_root in dst.resolve().parents:
        raise DataError(f"{dst}: is the source dataset (or inside it); write the conversion elsewhere")
    names = flat_names(src)
    with staged_dir(dst, overwrite, "dataset") as stage:
        write(src, stage, names, progress)
    return dst


def convert_to_kaggle(src: DefectDataset, dst: str | Path, progress: bool = False,
                      overwrite: bool = False) -> Path:
    """Write any dataset as a Kaggle layout: train_images/, train.csv, classes.txt, splits/."""
    return convert(src, dst, "kaggle", progress, overwrite)
