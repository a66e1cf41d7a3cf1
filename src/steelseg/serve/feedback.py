"""Feedback from the review page into a training folder in the Kaggle layout.

For each reviewed image a person says, per class, ``right`` (the predicted mask is a defect of this
class), ``wrong`` (there is no such defect), ``corrected`` (the predicted mask, edited on the page),
``missed`` (a defect of this class is there but was not found) or ``absent``. With the page's masks
(Kaggle RLE per class) a missed defect can be drawn and a half-right mask fixed. Images whose every
class is settled go to::

    DIR/train_images/<sha>.<ext>    the uploaded bytes, unchanged
    DIR/train.csv                   ImageId,ClassId,EncodedPixels rows of the final masks
    DIR/classes.txt                 the bundle's class names
    DIR/reviews.jsonl               per image: the model's and the final mask of every class, verdicts,
                                    bundle id, reviewer, time (steelseg.data.reviews)

ready for ``steelseg info DIR`` and ``steelseg train --set 'data.extra=[DIR]'``. An image with a
``missed`` class that was not drawn has no mask to learn from: it goes to ``DIR/needs_masks/`` with its
verdicts in a JSON file beside it, never into train.csv (it would teach the model the defect is
absent). Sending an image again replaces its earlier rows (a reviewer fixing a mistake).

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
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data import rle
from steelseg.data.reviews import REVIEWS_FILE, VERDICTS
from steelseg.errors import DataError, RLEError
from steelseg.fsutil import atomic_json, atomic_text, atomic_write, check_writable_dir, clean_stale

__all__ = ["FeedbackWriter", "VERDICTS"]

EXTS = {b"\xff\xd8": ".jpg", b"\x89P": ".png", b"BM": ".bmp", b"II": ".tif", b"MM": ".tif"}
PREDICTED = {"right", "wrong", "corrected"}  # verdicts for a class the model found; the others for one it did not


class FeedbackWriter:
    def __init__(self, root: Path, class_names: list[str], bundle_id: str = "") -> None:
        self.root = check_writable_dir(root)
        self.class_names = list(class_names)
        self.bundle_id = bundle_id
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
        with self._locked():  # workers of one service start together: one recovers, the others find it done
            self.recovered = self.recover()

    def recover(self) -> list[str]:
        """Finish or undo what a crash left (on start): a review line cut short is moved out of reviews.jsonl
        (to reviews.partial.jsonl) so the next one starts on its own line; an image whose rows reached train.csv
        but which was not yet renamed into place is finished; a written image whose rows never arrived is
        removed; temporary files of killed writes are cleaned. Returns what was done, in words."""
        done = []
        reviews = self.root / REVIEWS_FILE
        if reviews.is_file() and reviews.stat().st_size:
            raw = reviews.read_bytes()
            if not raw.endswith(b"\n"):
                cut = raw.rfind(b"\n") + 1
                with open(self.root / "reviews.partial.jsonl", "ab") as fh:
                    fh.write(raw[cut:] + b"\n")
                with open(reviews, "r+b") as fh:
                    fh.truncate(cut)
                done.append(f"{reviews}: a review line cut short by a crash moved to reviews.partial.jsonl")
        listed = {r[0] for r in self._rows() if r}
        img_dir = self.root / "train_images"
        for tmp in sorted(img_dir.glob(".*.tmp")):
            image_id = tmp.name[1:-len(".tmp")]
            if image_id in listed and not (img_dir / image_id).exists():
                os.replace(tmp, img_dir / image_id)  # fsynced before train.csv was written: complete
                done.append(f"{image_id}: finished (its rows were in train.csv)")
            else:
                tmp.unlink()
                done.append(f"{image_id}: an unfinished write removed")
        missing = sorted(i for i in listed if not (img_dir / i).exists())
        if missing:  # rows without their image: undone, so the folder trains
            self._write_rows([r for r in self._rows() if r and r[0] not in set(missing)])
            done.append(f"{len(missing)} row group(s) of train.csv without an image removed ({missing[0]} ...)")
        clean_stale(self.root, ("train.csv", "classes.txt", REVIEWS_FILE))
        for line in done:
            print(f"feedback {self.root}: {line}", file=sys.stderr)
        return done

    def parse(self, raw: str) -> dict[str, str]:
        """``{"class name": verdict}`` for every class, checked (verdicts: steelseg.data.reviews.VERDICTS)."""
        verdicts = _json(raw, "verdicts")
        if not isinstance(verdicts, dict):
            raise DataError("verdicts: expected an object {class name: verdict}")
        self._check_names(verdicts, "verdicts", "verdict")
        bad = {k: v for k, v in verdicts.items() if v not in VERDICTS}
        if bad:
            raise DataError(f"verdicts: {bad}; each must be one of {', '.join(VERDICTS)}")
        return {str(k): str(v) for k, v in verdicts.items()}

    def parse_masks(self, raw: str, shape: tuple[int, int]) -> np.ndarray:
        """The page's masks, ``{"width": W, "height": H, "masks": {class name: Kaggle RLE}}``, as (H, W, C)
        uint8; the size must be the image's, every class must be there and every run inside the image."""
        obj = _json(raw, "masks")
        if not isinstance(obj, dict) or not isinstance(obj.get("masks"), dict):
            raise DataError('masks: expected {"width": W, "height": H, "masks": {class name: RLE}}')
        h, w = shape
        if (obj.get("height"), obj.get("width")) != (h, w):
            raise DataError(f"masks: drawn on a {obj.get('width')}x{obj.get('height')} image, this image is {w}x{h}")
        self._check_names(obj["masks"], "masks", "mask (an empty string for none)")
        out = np.zeros((h, w, len(self.class_names)), np.uint8)
        for c, name in enumerate(self.class_names):
            value = obj["masks"][name]
            if not isinstance(value, str):
                raise DataError(f"masks: {name}: expected a Kaggle RLE string, got {type(value).__name__}")
            try:
                out[..., c] = rle.decode(value, (h, w))
            except RLEError as exc:
                raise DataError(f"masks: {name}: {exc}") from None
        return out

    def _check_names(self, obj: dict[str, Any], what: str, one: str) -> None:
        unknown = sorted(set(obj) - set(self.class_names))
        if unknown:
            raise DataError(f"{what}: unknown class(es) {unknown}; classes are {self.class_names}")
        missing = [n for n in self.class_names if n not in obj]
        if missing:
            raise DataError(f"{what}: no {one} for {missing}; give one for every class")

    def settle(self, model: np.ndarray, verdicts: dict[str, str], drawn: np.ndarray | None) -> np.ndarray:
        """The final masks from the model's, the verdicts and (when sent) the page's; a verdict that does not
        fit the masks is an error that says which to give."""
        final = np.zeros_like(model) if drawn is None else drawn.astype(np.uint8)
        for c, name in enumerate(self.class_names):
            v, m = verdicts[name], model[..., c]
            if bool(m.any()) != (v in PREDICTED):
                say = "right, wrong or corrected" if m.any() else "absent or missed"
                raise DataError(f"verdicts: {name} was {'' if m.any() else 'not '}predicted; say {say} for it")
            if drawn is None:
                if v == "corrected":
                    raise DataError(f"verdicts: {name} is corrected but no masks were sent; send 'masks'")
                final[..., c] = m if v == "right" else 0
                continue
            f = final[..., c]
            if v == "right" and not np.array_equal(f, m):
                raise DataError(f"verdicts: {name} is right, but the sent mask differs from the model's; say corrected")
            if v in ("wrong", "absent") and f.any():
                raise DataError(f"verdicts: {name} is {v}, but the sent mask holds {int(f.sum())} pixels")
            if v == "corrected" and not f.any():
                raise DataError(f"verdicts: {name} is corrected to an empty mask; say wrong")
        return final

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def add(self, data: bytes, name: str, model: np.ndarray, verdicts: dict[str, str],
            drawn: np.ndarray | None = None, reviewer: str | None = None) -> dict[str, Any]:
        """Store one reviewed image (``model``: the prediction the reviewer saw, ``drawn``: the page's final
        masks or None); returns where it went and what was recorded."""
        final = self.settle(model, verdicts, drawn)
        undrawn = [n for c, n in enumerate(self.class_names) if verdicts[n] == "missed" and not final[..., c].any()]
        digest = hashlib.sha256(data).hexdigest()[:16]
        image_id = digest + EXTS.get(data[:2], Path(name).suffix.lower() or ".png")
        with self._locked():
            if undrawn:
                replaced = self._drop_train(image_id)
                self._to_needs_masks(data, image_id, name, verdicts)
                result = {"stored": "needs_masks", "image_id": image_id, "replaced": replaced,
                          "reason": f"missed {', '.join(undrawn)} without a drawing: draw it on the page and send "
                                    "again (the image then moves to train)"}
            else:
                replaced = self._to_train(data, image_id, final)
                result = {"stored": "train", "image_id": image_id, "replaced": replaced,
                          "rows": int(sum(final[..., c].any() for c in range(final.shape[-1]))),
                          "classes": [n for c, n in enumerate(self.class_names) if final[..., c].any()]}
            self._record(result, name, model, final, verdicts, reviewer)
        return result

    def _to_needs_masks(self, data: bytes, image_id: str, name: str, verdicts: dict[str, str]) -> None:
        folder = check_writable_dir(self.root / "needs_masks")
        with atomic_write(folder / image_id, "wb") as fh:
            fh.write(data)
        atomic_json(folder / (image_id + ".json"), {"source_name": name, "verdicts": verdicts})

    def _rows(self) -> list[list[str]]:
        with open(self.root / "train.csv", newline="", encoding="utf-8") as fh:
            rle.allow_long_csv_fields()
            return [r for r in csv.reader(fh)][1:]

    def _write_rows(self, rows: list[list[str]] | list[tuple[str, int, str]]) -> None:
        with atomic_write(self.root / "train.csv", "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["ImageId", "ClassId", "EncodedPixels"])
            w.writerows(rows)

    def _drop_train(self, image_id: str) -> bool:
        """Take an image out of train (it now needs masks); True when it was there."""
        rows = self._rows()
        kept = [r for r in rows if not (r and r[0] == image_id)]
        path = self.root / "train_images" / image_id
        if len(kept) == len(rows) and not path.exists():
            return False
        self._write_rows(kept)
        path.unlink(missing_ok=True)
        return True

    def _to_train(self, data: bytes, image_id: str, final: np.ndarray) -> bool:
        """Write the image and its rows (replacing earlier ones of the same image); True when it replaced."""
        existing = self._rows()
        kept = [r for r in existing if not (r and r[0] == image_id)]
        img_dir = self.root / "train_images"
        replaced = len(kept) != len(existing) or (img_dir / image_id).exists()
        tmp = img_dir / f".{image_id}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        new = [(image_id, c + 1, rle.encode(final[..., c])) for c in range(final.shape[-1]) if final[..., c].any()]
        self._write_rows(kept + new)
        os.replace(tmp, img_dir / image_id)
        for p in (self.root / "needs_masks" / image_id, self.root / "needs_masks" / (image_id + ".json")):
            p.unlink(missing_ok=True)  # drawn now: no longer waiting for masks
        return replaced

    def _record(self, result: dict[str, Any], name: str, model: np.ndarray, final: np.ndarray,
                verdicts: dict[str, str], reviewer: str | None) -> None:
        h, w = model.shape[:2]
        classes = {n: {"verdict": verdicts[n], "model_rle": rle.encode(model[..., c]),
                       "final_rle": rle.encode(final[..., c]), "model_area": int(model[..., c].sum()),
                       "final_area": int(final[..., c].sum())} for c, n in enumerate(self.class_names)}
        rec = {"image_id": result["image_id"], "source_name": name, "stored": result["stored"],
               "bundle": self.bundle_id, "reviewer": (reviewer or "").strip()[:100] or None,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "height": h, "width": w,
               "classes": classes}
        path = self.root / REVIEWS_FILE
        with open(path, "a+b") as fh:  # a line of its own, even after a line a crash cut short
            fh.seek(0, os.SEEK_END)
            if fh.tell():
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write((json.dumps(rec) + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())


def _json(raw: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what}: not valid JSON ({exc.msg})") from None
