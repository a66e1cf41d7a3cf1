"""Feedback from the review page into a training folder in the Kaggle layout.

For each reviewed image a person says, per class, ``right`` (the predicted mask is a defect of this
class), ``wrong`` (there is no such defect) or ``missed`` (a defect of this class is there but was
not found). Images whose every class is settled (right / wrong, or absent and not missed) go to::

    DIR/train_images/<sha>.<ext>    the uploaded bytes, unchanged
    DIR/train.csv                   ImageId,ClassId,EncodedPixels rows of the accepted masks
    DIR/classes.txt                 the bundle's class names

ready for ``steelseg info DIR`` and ``steelseg train --data DIR``. An image with a ``missed`` class
has no mask to learn from: it goes to ``DIR/needs_masks/`` with its verdicts in a JSON file beside
it, never into train.csv (it would teach the model that the defect is absent).

Writes are crash-safe: the image is written under a hidden temporary name, train.csv is replaced
atomically with its new rows, and only then does the image get its name. A crash leaves either no
trace, or a row whose image is missing (``steelseg info`` then names it), never a half row or an
image silently labelled defect-free. A lock file serialises the workers of one service.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data import rle
from steelseg.errors import DataError
from steelseg.fsutil import atomic_json, atomic_text, atomic_write, check_writable_dir

__all__ = ["FeedbackWriter", "VERDICTS"]

VERDICTS = ("right", "wrong", "missed", "absent")
EXTS = {b"\xff\xd8": ".jpg", b"\x89P": ".png", b"BM": ".bmp", b"II": ".tif", b"MM": ".tif"}


class FeedbackWriter:
    def __init__(self, root: Path, class_names: list[str]) -> None:
        self.root = check_writable_dir(root)
        self.class_names = list(class_names)
        (self.root / "train_images").mkdir(exist_ok=True)
        names = self.root / "classes.txt"
        if names.is_file():
            have = [ln.strip() for ln in names.read_text().splitlines() if ln.strip()]
            if have != self.class_names:
                raise DataError(f"{names}: classes {have} differ from the bundle's {self.class_names}; "
                                "use another --feedback folder for this bundle")
        else:
            atomic_text(names, "\n".join(self.class_names) + "\n")
        csv_path = self.root / "train.csv"
        if not csv_path.is_file():
            with atomic_write(csv_path, "w", newline="") as fh:
                fh.write("ImageId,ClassId,EncodedPixels\n")

    def parse(self, raw: str) -> dict[str, str]:
        """``{"class name": "right" | "wrong" | "missed" | "absent"}`` for every class, checked."""
        try:
            verdicts = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"verdicts: not valid JSON ({exc.msg})") from None
        if not isinstance(verdicts, dict):
            raise DataError("verdicts: expected an object {class name: verdict}")
        unknown = sorted(set(verdicts) - set(self.class_names))
        if unknown:
            raise DataError(f"verdicts: unknown class(es) {unknown}; classes are {self.class_names}")
        missing = [n for n in self.class_names if n not in verdicts]
        if missing:
            raise DataError(f"verdicts: no verdict for {missing}; give one for every class")
        bad = {k: v for k, v in verdicts.items() if v not in VERDICTS}
        if bad:
            raise DataError(f"verdicts: {bad}; each must be one of {', '.join(VERDICTS)}")
        return {str(k): str(v) for k, v in verdicts.items()}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def add(self, data: bytes, name: str, masks: np.ndarray, verdicts: dict[str, str]) -> dict[str, Any]:
        """Store one reviewed image; returns where it went and what was recorded."""
        for c, cname in enumerate(self.class_names):
            present = bool(masks[..., c].any())
            v = verdicts[cname]
            if present and v in ("missed", "absent"):
                raise DataError(f"verdicts: {cname} was predicted; say right or wrong for it")
            if not present and v in ("right", "wrong"):
                raise DataError(f"verdicts: {cname} was not predicted; say absent or missed for it")
        digest = hashlib.sha256(data).hexdigest()[:16]
        image_id = digest + EXTS.get(data[:2], Path(name).suffix.lower() or ".png")
        with self._locked():
            if any(v == "missed" for v in verdicts.values()):
                folder = check_writable_dir(self.root / "needs_masks")
                with atomic_write(folder / image_id, "wb") as fh:
                    fh.write(data)
                atomic_json(folder / (image_id + ".json"), {"source_name": name, "verdicts": verdicts})
                return {"stored": "needs_masks", "image_id": image_id,
                        "reason": "a missed class has no mask yet: draw it, then move the image to train"}
            rows = [(image_id, c + 1, rle.encode(masks[..., c])) for c, cname in enumerate(self.class_names)
                    if verdicts[cname] == "right"]
            csv_path = self.root / "train.csv"
            with open(csv_path, newline="", encoding="utf-8") as fh:
                rle.allow_long_csv_fields()
                existing = [r for r in csv.reader(fh)][1:]
            if any(r and r[0] == image_id for r in existing) or (self.root / "train_images" / image_id).exists():
                return {"stored": "duplicate", "image_id": image_id, "rows": 0}
            img_dir = self.root / "train_images"
            tmp = img_dir / f".{image_id}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            with atomic_write(csv_path, "w", newline="") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(["ImageId", "ClassId", "EncodedPixels"])
                w.writerows(existing)
                w.writerows(rows)
            os.replace(tmp, img_dir / image_id)
        return {"stored": "train", "image_id": image_id, "rows": len(rows),
                "classes": [cname for cname in self.class_names if verdicts[cname] == "right"]}
