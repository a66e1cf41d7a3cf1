"""The ``cvat`` layout: CVAT for images 1.1 (``annotations.xml`` beside the images), reader and writer.

One ``<image name=... width=... height=...>`` element an image (its ``name`` a path below the dataset folder,
sub-folders kept; an image of that name elsewhere in the dataset when the path does not resolve), holding its
shapes: ``polygon``, ``box``, ``ellipse`` (``cx cy rx ry``, ``rotation`` in degrees), ``polyline`` and
``points`` (no area: drawn ``line_width`` pixels wide, :data:`LINE_WIDTH` by default, as for labelme; ``info``
says so), and ``mask`` (CVAT's run-length encoding over its box ``left top width height``: counts of 0s and 1s
alternating, starting with 0s, row by row). ``z_order``: where shapes of different classes overlap, the one
with the higher ``z_order`` owns the pixels, as in CVAT's own mask export; shapes of equal ``z_order`` may
overlap (one pixel, two classes, as in Severstal). An ``<image>`` with no shape is defect-free. Class names:
the ``<labels>`` of the task (in their order), else the shapes' labels sorted, or ``--class-names``.
The XML is parsed with ``defusedxml`` (no entity expansion, no external entities); nothing outside the
dataset folder is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data.images import copy_upright, image_index
from steelseg.data.items import build_from_items
from steelseg.data.registry import Layout
from steelseg.data.shapes import LINE_WIDTH, components, fill_polygon, stroke
from steelseg.data.table import DefectDataset, progress_bar
from steelseg.errors import DataError
from steelseg.fsutil import atomic_write, confine

__all__ = ["FILE", "LINE_WIDTH", "cvat_mask", "cvat_rle_decode", "cvat_rle_encode", "detect", "open_cvat",
           "write_cvat"]

FILE = "annotations.xml"
AREA_SHAPES = ("polygon", "box", "ellipse", "mask")
LINE_SHAPES = ("polyline", "points")


def _parse(path: Path) -> Any:
    try:
        from defusedxml import ElementTree
    except ImportError as exc:  # a core dependency; a broken install says so
        raise DataError(f"{path}: reading CVAT XML needs defusedxml (pip install defusedxml): {exc}") from None
    from defusedxml import DefusedXmlException

    try:
        return ElementTree.parse(str(path)).getroot()
    except DefusedXmlException as exc:
        raise DataError(f"{path}: refused, the XML declares entities or a DTD ({type(exc).__name__}); a CVAT "
                        "export has none") from None
    except Exception as exc:  # ParseError and friends
        raise DataError(f"{path}: not valid XML ({exc})") from None


def detect(root: Path) -> bool:
    path = root / FILE
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(4096)
    return b"<annotations" in head


def cvat_rle_decode(counts: list[int], width: int, height: int) -> np.ndarray:
    """CVAT's mask RLE -> bool (height, width): alternating runs of 0 and 1, starting with 0, row-major."""
    flat = np.zeros(width * height, bool)
    pos, value = 0, False
    for n in counts:
        if n < 0 or pos + n > flat.size:
            raise ValueError(f"runs add up to more than the box's {width}x{height} pixels")
        flat[pos:pos + n] = value
        pos, value = pos + n, not value
    return flat.reshape(height, width)


def cvat_rle_encode(mask: np.ndarray) -> list[int]:
    """bool (h, w) -> CVAT's mask RLE (the inverse of :func:`cvat_rle_decode`)."""
    flat = np.asarray(mask, bool).ravel()
    change = np.flatnonzero(np.concatenate([[False], flat])[1:] != np.concatenate([[False], flat])[:-1])
    return [int(v) for v in np.diff(np.concatenate([[0], change, [flat.size]]))]


def _f(el: Any, key: str, where: str) -> float:
    try:
        return float(el.get(key))
    except (TypeError, ValueError):
        raise DataError(f"{where}: attribute {key}={el.get(key)!r} is not a number") from None


def _points(el: Any, where: str) -> np.ndarray:
    try:
        pts = [tuple(float(v) for v in p.split(",")) for p in (el.get("points") or "").split(";") if p.strip()]
        return np.asarray(pts, np.float64).reshape(-1, 2)
    except ValueError:
        raise DataError(f"{where}: points {el.get('points')!r} are not 'x,y;x,y;...'") from None


