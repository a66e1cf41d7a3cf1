"""Shapes <-> masks for the labelling tools' layouts (YOLO segmentation, labelme, ...): polygons, lines and
boxes rasterised into bool masks, and masks traced back into polygons. NumPy and OpenCV only.

Rasterising follows the tools: a polygon covers the pixels whose centres it holds (OpenCV's ``fillPoly`` on
vertices rounded to the pixel grid); a line has no area, so it is drawn ``width`` pixels wide. Tracing takes
each connected component's outer contour (OpenCV's ``findContours``); a component with a hole comes back
filled, which is the error a polygon format cannot avoid (measured by the converters' round-trip tests)."""

from __future__ import annotations

import numpy as np

__all__ = ["LINE_WIDTH", "components", "fill_polygon", "mask_polygons", "stroke"]

LINE_WIDTH = 5  # pixels a line or point shape (no area of its own) is drawn wide by default: option line_width


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64)).astype(np.int32).reshape(-1, 1, 2)


def fill_polygon(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """bool (H, W): the polygon of (N, 2) x, y pixel coordinates, N >= 3."""
    import cv2

    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [_pts(points)], 1)
    return m.astype(bool)


def stroke(shape: tuple[int, int], points: np.ndarray, width: int, closed: bool = False) -> np.ndarray:
    """bool (H, W): a line through (N, 2) x, y points, ``width`` pixels wide (a point: a disc)."""
    import cv2

    m = np.zeros(shape, np.uint8)
    pts = _pts(points)
    if len(pts) == 1:
        cv2.circle(m, tuple(int(v) for v in pts[0, 0]), max(1, width // 2), 1, -1)
    else:
        cv2.polylines(m, [pts], closed, 1, max(1, int(width)))
    return m.astype(bool)


def mask_polygons(mask: np.ndarray, min_points: int = 3) -> list[np.ndarray]:
    """The outer contour of each connected component of a bool (H, W) mask, as (N, 2) float x, y points
    (pixel centres). Components too small for a polygon (a line of pixels) get their box corners."""
    import cv2

    m = np.ascontiguousarray(mask, np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64)
        if len(pts) < min_points:  # a single pixel or a straight run: its box, so it keeps an area
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
        out.append(pts)
    return out


def components(mask: np.ndarray) -> list[tuple[np.ndarray | None, tuple[int, int, int, int], np.ndarray]]:
    """Each 8-connected component of a bool (H, W) mask as (polygon, box, piece) for the polygon formats'
    writers: ``polygon`` its outer contour, or None where filling that contour would add more than
    max(2 px, 2%) (a hole: write ``piece``, the component inside its ``box`` x0, y0, x1, y1, as a mask)."""
    import cv2

    out = []
    n, labels = cv2.connectedComponents(np.ascontiguousarray(mask, np.uint8), connectivity=8)
    for i in range(1, n):
        comp = labels == i
        poly = mask_polygons(comp)[0]
        ys, xs = np.nonzero(comp)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        holed = (fill_polygon(comp.shape, poly) & ~comp).sum() > max(2, 0.02 * comp.sum())
        out.append((None if holed else poly, (x0, y0, x1, y1), comp[y0:y1 + 1, x0:x1 + 1]))
    return out
