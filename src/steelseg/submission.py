"""Kaggle ``submission.csv``: ``ImageId,EncodedPixels,ClassId``, one row per image and class."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from steelseg import rle

__all__ = ["SubmissionWriter", "read_submission"]


class SubmissionWriter:
    """Streams rows to ``<path>.partial`` and renames on ``close``: a killed run leaves no half file."""

    def __init__(self, path: str | Path, class_ids: Iterable[int]) -> None:
        self.path = Path(path)
        self.class_ids = list(class_ids)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._fh = open(self._tmp, "w", newline="")
        self._w = csv.writer(self._fh, lineterminator="\n")
        self._w.writerow(["ImageId", "EncodedPixels", "ClassId"])
        self.rows = 0

    def add(self, image_id: str, masks: np.ndarray) -> None:
        """Add one image's (H, W, C) masks."""
        for c, class_id in enumerate(self.class_ids):
            self._w.writerow([image_id, rle.encode(masks[..., c]), class_id])
            self.rows += 1

    def close(self) -> Path:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> SubmissionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_submission(path: str | Path) -> list[tuple[str, str, int]]:
    with open(path, newline="") as fh:
        return [(r["ImageId"], r["EncodedPixels"], int(r["ClassId"])) for r in csv.DictReader(fh)]
