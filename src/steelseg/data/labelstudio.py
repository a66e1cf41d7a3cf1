"""The ``labelstudio`` layout: a Label Studio JSON export (one ``*.json`` at the dataset folder's top: a list of
tasks) and the images below the folder; reader and writer.

Results read: ``polygonlabels`` (points in percent of the image), ``rectanglelabels`` (x, y, width, height in
percent, ``rotation`` in degrees about the top-left corner) and ``brushlabels`` (Label Studio's own RLE: the
bit-packed run-length code of rle-pack over the RGBA pixels, whose alpha is the mask; decoded here, checked in
the tests against vectors made by Label Studio's converter). Other result types (choices, keypoints, text) carry
no pixels and are skipped. ``predictions`` are ignored. Of several annotations of a task, the one marked
``ground_truth`` is read, else the latest (``updated_at``, then ``created_at``, then ``id``) that was not
cancelled; the rule is in ``info``'s reason. A task's image is found by its path (``/data/upload/<n>/<hash>-<name>``
by ``<name>``; ``/data/local-files/?d=<path>`` by its file name; a plain path below the folder as it is); two
images of that name are an error. A result drawn on a rotated view (``image_rotation``) is stored by Label Studio
in the unrotated image's frame and read as it is (``info`` counts them); one whose recorded size is the image's
turned is refused (:func:`_check_frame`). Class names from the results (sorted), or ``--class-names``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from steelseg.data.images import copy_upright, image_index
from steelseg.data.items import build_from_items
from steelseg.data.registry import Layout
from steelseg.data.shapes import fill_polygon
from steelseg.data.table import DefectDataset, progress_bar
from steelseg.errors import DataError
from steelseg.fsutil import atomic_json, confine

__all__ = ["RULE", "brush_decode", "brush_encode", "detect", "ls_mask", "open_labelstudio", "write_labelstudio"]

RULE = "the annotation marked ground truth, else the latest not cancelled"
KINDS = {"polygonlabels", "rectanglelabels", "brushlabels"}
EXPORT = "labelstudio.json"  # the file name the writer uses


def _exports(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.glob("*.json")):
        with open(p, "rb") as fh:
            head = fh.read(4096).lstrip()
        if head.startswith(b"[") and (b'"annotations"' in head or head.strip() == b"[]"):
            out.append(p)
    return out


def detect(root: Path) -> bool:
    return root.is_dir() and bool(_exports(root))


# ---- Label Studio's brush RLE (rle-pack) -----------------------------------------------------------------
def _bits(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes(data), np.uint8))


def brush_decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio's brush RLE -> bool (height, width): the alpha channel of the RGBA values it packs."""
    bits = _bits(bytes(int(v) & 0xFF for v in rle))
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > bits.size:
            raise ValueError("the code ends early")
        v = 0
        for b in bits[pos:pos + n]:
            v = (v << 1) | int(b)
        pos += n
        return v

    num = read(32)
    if num != height * width * 4:
        raise ValueError(f"it packs {num} values, not the {height}x{width}x4 of the image")
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint32)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
            i = j
        else:
            while i < j:
                out[i] = read(word)
                i += 1
    return out[: num].reshape(height, width, 4)[..., 3] > 0


def brush_encode(mask: np.ndarray) -> list[int]:
    """bool (H, W) -> Label Studio's brush RLE (RGBA 255 where the mask is set), runs of up to 256 values."""
    flat = np.repeat(np.asarray(mask, bool).ravel(), 4).astype(np.uint8) * 255
    bits = [f"{flat.size:032b}", f"{8 - 1:05b}", "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))]
    change = np.flatnonzero(np.diff(flat.astype(np.int16))) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [flat.size]])
    for s, e in zip(starts.tolist(), ends.tolist()):
        value = f"{int(flat[s]):08b}"
        while s < e:
            n = min(256, e - s)
            bits.append(f"1{'10'}{n - 1:08b}{value}")  # a repeat run, its length in the 8-bit size class
            s += n
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return [int(text[k:k + 8], 2) for k in range(0, len(text), 8)]


