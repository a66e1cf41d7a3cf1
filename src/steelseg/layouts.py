"""The dataset layouts people's data come in, beside Kaggle and VOC-style mask folders, and writers
for converting between all of them. Each layout is a detector and a reader in ``LAYOUTS``.

* **folders**: one folder per defect class holding images with a binary mask beside each
  (``x.jpg`` + ``x.png``, or ``x_mask.png``, or ``masks/x.png``), and a folder of defect-free
  images (``good``, ``ok``, ``free``, ``normal``, ``defect_free``, ``clean``, or ``free_dirs``).
* **mvtec**: MVTec AD style, ``train/good/``, ``test/<defect>/``, ``ground_truth/<defect>/<id>_mask.png``.
* **coco**: a COCO instance-segmentation JSON (CVAT, Label Studio, Roboflow): polygons, uncompressed
  and compressed RLE (pycocotools decodes them), categories mapped to classes in id order, images
  without annotations defect-free.

Binary masks may be 0/255, 0/1 or noisy from lossy saving: they are binarised at half their maximum.
Every reader decodes each mask once to fill the sample table (areas per class), and lists what it
skipped (``DefectDataset.skipped``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.errors import DataError
from steelseg.images import IMAGE_EXTS, image_size, read_image

__all__ = ["FREE_DIR_NAMES", "LAYOUTS", "decode_item", "flat_names", "write_coco", "write_masks"]

FREE_DIR_NAMES = ("good", "ok", "free", "normal", "defect_free", "defect-free", "clean", "no_defect", "nodefect")
MASK_SUFFIXES = ("_mask", "-mask", "_label", "_gt")
COCO_NAMES = ("annotations.json", "_annotations.coco.json", "instances_default.json", "result.json")


# ---- masks ------------------------------------------------------------------------------------
def read_binary_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A binary mask file -> bool (H, W), binarised at half of its maximum (0/1, 0/255, JPEG noise)."""
    m = read_image(path, None)
    if m.ndim == 3:
        m = m.max(axis=2)
    if m.shape != tuple(shape):
        raise DataError(f"{path}: mask is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}; "
                        "masks must match their image size")
    top = int(m.max()) if m.size else 0
    return m > top / 2 if top else np.zeros(shape, bool)


def _coco_mask(segm: Any, shape: tuple[int, int], where: str) -> np.ndarray:
    try:
        from pycocotools import mask as cmask
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise DataError("COCO masks need pycocotools: pip install pycocotools") from exc
    h, w = shape
    try:
        if isinstance(segm, list):  # polygons
            polys = [p for p in segm if len(p) >= 6]
            if not polys:
                raise DataError(f"{where}: polygon with fewer than 3 points")
            rles = cmask.frPyObjects(polys, h, w)
            return cmask.decode(cmask.merge(rles)).astype(bool)
        if isinstance(segm, dict) and "counts" in segm:
            size = list(segm.get("size", [h, w]))
            if size != [h, w]:
                raise DataError(f"{where}: RLE size {size} differs from the image's [{h}, {w}]")
            obj = cmask.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else \
                {"size": size, "counts": segm["counts"].encode() if isinstance(segm["counts"], str) else segm["counts"]}
            return cmask.decode(obj).astype(bool)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{where}: segmentation cannot be decoded ({type(exc).__name__}: {exc})") from None
    raise DataError(f"{where}: no segmentation (polygons or RLE); boxes alone cannot train a segmenter")


def decode_item(item: tuple[str, Any, str], shape: tuple[int, int]) -> np.ndarray:
    """One mask source of the new layouts -> bool (H, W): ("file", path, where) or ("coco", segm, where)."""
    kind, src, where = item
    return read_binary_mask(src, shape) if kind == "file" else _coco_mask(src, shape, where)


def _build(root: Path, layout: str, class_names: list[str], entries: list[tuple[str, Path, list]],
           splits: dict[str, list[str]], skipped: list[str], progress: bool) -> Any:
    """Sample table from (image id, path, mask items) by decoding every mask once."""
    from steelseg.datasets import DefectDataset, _build_table, _progress

    k = len(class_names)
    rows, areas, items = [], np.zeros((len(entries), k), np.int64), {}
    for i, (image_id, path, its) in enumerate(_progress(entries, len(entries), "reading masks", progress)):
        h, w = image_size(path)
        union: dict[int, np.ndarray] = {}
        for c, *rest in its:
            m = decode_item(tuple(rest), (h, w))  # type: ignore[arg-type]
            union[c] = union[c] | m if c in union else m
        for c, m in union.items():
            areas[i, c] = int(m.sum())
        rows.append({"image_id": image_id, "path": str(path), "height": h, "width": w})
        items[image_id] = its
    return DefectDataset(root, layout, class_names, _build_table(rows, k, areas), splits, mask_items=items,
                         skipped=skipped)


