"""Kaggle ``submission.csv``: ``ImageId,EncodedPixels,ClassId``, one row per image and class."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from steelseg.data import rle
from steelseg.fsutil import atomic_write

__all__ = ["SubmissionWriter", "read_submission"]


class SubmissionWriter:
    """Streams rows through :func:`steelseg.fsutil.atomic_write`: the file appears complete on
    ``close`` or not at all (a killed run leaves no half file)."""

    def __init__(self, path: str | Path, class_ids: Iterable[int]) -> None:
        self.path = Path(path)
        self.class_ids = list(class_ids)
        self._ctx = atomic_write(self.path, "w", newline="")
        self._fh = self._ctx.__enter__()
        self._w = csv.writer(self._fh, lineterminator="\n")
        self._w.writerow(["ImageId", "EncodedPixels", "ClassId"])
        self.rows = 0

    def add(self, image_id: str, masks: np.ndarray) -> None:
        """Add one image's (H, W, C) masks."""
        for c, class_id in enumerate(self.class_ids):
            self._w.writerow([image_id, rle.encode(masks[..., c]), class_id])
            self.rows += 1

    def close(self) -> Path:
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        err = RuntimeError("submission aborted")
        try:
            self._ctx.__exit__(RuntimeError, err, None)
        except RuntimeError:
            pass

    def __enter__(self) -> SubmissionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_submission(path: str | Path) -> list[tuple[str, str, int]]:
    with open(path, newline="") as fh:
        rle.allow_long_csv_fields()
        return [(r["ImageId"], r["EncodedPixels"], int(r["ClassId"])) for r in csv.DictReader(fh)]
