"""The ``coco`` layout: a COCO instance-segmentation JSON (CVAT, Label Studio, Roboflow): polygons,
uncompressed and compressed RLE (pycocotools decodes them), categories mapped to classes in id order,
images without annotations defect-free. Reader and writer side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data.images import copy_upright, image_size
from steelseg.data.items import build_from_items
from steelseg.data.registry import Layout
from steelseg.data.table import DefectDataset, progress_bar
from steelseg.errors import DataError
from steelseg.fsutil import atomic_json, confine

__all__ = ["COCO_NAMES", "coco_mask", "detect", "open_coco", "write_coco"]

COCO_NAMES = ("annotations.json", "_annotations.coco.json", "instances_default.json", "result.json")


def coco_mask(segm: Any, where: str, shape: tuple[int, int]) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or compressed RLE) -> bool (H, W): the layout's decoder."""
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
        # a COCO file is one object; a Label Studio export, which also says "annotations", is a list
        if head.lstrip("\ufeff \t\r\n").startswith("{") and ('"annotations"' in head or '"images"' in head):
            return cand
    return None


def detect(root: Path) -> bool:
    return _coco_json(root) is not None


def open_coco(root: Path, class_names: list[str] | None, progress: bool) -> DefectDataset:
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
        per_image[a["image_id"]].append((cat_index[a["category_id"]], a.get("segmentation"), where))
    entries, seen = [], set()
    dirs = [base / "images", base, base / "train", base / "valid", base / "test"]
    for key, im in images.items():
        rel = str(im.get("file_name", ""))
        p = _find_image(path, base, dirs, rel, key)
        image_id = Path(rel).as_posix()
        if image_id in seen:
            raise DataError(f"{path}: two images named {image_id!r}")
        seen.add(image_id)
        h, w = image_size(p)
        if (im.get("height"), im.get("width")) not in ((h, w), (None, None)):
            raise DataError(f"{path}: image {rel!r} is {w}x{h} but the JSON says {im.get('width')}x{im.get('height')}")
        entries.append((image_id, p, per_image[key]))
    return build_from_items(root if root.is_dir() else path.parent, "coco", names, entries, {}, [], progress,
                            coco_mask, confine_to=base)


def _find_image(path: Path, base: Path, dirs: list[Path], rel: str, key: Any) -> Path:
    """The file of one ``images`` entry, looked for under the dataset folder only: a ``file_name`` that is
    absolute, climbs out with ``..`` or resolves (through links) outside ``base`` is refused by entry."""
    where = f"{path}: images entry id {key} (file_name {rel!r})"
    if Path(rel).is_absolute() or ".." in Path(rel).parts or "\\" in rel:
        raise DataError(f"{where}: not a relative path inside the dataset folder {base}; file_name must name "
                        "an image under it (as images/x.jpg or x.jpg)")
    p = next((d / rel for d in dirs if (d / rel).is_file()), None)
    if p is None:
        p = next((d / Path(rel).name for d in dirs if (d / Path(rel).name).is_file()), None)
    if p is None:
        raise DataError(f"{path}: image {rel!r} (id {key}) not found under {base} or {base / 'images'}")
    try:
        return confine(p, base, "image")
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None



def write_coco(ds: DefectDataset, stage: Path, names: dict[str, str], progress: bool = False) -> None:
    """images/ + annotations.json: one compressed-RLE annotation (iscrowd 1) per image and class."""
    from pycocotools import mask as cmask

    (stage / "images").mkdir()
    images, anns = [], []
    for i, image_id in enumerate(progress_bar(ds.image_ids, len(ds.image_ids), "converting", progress), start=1):
        r = ds.row(image_id)
        name = names[image_id]
        copy_upright(r["path"], stage / "images" / name)
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


LAYOUT = Layout("coco", lambda req: detect(req.root), lambda req: open_coco(req.root, req.class_names, req.progress),
                rank=1, write=write_coco, describe="a COCO JSON (coco)")