def _shape_mask(attrs: dict[str, str], width: int, where: str, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    kind = attrs["_kind"]
    el = attrs  # dict.get works like Element.get
    if kind == "polygon":
        pts = _points(el, where)
        if len(pts) < 3:
            raise DataError(f"{where}: a polygon with {len(pts)} point(s); it needs 3 or more (or make it a polyline)")
        return fill_polygon(shape, pts)
    if kind == "box":
        x0, y0, x1, y1 = (_f(el, k, where) for k in ("xtl", "ytl", "xbr", "ybr"))
        return fill_polygon(shape, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
    if kind == "ellipse":
        m = np.zeros(shape, np.uint8)
        cx, cy, rx, ry = (_f(el, k, where) for k in ("cx", "cy", "rx", "ry"))
        angle = float(el.get("rotation") or 0.0)
        cv2.ellipse(m, (int(round(cx)), int(round(cy))), (int(round(rx)), int(round(ry))), angle, 0, 360, 1, -1)
        return m.astype(bool)
    if kind in LINE_SHAPES:
        return stroke(shape, _points(el, where), width)
    if kind == "mask":
        left, top, w, h = (int(round(_f(el, k, where))) for k in ("left", "top", "width", "height"))
        try:
            counts = [int(v) for v in (el.get("rle") or "").replace(" ", "").split(",") if v != ""]
            piece = cvat_rle_decode(counts, w, h)
        except ValueError as exc:
            raise DataError(f"{where}: its rle is not CVAT's mask encoding ({exc})") from None
        out = np.zeros(shape, bool)
        y1, x1 = min(shape[0], top + h), min(shape[1], left + w)
        out[max(top, 0):y1, max(left, 0):x1] = piece[max(0, -top):y1 - top, max(0, -left):x1 - left]
        return out
    raise DataError(f"{where}: <{kind}> is not one of {', '.join(AREA_SHAPES + LINE_SHAPES)}")


def cvat_mask(src: tuple[dict[str, str], int, list[tuple[dict[str, str], str]]], where: str,
              shape: tuple[int, int]) -> np.ndarray:
    """The layout's decoder: one CVAT shape, less the pixels of other classes' shapes drawn above it."""
    attrs, width, above = src
    m = _shape_mask(attrs, width, where, shape)
    for other, other_where in above:
        m &= ~_shape_mask(other, width, other_where, shape)
    return m


def _image_path(name: str, root: Path, xml: Path, index: dict[str, list[Path]]) -> Path:
    """The image an ``<image name=...>`` names: the path below the folder, else the one image of that file
    name (``index``, filled on first need: most exports resolve without it)."""
    cand = root / name
    if name and cand.is_file():
        return confine(cand, root, "image")
    if not index:
        index.update(image_index(root))
    found = index.get(Path(name).name, [])
    if len(found) == 1:
        return confine(found[0], root, "image")
    if found:
        raise DataError(f"{xml}: <image name={name!r}> does not resolve and {len(found)} images have its file name; "
                        "fix the name")
    raise DataError(f"{xml}: <image name={name!r}>: no such image in {root} (export with images, or copy them "
                    "beside annotations.xml)")


def open_cvat(root: Path, class_names: list[str] | None, progress: bool, line_width: int = LINE_WIDTH
              ) -> DefectDataset:
    xml = root / FILE
    doc = _parse(xml)
    if doc.tag != "annotations":
        raise DataError(f"{xml}: the root element is <{doc.tag}>, not CVAT's <annotations>")
    images = doc.findall("image")
    if not images:
        raise DataError(f"{xml}: no <image> element; export 'CVAT for images 1.1' (not 'CVAT for video')")
    task_labels = [el.findtext("name") for el in doc.iter("label") if el.findtext("name")]
    shapes_of: list[tuple[Any, list[dict[str, str]]]] = []
    lines = 0
    for el in images:
        shapes = []
        for k, s in enumerate(list(el)):
            if s.tag == "tag":  # an image-level tag carries no pixels
                continue
            attrs = {**s.attrib, "_kind": s.tag, "_where": f"{xml}: image {el.get('name')!r}, <{s.tag}> {k}"}
            if not attrs.get("label"):
                raise DataError(f"{attrs['_where']}: no label")
            lines += s.tag in LINE_SHAPES
            shapes.append(attrs)
        shapes_of.append((el, shapes))
    names = list(class_names) if class_names else (
        list(dict.fromkeys(task_labels)) or sorted({a["label"] for _, sh in shapes_of for a in sh}))
    known = {n: i for i, n in enumerate(names)}
    entries, seen, index = [], set(), {}
    for el, shapes in progress_bar(shapes_of, len(shapes_of), "reading CVAT", progress):
        name = (el.get("name") or "").replace("\\", "/")
        path = _image_path(name, root, xml, index)
        if path in seen:
            raise DataError(f"{xml}: image {name!r} appears twice")
        seen.add(path)
        items = []
        for a in shapes:
            if a["label"] not in known:
                raise DataError(f"{a['_where']}: label {a['label']!r} is not a class ({', '.join(names)}); add it to "
                                "--class-names or fix the label")
            z = int(float(a.get("z_order") or 0))
            above = [(b, b["_where"]) for b in shapes if b["label"] != a["label"]
                     and int(float(b.get("z_order") or 0)) > z]
            items.append((known[a["label"]], (a, line_width, above), a["_where"]))
        entries.append((path.relative_to(root).as_posix(), path, items))
    ds = build_from_items(root, "cvat", names, entries, {}, [], progress, cvat_mask)
    notes = [f"CVAT for images: {len(images)} image(s) in {FILE}"]
    if lines:
        notes.append(f"{lines} polyline / points shape(s) drawn {line_width} px wide")
    ds.reason = "; ".join(notes)
    return ds


def _shapes_xml(label: str, mask: np.ndarray) -> list[str]:
    """A component as a polygon, or (one with a hole) as a CVAT mask over its box."""
    from xml.sax.saxutils import quoteattr

    out = []
    for poly, (x0, y0, x1, y1), piece in components(mask):
        if poly is not None:
            pts = ";".join(f"{x:.2f},{y:.2f}" for x, y in poly)
            out.append(f'    <polygon label={quoteattr(label)} source="steelseg" occluded="0" points="{pts}" '
                       'z_order="0"/>')
            continue
        rle = ", ".join(str(v) for v in cvat_rle_encode(piece))
        out.append(f'    <mask label={quoteattr(label)} source="steelseg" occluded="0" rle="{rle}" left="{x0}" '
                   f'top="{y0}" width="{x1 - x0 + 1}" height="{y1 - y0 + 1}" z_order="0"/>')
    return out


def write_cvat(ds: DefectDataset, stage: Path, names: dict[str, str], progress: bool = False) -> None:
    """``annotations.xml`` (CVAT for images 1.1) and the images beside it: a polygon a connected component of
    each class, a mask where a component has a hole."""
    from xml.sax.saxutils import escape, quoteattr

    labels = "".join(f"<label><name>{escape(n)}</name><type>any</type><attributes></attributes></label>"
                     for n in ds.class_names)
    lines = ['<?xml version="1.0" encoding="utf-8"?>', "<annotations>", "  <version>1.1</version>",
             f"  <meta><task><name>steelseg</name><labels>{labels}</labels></task></meta>"]
    for k, image_id in enumerate(progress_bar(ds.image_ids, len(ds.image_ids), "converting", progress)):
        name = names[image_id]
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        copy_upright(ds.row(image_id)["path"], stage / name)
        mask = ds.load_mask(image_id)
        lines.append(f'  <image id="{k}" name={quoteattr(name)} width="{mask.shape[1]}" height="{mask.shape[0]}">')
        lines += [s for c, n in enumerate(ds.class_names) for s in _shapes_xml(n, mask[..., c] > 0)]
        lines.append("  </image>")
    lines.append("</annotations>")
    with atomic_write(stage / FILE, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


LAYOUT = Layout("cvat", lambda req: detect(req.root), 
                lambda req: open_cvat(req.root, req.class_names, req.progress, req.line_width or LINE_WIDTH),
                rank=1, write=write_cvat, describe=f"a CVAT for images 1.1 export ({FILE} beside the images)")