# ---- reading ---------------------------------------------------------------------------------------------
def ls_mask(src: dict[str, Any], where: str, shape: tuple[int, int]) -> np.ndarray:
    """The layout's decoder: one Label Studio result -> bool (H, W)."""
    h, w = shape
    value = src.get("value") or {}
    kind = src.get("type")
    _check_frame(src, where, h, w)
    if kind == "polygonlabels":
        pts = np.asarray(value.get("points") or [], np.float64).reshape(-1, 2)
        if len(pts) < 3:
            raise DataError(f"{where}: a polygon with {len(pts)} point(s); it needs 3 or more")
        return fill_polygon(shape, pts / 100.0 * [w, h])
    if kind == "rectanglelabels":
        x, y, bw, bh = (float(value.get(k, 0.0)) / 100.0 for k in ("x", "y", "width", "height"))
        a = np.deg2rad(float(value.get("rotation") or 0.0))
        x1, y1 = bw * w - 1, bh * h - 1  # the far edges are the last pixels inside, as for a filled box
        corners = np.array([[0, 0], [x1, 0], [x1, y1], [0, y1]])
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return fill_polygon(shape, corners @ rot.T + [x * w, y * h])
    if kind == "brushlabels":
        oh, ow = int(src.get("original_height") or h), int(src.get("original_width") or w)
        if (oh, ow) != (h, w):
            raise DataError(f"{where}: a brush mask of {ow}x{oh} on an image of {w}x{h}")
        try:
            return brush_decode(list(value.get("rle") or []), h, w)
        except ValueError as exc:
            raise DataError(f"{where}: its rle is not Label Studio's brush encoding ({exc})") from None
    raise DataError(f"{where}: result type {kind!r} is not one of {', '.join(sorted(KINDS))}")


def _check_frame(src: dict[str, Any], where: str, h: int, w: int) -> None:
    """A result drawn on a rotated view (``image_rotation``) is stored in the unrotated image's frame: Label
    Studio's editor rotates the points back by the view's rotation and gives percent of the unrotated size
    (``original_width/height``). A quarter-turned result whose recorded size is the image's turned (and the
    image not square) is in the rotated frame instead: refused, since its coordinates would land wrong."""
    turns = float(src.get("image_rotation") or 0) % 180
    oh, ow = src.get("original_height"), src.get("original_width")
    if turns and h != w and (oh, ow) == (w, h):
        raise DataError(f"{where}: image_rotation {src['image_rotation']} with original_width x original_height "
                        f"{ow}x{oh}, the image ({w}x{h}) turned: its coordinates are in the rotated view, not the "
                        "image; undo the rotation in Label Studio and export again")


def _pick(task: dict[str, Any]) -> dict[str, Any] | None:
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    truth = [a for a in anns if a.get("ground_truth") and not a.get("was_cancelled")]
    live = truth or [a for a in anns if not a.get("was_cancelled")]
    if not live:
        return None
    return max(live, key=lambda a: (str(a.get("updated_at") or ""), str(a.get("created_at") or ""),
                                    int(a.get("id") or 0)))


def _image_name(ref: str) -> str:
    """The file name a task's image reference points at (upload, local-files or a plain path)."""
    url = urlparse(ref)
    if "d" in parse_qs(url.query):
        return Path(unquote(parse_qs(url.query)["d"][0])).name
    name = Path(unquote(url.path)).name
    if "/data/upload/" in url.path and "-" in name:
        return name.split("-", 1)[1]  # <8-hex hash>-<name>
    return name


def _find(ref: str, root: Path, index: dict[str, list[Path]], where: str) -> Path:
    plain = root / unquote(urlparse(ref).path).lstrip("/")
    if not ref.startswith(("/data/", "http")) and plain.is_file():
        return confine(plain, root, "image")
    name = _image_name(ref)
    found = index.get(name, [])
    if len(found) > 1:
        raise DataError(f"{where}: image {ref!r} is {name}, and the dataset holds {len(found)} images of that name "
                        f"({', '.join(str(p.relative_to(root)) for p in found[:3])}); keep one")
    if not found:
        raise DataError(f"{where}: image {ref!r} ({name}) not found in {root}; copy the images below the folder")
    return confine(found[0], root, "image")


