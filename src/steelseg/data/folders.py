"""Folders of image + mask pairs, read one of two ways:

* ``folders`` (class folders): one folder per defect class, each image with a binary mask beside it
  (``x.jpg`` + ``x.png``, ``x_mask.*``, ``x_label.*``, ``x_gt.*``, or ``masks/x.*``), and folders of
  defect-free images (``good``, ``ok``, ``OK_images``, ``no_defect``, ``part_free``, ... or ``free_dirs``,
  names or glob patterns);
* ``groups`` (group folders, as KolektorSDD is distributed): one folder per group (a physical part, a
  coil, a line), one class (``--class-names``, default ``defect``), an all-zero mask = defect-free. The
  group is kept in the sample table (``group``) so that splits never cut a group.

Pairs are found at any depth below the top folders (``class/images/x.jpg`` + ``class/images/x.png``).
Which reading applies is decided from the masks, which are decoded once anyway: class folders hold
defects in (nearly) every mask, group folders mostly empty masks. Where the masks do not decide, the
reader refuses with both readings and asks for ``--layout folders`` or ``--layout groups``.

Binary masks may be 0/255, 0/1 or noisy from lossy saving: they are binarised at half their maximum.
Files that are neither images nor masks are listed in ``DefectDataset.skipped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from fnmatch import fnmatch
from pathlib import Path

from steelseg.data.images import IMAGE_EXTS
from steelseg.data.items import ItemMasks, build_from_items
from steelseg.data.registry import Layout
from steelseg.data.table import DefectDataset, build_table
from steelseg.errors import DataError

__all__ = ["FREE_DIR_NAMES", "MASK_SUFFIXES", "detect", "is_image", "open_folders"]

FREE_DIR_NAMES = ("good", "ok", "ok_*", "*_ok", "free", "*_free", "normal", "defect_free", "defect-free", "clean",
                  "no_defect*", "nodefect*", "non_defect*")  # names or glob patterns, case-insensitive
MASK_SUFFIXES = ("_mask", "-mask", "_label", "_gt")
MASK_DIRS = ("masks",)  # folders of masks beside the images they belong to: not walked for images
GROUPS_EMPTY_SHARE = 0.5  # at least this share of empty masks (and no defect-free folder): group folders


def is_image(p: Path) -> bool:
    """A visible file with an image extension."""
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _pair(folder: Path, need_mask: bool = True) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """(image, mask) pairs in a class folder, and files that are neither; in a defect-free folder
    (``need_mask`` False) an image may come without a mask (None), but a mask is never taken for an image."""
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
        if mask is None and not need_mask:
            used.add(p)
            pairs.append((p, None))
            continue
        if mask is None:
            raise DataError(f"{p}: image without a mask (looked for {stem}_mask.*, {stem}_label.*, {stem}_gt.*, "
                            f"masks/{stem}.*, or {stem}.png beside a .jpg); give it an all-zero mask, or put "
                            "defect-free images in a 'good' folder (class folders)")
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
    """Top folders whose name matches a defect-free name or glob pattern (case-insensitive)."""
    patterns = [n.lower() for n in (free_dirs or FREE_DIR_NAMES)]
    return {p.name for p in root.iterdir() if p.is_dir() and any(fnmatch(p.name.lower(), pat) for pat in patterns)}


def _dirs_below(top: Path) -> list[Path]:
    """``top`` and every folder below it, sorted, but mask folders and hidden ones."""
    out = [top]
    for d in sorted(q for q in top.iterdir() if q.is_dir() and not q.name.startswith(".")):
        if d.name.lower() not in MASK_DIRS:
            out += _dirs_below(d)
    return out


def _holds(folder: Path) -> str:
    """What a folder holds, in a few words, for the error when no pair is found."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    by_ext: dict[str, int] = {}
    for p in files:
        by_ext[p.suffix.lower() or "(none)"] = by_ext.get(p.suffix.lower() or "(none)", 0) + 1
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    kinds = ", ".join(f"{n} {ext}" for ext, n in sorted(by_ext.items())) or "no files"
    return kinds + (f"; subfolders {', '.join(subs[:8])}" if subs else "")


