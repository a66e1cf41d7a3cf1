"""The ``labelme`` layout: one labelme JSON per image, anywhere below the dataset folder (beside the images,
or in a folder of their own), reader and writer side by side.

A JSON's ``imagePath`` is relative to the JSON's folder; where it does not resolve (real sets keep the JSONs in
``label/`` beside a ``data/`` folder of images, with a bare file name), the image of that name elsewhere in the
dataset is taken (two of that name: an error naming both). Shapes: ``polygon``, ``rectangle``, ``circle``
(centre and a point on the circle), ``line`` / ``linestrip`` / ``point`` (no area: drawn ``line_width``
pixels wide, :data:`LINE_WIDTH` by default, and ``steelseg info`` says so), and ``mask`` (a base64 PNG over its
box). Class names come from the labels (sorted), or ``--class-names``. Images without a JSON in a folder
of labelled images are defect-free. ``flags`` are ignored (the reason says so). An image is counted once: two
JSONs naming it are an error. Nothing outside the dataset folder is read. An image found nowhere on disk but
embedded in its JSON (``imageData``) is decoded once into steelseg's cache (:func:`steelseg.fsutil.cache_dir`)
and read from there, its id the JSON's folder and the ``imagePath`` name; a file on disk always wins, so no image
is counted twice.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data.images import IMAGE_EXTS, copy_upright, image_index
from steelseg.data.items import build_from_items
from steelseg.data.registry import Layout
from steelseg.data.shapes import LINE_WIDTH, components, fill_polygon, stroke
from steelseg.data.table import DefectDataset, progress_bar
from steelseg.errors import DataError
from steelseg.fsutil import EMBEDDED, atomic_json, atomic_write, cache_dir, confine

__all__ = ["LINE_WIDTH", "detect", "labelme_mask", "open_labelme", "write_labelme"]

AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")
LINE_SHAPES = ("line", "linestrip", "point")
SCAN_LIMIT = 200  # JSON files looked at to detect the layout


def _jsons(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if not any(part.startswith(".") for part in p.relative_to(root).parts))


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def _is_labelme(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("shapes"), list) and "imagePath" in doc


def detect(root: Path) -> bool:
    if not root.is_dir():
        return False
    for p in _jsons(root)[:SCAN_LIMIT]:
        try:
            if _is_labelme(json.loads(p.read_text(encoding="utf-8-sig", errors="ignore"))):
                return True
        except (json.JSONDecodeError, OSError):
            continue
    return False


def labelme_mask(src: tuple[dict[str, Any], int], where: str, shape: tuple[int, int]) -> np.ndarray:
    """The layout's decoder: one labelme shape (and the line width) -> bool (H, W)."""
    s, width = src
    kind = s.get("shape_type") or "polygon"
    pts = np.asarray(s.get("points") or [], np.float64).reshape(-1, 2)
    h, w = shape
    if kind == "polygon":
        if len(pts) < 3:
            raise DataError(f"{where}: a polygon with {len(pts)} point(s); it needs 3 or more (or make it a line)")
        return fill_polygon(shape, pts)
    if kind == "rectangle":
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        return fill_polygon(shape, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
    if kind == "circle":
        import cv2

        m = np.zeros(shape, np.uint8)
        r = int(round(float(np.hypot(*(pts[1] - pts[0])))))
        cv2.circle(m, tuple(int(round(v)) for v in pts[0]), r, 1, -1)
        return m.astype(bool)
    if kind in LINE_SHAPES:
        return stroke(shape, pts, width)
    if kind == "mask":
        from PIL import Image

        box = np.round(pts).astype(int)
        x0, y0 = box.min(axis=0)
        try:
            piece = np.asarray(Image.open(io.BytesIO(base64.b64decode(s.get("mask") or "")))).astype(bool)
        except Exception:
            raise DataError(f"{where}: its 'mask' is not a base64 PNG") from None
        piece = piece if piece.ndim == 2 else piece.any(axis=-1)
        out = np.zeros(shape, bool)
        ph, pw = piece[: max(0, h - y0), : max(0, w - x0)].shape
        out[y0:y0 + ph, x0:x0 + pw] = piece[:ph, :pw]
        return out
    raise DataError(f"{where}: shape_type {kind!r} is not one of {', '.join(AREA_SHAPES + LINE_SHAPES)}")


def _find_image(doc: dict[str, Any], path: Path, root: Path, index: dict[str, list[Path]]) -> Path:
    rel = str(doc.get("imagePath") or "").replace("\\", "/")
    cand = path.parent / rel
    if rel and cand.is_file():
        return confine(cand, root, "image")
    name = Path(rel).name
    found = index.get(name, [])
    if len(found) > 1:
        raise DataError(f"{path}: imagePath {rel!r} does not resolve, and the dataset holds {len(found)} images named "
                        f"{name} ({', '.join(str(p.relative_to(root)) for p in found[:3])}); fix imagePath")
    if found:
        return confine(found[0], root, "image")
    if doc.get("imageData"):
        return _embedded(doc["imageData"], path, name)
    raise DataError(f"{path}: image {rel!r} not found beside the JSON nor anywhere in {root}")


def _embedded(data: Any, path: Path, name: str) -> Path:
    """The JSON's embedded image, decoded once into the cache (keyed by the JSON and its bytes)."""
    from PIL import Image

    try:
        raw = base64.b64decode(str(data), validate=True)
        fmt = Image.open(io.BytesIO(raw)).format or "PNG"
    except Exception:
        raise DataError(f"{path}: its imageData is not a base64 image, and the image is not on disk") from None
    suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in IMAGE_EXTS else "." + fmt.lower()
    key = hashlib.sha256(str(path.resolve()).encode() + raw).hexdigest()[:20]
    out = cache_dir(EMBEDDED) / key / (Path(name).stem + suffix if name else "image" + suffix)
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out, "wb") as fh:
            fh.write(raw)
    return out


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def open_labelme(root: Path, class_names: list[str] | None, progress: bool,
                 line_width: int = LINE_WIDTH) -> DefectDataset:
    index = image_index(root)
    labelled: dict[Path, tuple[Path, list[tuple[dict[str, Any], str]]]] = {}
    skipped, flags, lines, embedded = [], 0, 0, 0
    for path in _jsons(root):
        doc = _load(path)
        if not _is_labelme(doc):
            skipped.append(str(path.relative_to(root)))
            continue
        img = _find_image(doc, path, root, index)
        embedded += not _inside(img, root)
        if img in labelled:
            raise DataError(f"{path}: labels {img.relative_to(root)}, which {labelled[img][0]} labels too: one JSON "
                            "an image")
        shapes = []
        for k, s in enumerate(doc["shapes"]):
            if not isinstance(s, dict) or not isinstance(s.get("label"), str):
                raise DataError(f"{path}: shape {k} has no label")
            shapes.append((s, f"{path}: shape {k} ({s['label']})"))
            lines += (s.get("shape_type") or "polygon") in LINE_SHAPES
        flags += bool(doc.get("flags"))
        labelled[img] = (path, shapes)
    if not labelled:
        raise DataError(f"{root}: no labelme JSON (a 'shapes' list and an 'imagePath') found")
    names = list(class_names) if class_names else sorted({s["label"] for _, sh in labelled.values() for s, _ in sh})
    known = {n: i for i, n in enumerate(names)}
    entries = []
    for img, (path, shapes) in sorted(labelled.items()):
        items = []
        for s, where in shapes:
            if s["label"] not in known:
                raise DataError(f"{where}: label {s['label']!r} is not a class ({', '.join(names)}); add it to "
                                "--class-names or fix the label")
            items.append((known[s["label"]], (s, line_width), where))
        image_id = (img if _inside(img, root) else path.parent / img.name).relative_to(root).as_posix()
        entries.append((image_id, img, items))
    folders = {img.parent for img in labelled if _inside(img, root)}
    free = sorted(p for d in folders for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                  and not p.name.startswith(".") and p not in labelled)
    entries += [(p.relative_to(root).as_posix(), p, []) for p in free]
    ds = build_from_items(root, "labelme", names, entries, {}, skipped, progress, labelme_mask)
    notes = [f"labelme: {len(labelled)} JSON file(s)"]
    if free:
        notes.append(f"{len(free)} image(s) without a JSON among labelled ones read as defect-free")
    if embedded:
        notes.append(f"{embedded} image(s) read from their JSON's embedded imageData (not on disk)")
    if lines:
        notes.append(f"{lines} line / point shape(s) drawn {line_width} px wide")
    if flags:
        notes.append(f"flags of {flags} JSON file(s) ignored")
    ds.reason = "; ".join(notes)
    return ds


