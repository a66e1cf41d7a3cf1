"""Padding to the segmenters' stride, in NumPy, exactly as ``steelseg.models.factory.Segmenter`` pads in
PyTorch: the ONNX and OpenVINO runners pad outside their graphs with it."""

from __future__ import annotations

import numpy as np

__all__ = ["STRIDE", "pad_to_stride"]

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