def _walk(top: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image, mask) pairs at any depth below ``top``, and the files that are neither."""
    pairs, others = [], []
    for d in _dirs_below(top):
        p, o = _pair(d)
        pairs += p
        others += o
    if not pairs:
        raise DataError(f"{top}: empty class folder (or group folder): no image + mask pairs at any depth (looked "
                        f"for x.jpg with x.png, x_mask.*, "
                        f"x_label.*, x_gt.* or masks/x.* beside it); it holds {_holds(top)}. Put defect-free "
                        "images in a 'good' folder (or name it with --free-dirs)")
    return pairs, others


def _free_images(top: Path, root: Path) -> tuple[list[Path], list[str]]:
    """The images of a defect-free folder. Their masks, where they have them (``good/x.png`` + ``x_mask.png``,
    Magnetic-tile's ``MT_Free/Imgs/x.jpg`` + ``x.png``), are paired as in class folders, never read as images;
    a mask with a defect in a defect-free folder is an error that names it."""
    from steelseg.data.images import read_image

    images, skipped = [], []
    for d in _dirs_below(top):
        pairs, others = _pair(d, need_mask=False)
        for img, mask in pairs:
            if mask is not None and read_image(mask, 1).max() > 0:
                raise DataError(f"{mask}: the mask of {img.name} holds a defect, but {img.name} sits in the defect-free "
                                f"folder {top.name}: move it to its class folder, or clear the mask")
            images.append(img)
        skipped += [str(p.relative_to(root)) for p in others]
    return images, skipped


def detect(root: Path) -> bool:
    if not root.is_dir():
        return False
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return bool(subs) and any(any(is_image(q) for q in s.rglob("*")) for s in subs) and \
        not (root / "train").is_dir() and not (root / "ground_truth").is_dir()


def _class_order(root: Path, tops: list[str], class_names: list[str] | None) -> list[str]:
    if not class_names:
        return tops
    unknown = sorted(set(tops) - set(class_names))
    if unknown:
        raise DataError(f"{root}: class folder(s) {unknown} not among the class names {class_names}")
    return list(class_names)


def _entries(root: Path, classes: list[str], free: set[str]) -> tuple[list, list[str], dict[str, str]]:
    """(image id, path, mask items) for the class reading, the skipped files, and each image's top folder."""
    entries, skipped, top_of = [], [], {}
    for c, name in enumerate(classes):
        if not (root / name).is_dir():
            continue
        pairs, others = _walk(root / name)
        skipped += [str(p.relative_to(root)) for p in others]
        for img, mask in pairs:
            image_id = img.relative_to(root).as_posix()
            entries.append((image_id, img, [(c, mask, str(mask))]))
            top_of[image_id] = name
    for name in sorted(free):
        images, skip = _free_images(root / name, root)
        skipped += skip
        for p in images:
            image_id = p.relative_to(root).as_posix()
            entries.append((image_id, p, []))
            top_of[image_id] = name
    return entries, skipped, top_of


def _reading(ds: DefectDataset, free: set[str], forced: str | None,
             class_names: list[str] | None) -> tuple[str, str]:
    """("folders" or "groups", why), from the masks once decoded; refuses when they do not decide."""
    tops = ds.class_names
    if forced in ("folders", "groups"):
        return forced, f"--layout {forced}"
    masked = ds.table[[not i.split("/")[0] in free for i in ds.image_ids]]
    empty = int((masked[[f"area_{c + 1}" for c in range(len(tops))]].sum(axis=1) == 0).sum())
    share = empty / max(len(masked), 1)
    if class_names is not None and len(class_names) == 1 and len(tops) > 1:
        return "groups", f"one class name ({class_names[0]}) for {len(tops)} folders: a folder is a group"
    if empty == 0:
        return "folders", "every image outside the defect-free folders has a defect in its mask: a folder per class"
    if share >= GROUPS_EMPTY_SHARE and not free:
        return "groups", (f"{empty} of {len(masked)} masks are empty and there is no defect-free folder: a folder is "
                          "a group (part, coil, line), not a class")
    counts = ", ".join(f"{t}: {int((masked['image_id'].str.split('/').str[0] == t).sum())}" for t in tops[:6])
    raise DataError(f"{ds.root}: the folders could be read two ways: as class folders ({len(tops)} classes, "
                    f"images per class {counts}{' ...' if len(tops) > 6 else ''}; {empty} image(s) with an empty "
                    f"mask in a class folder would be defect-free) or as group folders (1 class, {len(tops)} groups, "
                    f"{empty} of {len(masked)} images defect-free). Choose --layout folders or --layout groups")


def _as_groups(ds: DefectDataset, top_of: dict[str, str], class_names: list[str] | None) -> DefectDataset:
    """The class reading's table turned into the group reading: one class, the folder as ``group``."""
    names = list(class_names or ["defect"])
    if len(names) != 1:
        raise DataError(f"{ds.root}: group folders hold one class; --class-names gave {len(names)} ({names})")
    areas = ds.areas().sum(axis=1, keepdims=True)
    rows = ds.table[["image_id", "path", "height", "width"]].to_dict("records")
    table = build_table(rows, 1, areas)
    table["group"] = [top_of[i] for i in table["image_id"]]
    items = {k: [(0, src, where) for _, src, where in v] for k, v in ds.masks.items.items()}
    return replace(ds, layout="groups", class_names=names, table=table, masks=ItemMasks(items, ds.masks.decode))


def open_folders(root: Path, class_names: list[str] | None, progress: bool,
                 free_dirs: Sequence[str] | None = None, forced: str | None = None) -> DefectDataset:
    """Read folders of image + mask pairs as class folders or group folders (see the module's text)."""
    group_names = class_names if forced == "groups" or (class_names and len(class_names) == 1) else None
    free = set() if forced == "groups" else _free_dirs(root, free_dirs)
    tops = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in free)
    if not tops:
        raise DataError(f"{root}: no class or group folders (only defect-free folders {sorted(free)})")
    classes = tops if group_names is not None else _class_order(root, tops, class_names)
    entries, skipped, top_of = _entries(root, classes, free)
    ds = build_from_items(root, "folders", classes, entries, {}, skipped, progress)
    reading, why = _reading(ds, free, forced, class_names)
    out = _as_groups(ds, top_of, group_names) if reading == "groups" else ds
    out.reason = why
    return out


LAYOUT = Layout("folders", lambda req: detect(req.root),
                lambda req: open_folders(req.root, req.class_names, req.progress, req.free_dirs, req.layout), rank=2,
                describe="one folder per class with masks beside the images (folders)")
# group folders look like class folders on disk: the folders reader tells them apart from the masks, or
# --layout groups asks for them (never detected on its own)
GROUPS = Layout("groups", lambda req: False,
                lambda req: open_folders(req.root, req.class_names, req.progress, req.free_dirs, "groups"), rank=2,
                describe="one folder per group (part, coil) of image + mask pairs, one class (groups)")
