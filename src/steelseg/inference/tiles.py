"""Large images in overlapping tiles: memory stays that of one tile, whatever the image size.

Segmenter probabilities are blended with weights that ramp linearly over the overlap (no seams);
classifier probabilities are the maximum over tiles (a defect anywhere counts). NumPy only: the
models are given as ``run(crops) -> probabilities`` callables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["TileGrid", "tile_grid"]

Run = Callable[[Sequence[np.ndarray]], np.ndarray]


def _starts(length: int, size: int, overlap: int) -> list[int]:
    """Window starts covering 0..length with windows of ``size`` overlapping by at least ``overlap``."""
    if length <= size:
        return [0]
    step = max(1, size - overlap)
    starts = list(range(0, length - size, step))
    return starts + [length - size]


def _ramp(size: int, overlap: int) -> np.ndarray:
    """1 inside, rising linearly over ``overlap`` pixels at both ends (never 0: borders need weight)."""
    i = np.arange(size, dtype=np.float32)
    edge = np.minimum(i + 1, size - i)
    return np.clip(edge / max(overlap, 1), 1.0 / max(overlap, 1), 1.0)


class TileGrid:
    """The windows of one image: ``tile`` x ``tile`` (clipped to the image), overlapping by ``overlap``."""

    def __init__(self, shape: tuple[int, int], tile: int, overlap: int, batch_size: int) -> None:
        self.h, self.w = shape
        self.overlap = max(0, min(overlap, tile // 2))
        self.th, self.tw = min(tile, self.h), min(tile, self.w)
        self.boxes = [(y, x) for y in _starts(self.h, self.th, self.overlap)
                      for x in _starts(self.w, self.tw, self.overlap)]
        self.batch_size = batch_size

    def _batches(self, image: np.ndarray) -> list[tuple[list[tuple[int, int]], list[np.ndarray]]]:
        out = []
        for i in range(0, len(self.boxes), self.batch_size):
            chunk = self.boxes[i:i + self.batch_size]
            out.append((chunk, [image[y:y + self.th, x:x + self.tw] for y, x in chunk]))
        return out

    def max_over_tiles(self, image: np.ndarray, run: Run) -> np.ndarray:
        """(K,) classifier probabilities: the maximum of ``run`` over every tile."""
        g = None
        for _, crops in self._batches(image):
            part = run(crops).max(axis=0)
            g = part if g is None else np.maximum(g, part)
        assert g is not None
        return g

    def blend(self, image: np.ndarray, run: Run, k: int) -> np.ndarray:
        """(K, H, W) segmenter probabilities of every tile, blended with linear ramps over the overlaps."""
        probs = np.zeros((k, self.h, self.w), np.float32)
        weight = np.zeros((self.h, self.w), np.float32)
        ramp = np.outer(_ramp(self.th, self.overlap), _ramp(self.tw, self.overlap)).astype(np.float32)
        for chunk, crops in self._batches(image):
            for (y, x), p in zip(chunk, run(crops)):
                probs[:, y:y + self.th, x:x + self.tw] += p * ramp
                weight[y:y + self.th, x:x + self.tw] += ramp
        return probs / weight


def tile_grid(shape: tuple[int, int], tile: int | None, overlap: int, batch_size: int) -> TileGrid:
    return TileGrid(shape, int(tile or max(shape)), overlap, batch_size)
