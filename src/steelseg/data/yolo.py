"""The ``yolo`` layout: an ultralytics YOLO segmentation dataset, reader and writer side by side.

``data.yaml`` names the dataset ``path`` (relative to the yaml's folder), the splits ``train`` / ``val`` /
``test`` (each a folder of images, a text file listing image paths, or a list of either) and the class
``names`` (a list, or a mapping of id to name). Each image ``.../images/.../x.jpg`` has its labels in
``.../labels/.../x.txt``, a line per object: ``class x1 y1 x2 y2 ...``, the polygon's vertices normalised to
0..1 by the image's width and height. A missing or empty label file: a defect-free image. The yaml's splits
become steelseg's splits (``data.train_split: train``).

What a real export can get wrong is refused with the file and line: a box-only line (5 columns; boxes do not
train a segmenter, unless ``boxes=True`` asks for them as filled boxes), a polygon of fewer than 3 points,
coordinates beyond 0..1 by more than :data:`SLACK` (within it they are clipped, as exporters round), a class id
not in ``names``, a label file without its image; nothing outside the dataset folder is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data.images import IMAGE_EXTS, copy_upright
from steelseg.data.items import build_from_items
from steelseg.data.registry import Layout
from steelseg.data.shapes import fill_polygon, mask_polygons
from steelseg.data.table import DefectDataset, progress_bar
from steelseg.errors import DataError
from steelseg.fsutil import atomic_text, confine

__all__ = ["SLACK", "YAML_NAMES", "detect", "open_yolo", "write_yolo"]

YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml")
SLACK = 0.01  # normalised coordinates up to this far outside 0..1 are clipped; further is an error
SPLITS = ("train", "val", "test")


def _yaml_path(root: Path) -> Path | None:
    if root.is_file() and root.suffix.lower() in (".yaml", ".yml"):
        return root
    return next((root / n for n in YAML_NAMES if (root / n).is_file()), None) if root.is_dir() else None


def detect(root: Path) -> bool:
    path = _yaml_path(root)
    if path is None:
        return False
    text = path.read_text(errors="ignore")
    return "names" in text and any(s in text for s in SPLITS)


def _names(doc: dict[str, Any], where: Path) -> list[str]:
    names = doc.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{where}: names: keys must be class ids 0, 1, ...") from None
        if ids != list(range(len(ids))):
            raise DataError(f"{where}: names: class ids {ids} must run 0..{len(ids) - 1}")
        return [str(names[k] if k in names else names[str(k)]) for k in ids]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DataError(f"{where}: no 'names' (a list of class names, or a mapping id: name)")


def _split_images(entry: Any, base: Path, where: str) -> list[Path]:
    """The images of one split: a folder (any depth), a text file of paths, or a list of either."""
    out: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        item = str(item)
        if item.startswith("../") and not (base / item).exists():  # Roboflow's exports: ../train/images
            item = item[3:]
        p = base / item
        if Path(item).is_absolute() or ".." in Path(item).parts:
            raise DataError(f"{where}: {item!r} is not a path inside the dataset folder {base}")
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS and not q.name.startswith("."))
        elif p.is_file() and p.suffix.lower() == ".txt":
            for k, line in enumerate(p.read_text().splitlines(), 1):
                line = line.strip()
                if line:
                    q = (base / line.removeprefix("./")) if not Path(line).is_absolute() else Path(line)
                    if not q.is_file():
                        raise DataError(f"{p}:{k}: image {line!r} not found")
                    out.append(q)
        else:
            raise DataError(f"{where}: {item!r} is neither a folder nor a list file under {base}")
    return out


def _label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    k = max((i for i, p in enumerate(parts) if p == "images"), default=None)
    if k is None:
        return image.with_suffix(".txt")
    parts[k] = "labels"
    return Path(*parts).with_suffix(".txt")


def _objects(label: Path, k: int, boxes: bool) -> list[tuple[int, Any, str]]:
    """(class, normalised (N, 2) points, where) per line of a label file."""
    out: list[tuple[int, Any, str]] = []
    if not label.is_file():
        return out
    for n, line in enumerate(label.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{label}:{n}"
        try:
            cls, vals = int(parts[0]), np.array([float(v) for v in parts[1:]])
        except ValueError:
            raise DataError(f"{where}: not 'class x1 y1 x2 y2 ...' numbers") from None
        if not 0 <= cls < k:
            raise DataError(f"{where}: class id {cls} is not in names (0..{k - 1})")
        if len(vals) == 4:
            if not boxes:
                raise DataError(f"{where}: a box (class x y w h), not a polygon: this is a detection dataset. Export "
                                "segmentation polygons (ultralytics task=segment), or read the boxes as filled "
                                "rectangles with --boxes (in a config: data.layout_options: {boxes: true})")
            x, y, w, h = vals
            vals = np.array([x - w / 2, y - h / 2, x + w / 2, y - h / 2, x + w / 2, y + h / 2, x - w / 2, y + h / 2])
        if len(vals) < 6 or len(vals) % 2:
            raise DataError(f"{where}: a polygon needs 3 or more x y pairs ({len(vals)} numbers)")
        if vals.min() < -SLACK or vals.max() > 1 + SLACK:
            raise DataError(f"{where}: coordinates {vals.min():.3f}..{vals.max():.3f} lie outside the image (0..1)")
        out.append((cls, np.clip(vals, 0, 1).reshape(-1, 2), where))
    return out


def yolo_mask(points: np.ndarray, where: str, shape: tuple[int, int]) -> np.ndarray:
    """The layout's decoder: normalised polygon points -> bool (H, W)."""
    h, w = shape
    return fill_polygon(shape, points * [w, h] - 0.5)  # normalised edges -> pixel centres


