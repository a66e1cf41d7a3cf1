"""Drawing masks over images in fixed, distinguishable colours (overlays, galleries)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from steelseg.errors import DataError

__all__ = ["CLASS_COLORS", "caption", "color_of", "imwrite", "overlay", "side_by_side", "write_rgb"]

# RGB, colour-blind friendly (Okabe-Ito), one per class in order.
CLASS_COLORS = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (213, 94, 0), (204, 121, 167),
                (0, 114, 178), (240, 228, 66), (120, 120, 120)]


def color_of(c: int) -> tuple[int, int, int]:
    return CLASS_COLORS[c % len(CLASS_COLORS)]


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """RGB uint8 image with each class mask (H, W, C) filled translucently and outlined."""
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image.copy()
    out = rgb.astype(np.float32)
    for c in range(masks.shape[-1]):
        m = masks[..., c] > 0
        if not m.any():
            continue
        col = np.array(color_of(c), np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * col
    out = out.astype(np.uint8)
    for c in range(masks.shape[-1]):
        m = np.ascontiguousarray((masks[..., c] > 0).astype(np.uint8))
        if m.any():
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, color_of(c), 1)
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Stack two RGB images vertically (wide strips read best one above the other)."""
    sep = np.full((gap, left.shape[1], 3), 255, np.uint8)
    return np.vstack([left, sep, right])


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """Write a short label in the top-left corner (white on a dark box), in place; returns it."""
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    cv2.rectangle(image, (0, 0), (w + 8, h + base + 6), (0, 0, 0), -1)
    cv2.putText(image, text, (4, h + 3), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return image


def imwrite(path: str | Path, image: np.ndarray, params: tuple[int, ...] | list[int] = ()) -> Path:
    """OpenCV's ``imwrite`` (BGR or gray), checked: it returns False instead of raising on a full disk or a
    name the file system refuses, which would leave the file silently missing."""
    try:
        ok = cv2.imwrite(str(path), image, list(params))
    except cv2.error as exc:
        raise DataError(f"{path}: could not write the image ({str(exc).strip().splitlines()[-1]})") from None
    if not ok:
        raise DataError(f"{path}: could not write the image (disk full, no permission, or a name too long for "
                        "the file system?)")
    return Path(path)


def write_rgb(path: str | Path, rgb: np.ndarray) -> Path:
    """An RGB uint8 picture as a PNG (or any extension OpenCV writes), checked like :func:`imwrite`."""
    return imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

