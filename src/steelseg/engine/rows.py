"""The rows an archive job writes, one per image, the same from every engine: image id, path, size, per class
``found_<c>``, ``area_<c>``, ``score_<c>`` (the gate's probability where the bundle gates, else the largest pixel
probability) and ``rle_<c>`` (Kaggle RLE, 1-indexed column-major), the bundle id, the worker that predicted it,
and ``error`` (empty, or why the image could not be predicted: a bad image is a row, never a failed job)."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Sequence
from typing import Any

import numpy as np

from steelseg.data.images import read_image
from steelseg.engine.source import Item, read_bytes
from steelseg.inference.found import per_class, too_small

__all__ = ["columns", "predict_items", "worker_id"]

_LOADS = itertools.count(1)


def worker_id() -> str:
    """host:pid/k for the k-th bundle loaded in this process: called once per load, so the rows show how many
    times the bundle was loaded (a pool loads it once per worker)."""
    return f"{socket.gethostname()}:{os.getpid()}/{next(_LOADS)}"


def columns(class_names: Sequence[str]) -> list[str]:
    cols = ["image_id", "path", "height", "width"]
    for c in class_names:
        cols += [f"found_{c}", f"area_{c}", f"score_{c}", f"rle_{c}"]
    return cols + ["bundle", "worker", "error"]


def _empty_row(item: Item, names: Sequence[str], bundle: str, worker: str, error: str) -> dict[str, Any]:
    row: dict[str, Any] = {"image_id": item.image_id, "path": item.uri, "height": 0, "width": 0}
    for c in names:
        row.update({f"found_{c}": False, f"area_{c}": 0, f"score_{c}": 0.0, f"rle_{c}": ""})
    row.update(bundle=bundle, worker=worker, error=error)
    return row


def _decode(item: Item) -> np.ndarray:
    img = read_image(read_bytes(item.uri), None, name=item.image_id)
    why = too_small(*img.shape[:2])
    if why:
        raise ValueError(why)
    return img


def predict_items(predictor: Any, items: Sequence[Item], bundle: str, worker: str) -> list[dict[str, Any]]:
    """Decode and predict ``items`` with ``predictor`` (a :class:`steelseg.inference.predictor.Predictor`); one row
    each, in order. An image that cannot be read is an error row with the reader's message."""
    names = predictor.class_names
    rows: list[dict[str, Any] | None] = [None] * len(items)
    good, images = [], []
    for i, item in enumerate(items):
        try:
            images.append(_decode(item))
            good.append(i)
        except Exception as exc:  # noqa: BLE001 - every reader error becomes the row's error text
            rows[i] = _empty_row(item, names, bundle, worker, f"{type(exc).__name__}: {exc}")
    for i, img, pred in zip(good, images, predictor.predict(images) if images else []):
        row = _empty_row(items[i], names, bundle, worker, "")
        row.update(height=int(img.shape[0]), width=int(img.shape[1]))
        for name, f in per_class(pred, names).items():
            score = f["max_probability"] if f["gate"] is None else f["gate"]
            row.update({f"found_{name}": f["found"], f"area_{name}": f["area"], f"score_{name}": score,
                        f"rle_{name}": f["rle"]})
        rows[i] = row
    return [r for r in rows if r is not None]
