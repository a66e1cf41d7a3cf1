"""Padding to the segmenters' stride, in NumPy, exactly as ``steelseg.models.factory.Segmenter`` pads in
PyTorch: the ONNX and OpenVINO runners pad outside their graphs with it."""

from __future__ import annotations

import numpy as np

from steelseg.errors import DataError

__all__ = ["STRIDE", "check_inner_pad", "pad_to_stride"]

STRIDE = 32  # segmenters are padded to a multiple of this (steelseg.models.factory.Segmenter does the same)


def pad_to_stride(x: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """Pad (N, C, H, W) at the bottom and right to a multiple of ``stride``, as the PyTorch
    ``Segmenter`` does: mirrored where the image is larger than the pad, else repeated edges."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)


def check_inner_pad(h: int, w: int, scale: float, source: object, runtime: str) -> None:
    """A graph that resizes and pads inside froze PyTorch's mirrored padding when it was traced;
    mirroring needs the resized image to be larger than the pad, which the runtime would refuse with
    its own error. Say what the image needs instead (``source``: the model folder, for the message)."""
    sh, sw = int(h * scale), int(w * scale)  # floor, as the graph's Resize computes it
    if any(0 < (-side) % STRIDE >= side for side in (sh, sw)):
        need = next(n for n in range(1, 10 * STRIDE) if (-int(n * scale)) % STRIDE < int(n * scale))
        raise DataError(f"{source}: a {w}x{h} image is too small for this {runtime} model (it resizes by "
                        f"{scale:g} and mirrors the edges to a multiple of {STRIDE} inside the graph): "
                        f"give it images of at least {need} px per side, or use --backend torch")
