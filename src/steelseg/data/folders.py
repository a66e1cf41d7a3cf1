"""The ``folders`` layout: one folder per defect class holding images with a binary mask beside each
(``x.jpg`` + ``x.png``, ``x_mask.png``, or ``masks/x.png``), and a folder of defect-free images (``good``,
``ok``, ``free``, ``normal``, ``defect_free``, ``clean``, or ``free_dirs``).

Binary masks may be 0/255, 0/1 or noisy from lossy saving: they are binarised at half their maximum.
Files that are neither images nor masks are listed in ``DefectDataset.skipped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from steelseg.data.images import IMAGE_EXTS
from steelseg.data.items import build_from_items
from steelseg.data.registry import Layout
from steelseg.data.table import DefectDataset
from steelseg.errors import DataError

__all__ = ["FREE_DIR_NAMES", "MASK_SUFFIXES", "detect", "is_image", "open_folders"]

FREE_DIR_NAMES = ("good", "ok", "free", "normal", "defect_free", "defect-free", "clean", "no_defect", "nodefect")
MASK_SUFFIXES = ("_mask", "-mask", "_label", "_gt")


def is_image(p: Path) -> bool:
    """A visible file with an image extension."""
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _pair(folder: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image, mask) pairs in a class folder, and files that are neither."""
    files = sorted(p for p in folder.iterdir() if is_image(p))
    masks_dir = folder / "masks"
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(p.stem, []).append(p)
    pairs, used = [], set()
    for p in files:
        if p in used:
            continue
        stem = p.stem
        if any(stem.endswith(s) for s in MASK_SUFFIXES):
            continue  # a mask; matched from its image
        mask = None
        cands = [folder / f"{stem}{s}{ext}" for s in MASK_SUFFIXES for ext in (".png", ".bmp", ".tif", ".jpg")]
        cands += [masks_dir / f"{stem}{ext}" for ext in (".png", ".bmp", ".tif", ".jpg")] if masks_dir.is_dir() else []
        mask = next((c for c in cands if c.is_file()), None)
        if mask is None:
            same = [q for q in by_stem[stem] if q != p]
            if same and p.suffix.lower() != ".png" and same[0].suffix.lower() == ".png":
                mask = same[0]
            elif same and p.suffix.lower() == ".png":
                continue  # the png of an x.jpg + x.png pair: the mask, handled from the jpg
        if mask is None:
            raise DataError(f"{p}: image without a mask (looked for {stem}_mask.png, masks/{stem}.png, or "
                            f"{stem}.png beside a .jpg); put defect-free images in a 'good' folder")
        used.update({p, mask})
        pairs.append((p, mask))
    for p in files:  # masks whose image is missing
        if p not in used and any(p.stem.endswith(s) for s in MASK_SUFFIXES):
            raise DataError(f"{p}: mask without an image (no {p.stem.rsplit('_', 1)[0]}.* beside it)")
    if masks_dir.is_dir():
        for m in sorted(q for q in masks_dir.iterdir() if is_image(q)):
            if m not in used:
                raise DataError(f"{m}: mask without an image in {folder}")
    others = sorted(p for p in folder.iterdir() if p.is_file() and p not in used and not p.name.startswith("."))
    return pairs, others


def _free_dirs(root: Path, free_dirs: Sequence[str] | None) -> set[str]:
    names = set(free_dirs) if free_dirs else set(FREE_DIR_NAMES)
    return {p.name for p in root.iterdir() if p.is_dir() and p.name.lower() in {n.lower() for n in names}}


def detect(root: Path) -> bool:
    if not root.is_dir():
        return False
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return bool(subs) and any(any(is_image(q) for q in s.iterdir()) for s in subs) and \
        not (root / "train").is_dir() and not (root / "ground_truth").is_dir()


def open_folders(root: Path, class_names: list[str] | None, progress: bool,
                 free_dirs: Sequence[str] | None = None) -> DefectDataset:
    free = _free_dirs(root, free_dirs)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and p.name not in free)
    if class_names:
        unknown = sorted(set(classes) - set(class_names))
        if unknown:
            raise DataError(f"{root}: class folder(s) {unknown} not among the class names {class_names}")
        classes = list(class_names)
    if not classes:
        raise DataError(f"{root}: no class folders (only defect-free folders {sorted(free)})")
    entries, skipped = [], []
    for c, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        pairs, others = _pair(folder)
        if not pairs:
            raise DataError(f"{folder}: empty class folder (no image with a mask)")
        skipped += [str(p.relative_to(root)) for p in others]
        entries += [(f"{name}/{img.name}", img, [(c, mask, str(mask))]) for img, mask in pairs]
    for name in sorted(free):
        for p in sorted((root / name).iterdir()):
            if is_image(p):
                entries.append((f"{name}/{p.name}", p, []))
            elif p.is_file() and not p.name.startswith("."):
                skipped.append(str(p.relative_to(root)))
    return build_from_items(root, "folders", classes, entries, {}, skipped, progress)




LAYOUT = Layout("folders", lambda req: detect(req.root),
                lambda req: open_folders(req.root, req.class_names, req.progress, req.free_dirs), rank=2,
                describe="one folder per class with masks beside the images (folders)")