def _task_image(task: dict[str, Any], where: str) -> str:
    data = task.get("data") or {}
    ref = data.get("image") or next((v for v in data.values() if isinstance(v, str)), None)
    if not ref:
        raise DataError(f"{where}: no image in its data")
    return str(ref)


def open_labelstudio(root: Path, class_names: list[str] | None, progress: bool) -> DefectDataset:
    files = _exports(root)
    if len(files) > 1:
        raise DataError(f"{root}: {len(files)} Label Studio exports ({', '.join(p.name for p in files)}); keep one")
    export = files[0]
    try:
        tasks = json.loads(export.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{export}: not valid JSON ({exc})") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "data" in t for t in tasks):
        raise DataError(f"{export}: not a Label Studio JSON export (a list of tasks with 'data' and 'annotations')")
    index = image_index(root)
    picked, seen, several, rotated = [], {}, 0, 0
    for k, task in enumerate(tasks):
        where = f"{export.name}: task {task.get('id', k)}"
        path = _find(_task_image(task, where), root, index, where)
        if path in seen:
            raise DataError(f"{where}: its image {path.relative_to(root)} is task {seen[path]}'s too")
        seen[path] = task.get("id", k)
        several += len(task.get("annotations") or []) > 1
        ann = _pick(task)
        results = []
        for r in (ann or {}).get("result") or []:
            if r.get("type") not in KINDS:
                continue
            rotated += bool(float(r.get("image_rotation") or 0) % 360)
            labels = (r.get("value") or {}).get(r["type"]) or []
            if len(labels) != 1:
                raise DataError(f"{where}: a {r['type']} result with {len(labels)} labels; one a region")
            results.append((labels[0], r, f"{where}, result {r.get('id', len(results))}"))
        picked.append((path, results))
    names = list(class_names) if class_names else sorted({lab for _, rs in picked for lab, _, _ in rs})
    known = {n: i for i, n in enumerate(names)}
    entries = []
    for path, results in progress_bar(picked, len(picked), "reading Label Studio", progress):
        items = []
        for label, r, where in results:
            if label not in known:
                raise DataError(f"{where}: label {label!r} is not a class ({', '.join(names)}); add it to "
                                "--class-names or fix the label")
            items.append((known[label], r, where))
        entries.append((path.relative_to(root).as_posix(), path, items))
    ds = build_from_items(root, "labelstudio", names, entries, {}, [], progress, ls_mask)
    ds.reason = f"Label Studio export {export.name}: {len(tasks)} task(s); of several annotations, {RULE}" + (
        f" ({several} task(s) had several)" if several else "") + (
        f"; {rotated} result(s) drawn on a rotated view (image_rotation), read in the unrotated image's frame as "
        "Label Studio stores them" if rotated else "")
    return ds


# ---- writing ---------------------------------------------------------------------------------------------
def write_labelstudio(ds: DefectDataset, stage: Path, names: dict[str, str], progress: bool = False) -> None:
    """The images and one export (``labelstudio.json``): each class of an image as one brush result (exact),
    image paths relative to the folder (serve it with Label Studio's local files storage)."""
    tasks = []
    for k, image_id in enumerate(progress_bar(ds.image_ids, len(ds.image_ids), "converting", progress)):
        name = names[image_id]
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        copy_upright(ds.row(image_id)["path"], stage / name)
        mask = ds.load_mask(image_id)
        h, w = mask.shape[:2]
        results = [{"id": f"r{k}-{c}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
                    "original_width": w, "original_height": h, "image_rotation": 0,
                    "value": {"format": "rle", "rle": brush_encode(mask[..., c] > 0), "brushlabels": [n]}}
                   for c, n in enumerate(ds.class_names) if mask[..., c].any()]
        tasks.append({"id": k + 1, "data": {"image": name},
                      "annotations": [{"id": k + 1, "result": results, "was_cancelled": False,
                                       "ground_truth": False}], "predictions": []})
    atomic_json(stage / EXPORT, tasks)


LAYOUT = Layout("labelstudio", lambda req: detect(req.root),
                lambda req: open_labelstudio(req.root, req.class_names, req.progress), rank=1,
                write=write_labelstudio, describe="a Label Studio JSON export (*.json of tasks) beside the images")
