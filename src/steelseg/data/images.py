"""One way in for pixels: reading images, their size, folders of them, and the model's input batch.

Everything that turns a file or an array into what a model sees goes through this module, for
training, evaluation, EDA, ``Predictor``, export and the service alike, so a model can never be
fed pixels prepared differently from those it learnt on. NumPy and Pillow only (no torch).

* :func:`read_image` reads a path or raw bytes as ``uint8``: 16-bit images are scaled
  (65535 -> 255), float images in 0..1 or 0..255 likewise, palette / RGBA / CMYK become RGB.
  The size is checked from the header before any pixel is decoded (:func:`max_pixels`).
* :func:`to_channels` gives gray (H, W) or RGB (H, W, 3) with Pillow's own luma weights, written
  once in NumPy, so an RGB array handed to a gray model gets exactly what training read from disk.
* :func:`to_input` turns a list of same-size arrays into the normalised NCHW float32 batch that a
  model's ``input`` section (:class:`InputSpec`) asks for.

* EXIF orientation is applied, to images and masks alike (as labelling tools and ultralytics do):
  a photo is read as it is shown, where its mask was drawn, and :func:`image_size` gives that size.
* Only JPEG, PNG, BMP and TIFF are read (the extensions :func:`list_images` takes), and one frame:
  a multi-page TIFF or an animated image is refused, never reduced to its first frame.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.errors import DataError
from steelseg.schema import InputSpec

__all__ = [
    "FORMATS",
    "IMAGE_EXTS",
    "InputSpec",
    "image_index",
    "image_size",
    "list_images",
    "max_pixels",
    "normalize",
    "copy_upright",
    "open_upright",
    "read_image",
    "to_channels",
    "to_input",
    "to_uint8",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def image_index(root: Path) -> dict[str, list[Path]]:
    """File name -> every image of that name below ``root`` (hidden folders skipped): how the labelling
    tools' exports, which name images by file name, find them."""
    index: dict[str, list[Path]] = {}
    for p in root.rglob("*"):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file() and not any(q.startswith(".") for q in p.relative_to(root).parts):
            index.setdefault(p.name, []).append(p)
    return index
FORMATS = ("JPEG", "PNG", "BMP", "TIFF")  # what Pillow calls the formats of IMAGE_EXTS
MAX_PIXELS_ENV = "STEELSEG_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 40_000_000  # about 100x a Severstal strip; bounds decoding memory

ImageSource = str | Path | bytes


def max_pixels() -> int:
    """The largest image (width x height) read: ``$STEELSEG_MAX_PIXELS`` or 40 Mpx."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise DataError(f"${MAX_PIXELS_ENV}={raw!r}: expected a pixel count such as 40000000") from None
    if value <= 0:
        raise DataError(f"${MAX_PIXELS_ENV}={raw!r}: must be > 0")
    return value


def _name(src: ImageSource, name: str | None) -> str:
    return name if name is not None else ("<image bytes>" if isinstance(src, bytes) else str(src))


def _open(src: ImageSource, name: str | None = None) -> Any:
    """A Pillow image, not decoded yet; every way a file can be unreadable becomes a DataError."""
    from PIL import Image, UnidentifiedImageError

    label = _name(src, name)
    if isinstance(src, bytes):
        if not src:
            raise DataError(f"{label}: empty file (0 bytes)")
        fp: Any = io.BytesIO(src)
    else:
        path = Path(src)
        if not path.is_file():
            raise DataError(f"{label}: image file not found")
        if path.stat().st_size == 0:
            raise DataError(f"{label}: empty file (0 bytes)")
        fp = path
    try:
        im = Image.open(fp)
    except UnidentifiedImageError:
        raise DataError(f"{label}: not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{label}: refused as a decompression bomb ({exc})") from None
    except OSError as exc:
        raise DataError(f"{label}: unreadable image ({exc})") from None
    if im.format not in FORMATS:
        im.close()
        raise DataError(f"{label}: {im.format or 'unknown'} image; steelseg reads {', '.join(FORMATS)} "
                        f"(the files {', '.join(IMAGE_EXTS)}): convert it to PNG")
    if getattr(im, "n_frames", 1) > 1:
        frames = im.n_frames
        im.close()
        raise DataError(f"{label}: {frames} frames (a multi-page or animated image); steelseg reads one "
                        "image per file: save each frame as its own file")
    return im


EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


def _orientation(im: Any) -> int:
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a damaged EXIF block: the pixels as stored
        return 1


def _shown_size(im: Any) -> tuple[int, int]:
    """(W, H) as the image is shown, after its EXIF orientation."""
    w, h = im.size
    return (h, w) if _orientation(im) in _TRANSPOSED else (w, h)


def _check_size(w: int, h: int, label: str, limit: int | None) -> None:
    limit = max_pixels() if limit is None else limit
    if w * h > limit:
        raise DataError(
            f"{label}: image is {w}x{h} = {w * h / 1e6:.1f} Mpx, above the limit of {limit / 1e6:.1f} Mpx; "
            f"raise it with ${MAX_PIXELS_ENV} if this is intended"
        )
    if w <= 0 or h <= 0:
        raise DataError(f"{label}: image has no pixels ({w}x{h})")


def image_size(src: ImageSource, name: str | None = None, limit: int | None = None) -> tuple[int, int]:
    """(H, W) from the header alone, without decoding the pixels; refuses images over the limit."""
    with _open(src, name) as im:
        w, h = _shown_size(im)
    _check_size(w, h, _name(src, name), limit)
    return h, w


def to_uint8(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """Scale an array of any pixel type to uint8: 16-bit by 255/65535, float from 0..1 (or 0..255)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DataError(f"{name}: integer pixels in {lo}..{hi}; expected 8-bit or 16-bit values (0..65535)")
        v = arr.astype(np.uint32)
        return ((v * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.isfinite(arr).all():
            raise DataError(f"{name}: float pixels include NaN or infinity")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"{name}: float pixels in {lo:g}..{hi:g}; expected 0..1 (or 0..255)")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.rint(arr.astype(np.float64) * scale).astype(np.uint8)
    raise DataError(f"{name}: pixel type {arr.dtype} is not an image type")


_LUMA = np.array([19595, 38470, 7471], np.uint32)  # Pillow's ITU-R 601-2 weights in 1/65536


def to_channels(img: np.ndarray, channels: int, name: str = "image") -> np.ndarray:
    """uint8 (H, W) for ``channels=1`` or (H, W, 3) for 3, from gray, RGB or RGBA arrays.

    Colour to gray uses Pillow's ``convert("L")`` arithmetic exactly, so reading a file as gray and
    converting its RGB array give the same pixels.
    """
    img = to_uint8(img, name)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]  # alpha is not part of the surface
    if img.ndim == 2:
        return img if channels == 1 else np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"{name}: array of shape {img.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if channels == 3:
        return img
    v = img.astype(np.uint32)
    return ((v[..., 0] * _LUMA[0] + v[..., 1] * _LUMA[1] + v[..., 2] * _LUMA[2] + 0x8000) >> 16).astype(np.uint8)