def _shape(label: str, mask: np.ndarray) -> list[dict[str, Any]]:
    """A component as a polygon, or (one with a hole, which a polygon would fill) as a mask shape over its box."""
    from PIL import Image

    out = []
    for poly, (x0, y0, x1, y1), piece in components(mask):
        if poly is not None:
            out.append({"label": label, "points": poly.tolist(), "group_id": None, "description": "",
                        "shape_type": "polygon", "flags": {}})
            continue
        buf = io.BytesIO()
        Image.fromarray(piece.astype(np.uint8) * 255).save(buf, format="PNG")
        out.append({"label": label, "points": [[x0, y0], [x1, y1]], "group_id": None, "description": "",
                    "shape_type": "mask", "flags": {}, "mask": base64.b64encode(buf.getvalue()).decode()})
    return out


def write_labelme(ds: DefectDataset, stage: Path, names: dict[str, str], progress: bool = False) -> None:
    """Each image beside its labelme JSON: a polygon a connected component of each class (a mask shape where a
    component has a hole), ``imageData`` null."""
    for image_id in progress_bar(ds.image_ids, len(ds.image_ids), "converting", progress):
        name = names[image_id]
        copy_upright(ds.row(image_id)["path"], stage / name)
        mask = ds.load_mask(image_id)
        shapes = [s for c, n in enumerate(ds.class_names) for s in _shape(n, mask[..., c] > 0)]
        atomic_json(stage / (Path(name).stem + ".json"),
                    {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": name, "imageData": None,
                     "imageHeight": int(mask.shape[0]), "imageWidth": int(mask.shape[1])})


LAYOUT = Layout("labelme", lambda req: detect(req.root),
                lambda req: open_labelme(req.root, req.class_names, req.progress, req.line_width or LINE_WIDTH), rank=1, write=write_labelme,
                describe="labelme JSON files beside or apart from their images (labelme)")