def open_yolo(root: Path, class_names: list[str] | None, progress: bool, boxes: bool = False) -> DefectDataset:
    from steelseg.schema import load_yaml

    path = _yaml_path(root)
    assert path is not None
    doc = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping (path, train, val, names)")
    folder = path.parent
    given = Path(str(doc.get("path") or "."))
    # an absolute path is where the exporting machine kept it: the yaml's own folder here
    base = folder if given.is_absolute() and not given.is_dir() else confine(folder / given, folder, "dataset path")
    names = _names(doc, path)
    if class_names and list(class_names) != names:
        raise DataError(f"{path}: names {names} differ from the class names {list(class_names)}")
    entries, splits, seen = [], {}, {}
    for split in SPLITS:
        if doc.get(split) in (None, "", []):
            continue
        for img in _split_images(doc[split], base, f"{path}: {split}"):
            confine(img, base, "image")
            image_id = img.relative_to(base).as_posix()
            splits.setdefault(split, []).append(image_id)
            if image_id not in seen:
                seen[image_id] = len(entries)
                entries.append((image_id, img, _objects(_label_path(img), len(names), boxes)))
    if not entries:
        raise DataError(f"{path}: no images in any of the splits {', '.join(s for s in SPLITS if s in doc)}")
    _orphans(base, seen)
    ds = build_from_items(base, "yolo", names, entries, splits, [], progress, yolo_mask)
    ds.reason = f"found {path.name} (ultralytics YOLO segmentation)"
    return ds


def _orphans(base: Path, seen: dict[str, int]) -> None:
    """A label file whose image is missing is an error (a half-copied export)."""
    images = {_label_path(base / i) for i in seen}
    for lab in sorted(base.rglob("labels/**/*.txt")):
        if lab not in images and lab.stat().st_size:
            stem = lab.relative_to(base).as_posix()
            raise DataError(f"{lab}: labels without an image (no image for {stem} under images/); copy the image "
                            "in, or remove the label file")


def write_yolo(ds: DefectDataset, stage: Path, names: dict[str, str], progress: bool = False) -> None:
    """images/<split>/ + labels/<split>/ + data.yaml, one polygon line per connected component of each class
    (the dataset's train / val / test splits when it has them, else all in train)."""
    splits = {s: ids for s, ids in ds.splits.items() if s in SPLITS and ids} or {"train": ds.image_ids}
    split_of = {i: s for s, ids in splits.items() for i in ids}
    for image_id in progress_bar(ds.image_ids, len(ds.image_ids), "converting", progress):
        split = split_of.get(image_id, "train")
        name = names[image_id]
        (stage / "images" / split).mkdir(parents=True, exist_ok=True)
        (stage / "labels" / split).mkdir(parents=True, exist_ok=True)
        copy_upright(ds.row(image_id)["path"], stage / "images" / split / name)
        mask = ds.load_mask(image_id)
        h, w = mask.shape[:2]
        lines = []
        for c in range(ds.num_classes):
            for poly in mask_polygons(mask[..., c] > 0):
                xy = (poly + 0.5) / [w, h]
                lines.append(f"{c} " + " ".join(f"{v:.6f}" for v in xy.ravel()))
        atomic_text(stage / "labels" / split / (Path(name).stem + ".txt"), "\n".join(lines) + ("\n" if lines else ""))
    import yaml

    doc = {"path": ".", **{s: f"images/{s}" for s in splits}, "names": dict(enumerate(ds.class_names))}
    atomic_text(stage / "data.yaml", f"# converted by steelseg from {ds.root}\n" + yaml.safe_dump(doc, sort_keys=False))


LAYOUT = Layout("yolo", lambda req: detect(req.root), 
                lambda req: open_yolo(req.root, req.class_names, req.progress, req.boxes),
                rank=0, write=write_yolo, describe="an ultralytics YOLO segmentation data.yaml (yolo)")