def read_image(src: ImageSource, channels: int | None = 1, name: str | None = None,
               limit: int | None = None) -> np.ndarray:
    """Read a path or raw bytes as uint8: (H, W) for ``channels=1``, (H, W, 3) for 3, or as stored
    (gray or RGB) for ``None``. Raises DataError naming the file for every bad input."""
    label = _name(src, name)
    with _open(src, name) as opened:
        w, h = opened.size
        _check_size(w, h, label, limit)
        im = opened
        try:
            opened.load()
            im = _upright(opened)
            if im.mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif im.mode.startswith(("I", "F")):  # 16-bit and 32-bit gray: scaled, never clipped
                arr = to_uint8(np.asarray(im), label)
            elif im.mode in ("1", "LA") or (im.mode == "P" and _palette_is_gray(im)):
                arr = np.asarray(im.convert("L"))
            else:  # P, RGBA, CMYK, YCbCr, LAB, HSV, ...
                arr = np.asarray(im.convert("RGB"))
        except OSError as exc:  # Pillow raises OSError for truncated data
            raise DataError(f"{label}: unreadable or truncated image ({exc})") from None
        except ValueError as exc:
            raise DataError(f"{label}: cannot convert image mode {im.mode} ({exc})") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return arr if channels is None else to_channels(arr, channels, label)


def _upright(im: Any) -> Any:
    """The image as shown: its EXIF orientation applied (Pillow's ``exif_transpose``), or itself."""
    if _orientation(im) == 1:
        return im
    from PIL import ImageOps

    return ImageOps.exif_transpose(im)


def copy_upright(src: str | Path, dst: str | Path) -> bool:
    """Copy an image file so that it means one thing to every reader: its bytes as they are, or, when it carries
    an EXIF orientation other than 1, the displayed pixels without the tag (PNG, BMP and TIFF losslessly; a JPEG
    re-encoded at quality 95 with full chroma). Masks follow the displayed view, so a reader that ignores the tag
    (Pillow's default, many notebooks) would otherwise get masks that miss. True when it was rewritten."""
    import shutil

    with _open(src) as im:
        turned = _orientation(im) != 1
        if turned:
            im.load()
            fmt = im.format
            up = _upright(im)
            if up.mode not in ("L", "RGB", "I;16", "I", "F") and fmt == "JPEG":
                up = up.convert("RGB")
            kw = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
            up.save(dst, format=fmt, **kw)  # no exif= argument: the orientation tag is not written
    if not turned:
        shutil.copyfile(src, dst)
    return turned


def open_upright(src: ImageSource, name: str | None = None) -> Any:
    """A decoded Pillow image as shown (EXIF orientation applied), for readers that need the raw mode
    (index masks); the same rules as :func:`read_image`."""
    with _open(src, name) as im:
        im.load()
        return _upright(im).copy()


def _palette_is_gray(im: Any) -> bool:
    pal = im.getpalette()
    if not pal:
        return True
    rgb = np.asarray(pal, np.uint8).reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def normalize(img: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One uint8 image -> float32 (C, H, W) as ``spec`` says, through a 256-entry table per channel
    (the same numbers as ``(x * scale - mean) / std``, computed once per level)."""
    img = to_channels(img, spec.channels)
    lut = spec.lut()
    if spec.channels == 1:
        return lut[0][img][None]
    return np.stack([lut[c][img[..., c]] for c in range(3)])


def to_input(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Same-size images of any mode -> the model's normalised (N, C, H, W) float32 batch."""
    if not len(images):
        raise DataError("no images to prepare")
    shapes = {img.shape[:2] for img in images}
    if len(shapes) != 1:
        raise DataError(f"a batch needs images of one size, got {sorted(shapes)}")
    return np.stack([normalize(img, spec) for img in images])


def list_images(folder: str | Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under ``folder``, sorted; hidden files are left out.

    Without ``recursive`` files in subfolders are not read but are listed among the others, so a
    caller can say what it skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir())
                   if not any(part.startswith(".") for part in p.relative_to(folder).parts))
    images, others = [], []
    for p in files:
        if p.is_dir():
            if not recursive:
                others.append(p)
        elif p.suffix.lower() in IMAGE_EXTS:
            images.append(p)
        else:
            others.append(p)
    return images, others