# ---- class folders ----------------------------------------------------------------------------
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _pair(folder: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image, mask) pairs in a class folder, and files that are neither."""
    files = sorted(p for p in folder.iterdir() if _is_image(p))
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
        for m in sorted(q for q in masks_dir.iterdir() if _is_image(q)):
            if m not in used:
                raise DataError(f"{m}: mask without an image in {folder}")
    others = sorted(p for p in folder.iterdir() if p.is_file() and p not in used and not p.name.startswith("."))
    return pairs, others


def _free_dirs(root: Path, free_dirs: Sequence[str] | None) -> set[str]:
    names = set(free_dirs) if free_dirs else set(FREE_DIR_NAMES)
    return {p.name for p in root.iterdir() if p.is_dir() and p.name.lower() in {n.lower() for n in names}}


def detect_folders(root: Path) -> bool:
    if not root.is_dir():
        return False
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return bool(subs) and any(any(_is_image(q) for q in s.iterdir()) for s in subs) and \
        not (root / "train").is_dir() and not (root / "ground_truth").is_dir()


def open_folders(root: Path, class_names: list[str] | None, progress: bool,
                 free_dirs: Sequence[str] | None = None) -> Any:
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
        entries += [(f"{name}/{img.name}", img, [(c, "file", mask, str(mask))]) for img, mask in pairs]
    for name in sorted(free):
        for p in sorted((root / name).iterdir()):
            if _is_image(p):
                entries.append((f"{name}/{p.name}", p, []))
            elif p.is_file() and not p.name.startswith("."):
                skipped.append(str(p.relative_to(root)))
    return _build(root, "folders", classes, entries, {}, skipped, progress)


# ---- MVTec AD ---------------------------------------------------------------------------------
def detect_mvtec(root: Path) -> bool:
    return (root / "test").is_dir() and ((root / "ground_truth").is_dir() or (root / "train" / "good").is_dir())


def open_mvtec(root: Path, class_names: list[str] | None, progress: bool) -> Any:
    test, gt = root / "test", root / "ground_truth"
    defects = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != "good")
    classes = list(class_names) if class_names else defects
    unknown = sorted(set(defects) - set(classes))
    if unknown:
        raise DataError(f"{test}: defect folder(s) {unknown} not among the class names {classes}")
    entries, splits, skipped = [], {"train": [], "test": []}, []
    for split, folder in (("train", root / "train" / "good"), ("test", test / "good")):
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if _is_image(p):
                    image_id = p.relative_to(root).as_posix()
                    entries.append((image_id, p, []))
                    splits[split].append(image_id)
    for name in defects:
        folder = test / name
        images = [p for p in sorted(folder.iterdir()) if _is_image(p)]
        if not images:
            raise DataError(f"{folder}: empty defect folder")
        for p in images:
            mask = next((gt / name / f"{p.stem}{s}" for s in ("_mask.png", ".png", "_mask.bmp")
                         if (gt / name / f"{p.stem}{s}").is_file()), None)
            if mask is None:
                raise DataError(f"{p}: no mask {gt / name / (p.stem + '_mask.png')}")
            image_id = p.relative_to(root).as_posix()
            entries.append((image_id, p, [(classes.index(name), "file", mask, str(mask))]))
            splits["test"].append(image_id)
        if (gt / name).is_dir():
            known = {p.stem for p in images}
            for m in sorted((gt / name).iterdir()):
                stem = m.stem[: -len("_mask")] if m.stem.endswith("_mask") else m.stem
                if _is_image(m) and stem not in known:
                    raise DataError(f"{m}: mask without an image (no {folder / stem}.*)")
    return _build(root, "mvtec", classes, entries, {k: v for k, v in splits.items() if v}, skipped, progress)


# ---- COCO -------------------------------------------------------------------------------------
def _coco_json(root: Path) -> Path | None:
    if root.is_file() and root.suffix.lower() == ".json":
        return root
    if not root.is_dir():
        return None
    for name in COCO_NAMES:
        for cand in (root / name, root / "annotations" / name):
            if cand.is_file():
                return cand
    found = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    for cand in found:
        head = cand.read_text(errors="ignore")[:65536]
        if '"annotations"' in head or '"images"' in head:
            return cand
    return None


def detect_coco(root: Path) -> bool:
    return _coco_json(root) is not None


def open_coco(root: Path, class_names: list[str] | None, progress: bool) -> Any:
    path = _coco_json(root)
    assert path is not None
    base = path.parent.parent if path.parent.name == "annotations" else path.parent
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: no '{key}' list; expected a COCO instance-segmentation file")
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    names = [str(c["name"]) for c in cats]
    if class_names and list(class_names) != names:
        raise DataError(f"{path}: categories {names} differ from the class names {list(class_names)}")
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    images: dict[Any, dict] = {}
    for im in doc["images"]:
        images[im["id"]] = im
    per_image: dict[Any, list] = {k: [] for k in images}
    for a in doc["annotations"]:
        where = f"{path}: annotation {a.get('id')}"
        if a.get("image_id") not in images:
            raise DataError(f"{where}: unknown image_id {a.get('image_id')!r}")
        if a.get("category_id") not in cat_index:
            raise DataError(f"{where}: unknown category_id {a.get('category_id')!r}; categories are "
                            f"{sorted(cat_index)}")
        per_image[a["image_id"]].append((cat_index[a["category_id"]], "coco", a.get("segmentation"), where))
    entries, seen = [], set()
    dirs = [base / "images", base, base / "train", base / "valid", base / "test"]
    for key, im in images.items():
        rel = str(im.get("file_name", ""))
        p = next((d / rel for d in dirs if (d / rel).is_file()), None)
        if p is None:
            p = next((d / Path(rel).name for d in dirs if (d / Path(rel).name).is_file()), None)
        if p is None:
            raise DataError(f"{path}: image {rel!r} (id {key}) not found under {base} or {base / 'images'}")
        image_id = Path(rel).as_posix()
        if image_id in seen:
            raise DataError(f"{path}: two images named {image_id!r}")
        seen.add(image_id)
        h, w = image_size(p)
        if (im.get("height"), im.get("width")) not in ((h, w), (None, None)):
            raise DataError(f"{path}: image {rel!r} is {w}x{h} but the JSON says {im.get('width')}x{im.get('height')}")
        entries.append((image_id, p, per_image[key]))
    return _build(root if root.is_dir() else path.parent, "coco", names, entries, {}, [], progress)


# registry: name -> (detector, reader); detection order matters only for the message on ambiguity
LAYOUTS: dict[str, tuple[Callable[[Path], bool], Callable[..., Any]]] = {
    "folders": (detect_folders, open_folders),
    "mvtec": (detect_mvtec, open_mvtec),
    "coco": (detect_coco, open_coco),
}


# ---- writers ----------------------------------------------------------------------------------
def flat_names(ds: Any) -> dict[str, str]:
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


def write_masks(ds: Any, stage: Path, progress: bool = False) -> None:
    """VOC-style mask folders: JPEGImages/, SegmentationClass/*.png (class indices), classes.txt,
    ImageSets/Segmentation/*.txt. Refuses pixels in two classes (an index mask cannot hold them)."""
    from PIL import Image

    from steelseg.datasets import _progress
    from steelseg.fsutil import atomic_text

    names = flat_names(ds)
    stems = {}
    for image_id, name in names.items():
        stem = Path(name).stem
        if stem in stems:
            raise DataError(f"{image_id} and {stems[stem]} share the stem {stem!r}; the mask layout matches by stem")
        stems[stem] = image_id
    (stage / "JPEGImages").mkdir()
    (stage / "SegmentationClass").mkdir()
    for image_id in _progress(ds.image_ids, len(ds.image_ids), "converting", progress):
        mask = ds.load_mask(image_id)
        if int(mask.sum(axis=2).max(initial=0)) > 1:
            raise DataError(f"{image_id}: some pixels belong to two classes; the masks layout holds one class "
                            "per pixel (use --to kaggle or coco)")
        labels = (mask * np.arange(1, ds.num_classes + 1, dtype=np.uint16)).sum(axis=2)
        labels = labels.astype(np.uint8 if ds.num_classes < 256 else np.uint16)
        name = names[image_id]
        shutil.copyfile(ds.row(image_id)["path"], stage / "JPEGImages" / name)
        Image.fromarray(labels).save(stage / "SegmentationClass" / f"{Path(name).stem}.png")
    atomic_text(stage / "classes.txt", "\n".join(ds.class_names) + "\n")
    if ds.splits:
        split_dir = stage / "ImageSets" / "Segmentation"
        split_dir.mkdir(parents=True)
        for split, ids in ds.splits.items():
            atomic_text(split_dir / f"{split}.txt", "".join(Path(names[i]).stem + "\n" for i in ids))


def write_coco(ds: Any, stage: Path, progress: bool = False) -> None:
    """images/ + annotations.json: one compressed-RLE annotation (iscrowd 1) per image and class."""
    from pycocotools import mask as cmask

    from steelseg.datasets import _progress
    from steelseg.fsutil import atomic_json

    names = flat_names(ds)
    (stage / "images").mkdir()
    images, anns = [], []
    for i, image_id in enumerate(_progress(ds.image_ids, len(ds.image_ids), "converting", progress), start=1):
        r = ds.row(image_id)
        name = names[image_id]
        shutil.copyfile(r["path"], stage / "images" / name)
        images.append({"id": i, "file_name": name, "height": int(r["height"]), "width": int(r["width"])})
        mask = ds.load_mask(image_id)
        for c in range(ds.num_classes):
            m = mask[..., c]
            if not m.any():
                continue
            enc = cmask.encode(np.asfortranarray(m.astype(np.uint8)))
            x, y, w, h = (float(v) for v in cmask.toBbox(enc))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c + 1, "iscrowd": 1,
                         "segmentation": {"size": enc["size"], "counts": enc["counts"].decode()},
                         "area": int(m.sum()), "bbox": [x, y, w, h]})
    cats = [{"id": c + 1, "name": n, "supercategory": "defect"} for c, n in enumerate(ds.class_names)]
    atomic_json(stage / "annotations.json", {"images": images, "annotations": anns, "categories": cats,
                                             "info": {"description": f"converted by steelseg from {ds.root}"}})
