"""``steelseg predict``: a bundle over a folder of images -> ``submission.csv`` (streamed, written
atomically), optional overlays (swapped in as one folder) and, against labels, Kaggle Dice."""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelseg import metrics, viz
from steelseg.data.images import IMAGE_EXTS, image_size, list_images, read_image
from steelseg.data.open import open_dataset
from steelseg.errors import DataError
from steelseg.fsutil import atomic_json, atomic_write, check_writable_dir, clean_stale, staged_dir
from steelseg.inference.found import MIN_SIDE, too_small
from steelseg.inference.predictor import Predictor
from steelseg.inference.submission import SubmissionWriter

PREANNOTATION_FORMATS = ("labelme", "yolo", "cvat", "labelstudio", "coco", "masks")

__all__ = ["PREANNOTATION_FORMATS", "predict_folder", "write_overlay", "write_preannotations"]


def _clean_stale(out: Path) -> None:
    """Remove what a killed earlier run left: a partial submission, half-written overlay folders and temporary
    files, all by steelseg's own names (:func:`steelseg.fsutil.clean_stale`)."""
    (out / "submission.csv.partial").unlink(missing_ok=True)
    clean_stale(out, ("submission.csv", "predict.json", "overlays", "skipped.csv"))


def _image_ids(images: Sequence[Path], root: Path) -> list[str]:
    """ImageId of each file: its name, or its path under ``root`` (with /) when read recursively."""
    return [p.relative_to(root).as_posix() for p in images]


def write_overlay(folder: Path, image_id: str, path: Path, masks: np.ndarray, true: np.ndarray | None) -> None:
    """The prediction drawn on its image (beside the ground truth when labelled), as a PNG in ``folder``."""
    img = read_image(path, None)
    pic = viz.caption(viz.overlay(img, masks), f"{image_id}: prediction")
    if true is not None:
        pic = viz.side_by_side(pic, viz.caption(viz.overlay(img, true), "ground truth"))
    dst = folder / (image_id.replace("/", "__") + ".png")  # the full name: a.jpg and a.png differ
    viz.write_rgb(dst, pic)


def _check_options(on_error: str, formats: Sequence[str]) -> None:
    if on_error not in ("stop", "skip"):
        raise DataError(f"--on-error {on_error!r}: stop or skip")
    bad = [f for f in formats if f not in PREANNOTATION_FORMATS]
    if bad:
        raise DataError(f"--format {bad[0]!r}: not one of {', '.join(PREANNOTATION_FORMATS)}")


def predict_folder(bundle: str | Path, images_dir: str | Path, out: str | Path, overlays: bool = False,
                   labels: str | Path | None = None, tta: bool | None = None, device: str = "cpu",
                   progress: bool = False, min_size: int = MIN_SIDE, backend: str | None = None,
                   threads: int | None = None, recursive: bool = False, tile: int | None = None,
                   overlap: int | None = None, prefetch: bool | None = None, on_error: str = "stop",
                   formats: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``out/submission.csv`` (and overlays) for every image in ``images_dir``.

    Files that are not images, and subfolders unless ``recursive``, are listed as skipped. Overlays
    of a run are written to a folder of their own and replace ``out/overlays`` as one at the end.
    ``on_error``: ``stop`` (default: an unreadable image ends the run with its name, and nothing is written, so a
    partial submission cannot pass for a whole one) or ``skip`` (each unreadable image, truncated, empty or too
    large, is left out and listed with its reason in ``out/skipped.csv`` and predict.json, ``complete: false``).
    ``formats`` (labelme, yolo, cvat, labelstudio, coco, masks): the predictions also written as that tool's
    dataset in ``out/<format>`` (:func:`write_preannotations`), to load into it for correction.
    """
    _check_options(on_error, formats)
    predictor = Predictor.from_bundle(bundle, device=device, tta=tta, backend=backend, threads=threads, tile=tile,
                                      overlap=overlap)
    images_dir = Path(images_dir)
    images, others = list_images(images_dir, recursive=recursive)
    if not images:
        raise DataError(f"{images_dir}: no images (looked for {', '.join(IMAGE_EXTS)}"
                        f"{'' if recursive else ' directly inside it; --recursive reads subfolders'})")
    bad: dict[Path, str] = {}
    for p in images:  # refuse what no model can take, or what would not fit in memory, before any work
        try:
            why = too_small(*image_size(p), min_size)
            if why:
                raise DataError(f"{p}: {why}")
        except DataError as exc:
            if on_error == "stop":
                raise
            bad[p] = str(exc)
    images = [p for p in images if p not in bad]
    ids = _image_ids(images, images_dir)
    id_of = dict(zip(images, ids))
    out = check_writable_dir(out)
    _clean_stale(out)
    truth = open_dataset(labels, predictor.class_names) if labels else None
    labelled = set(truth.image_ids) if truth is not None else set()
    acc = metrics.DiceAccumulator()
    class_ids = list(range(1, predictor.num_classes + 1))
    with contextlib.ExitStack() as stack:
        sub = stack.enter_context(SubmissionWriter(out / "submission.csv", class_ids))
        pics = stack.enter_context(staged_dir(out / "overlays", True, "overlays")) if overlays else None
        stream = predictor.predict_paths(images, progress=progress, prefetch=prefetch,
                                         on_error=None if on_error == "stop" else lambda p, e: bad.__setitem__(p, str(e)))
        for path, pred in stream:
            image_id = id_of[path]
            sub.add(image_id, pred.masks)
            true = None
            if truth is not None and image_id in labelled:
                true = truth.load_mask(image_id)
                if true.shape[:2] != pred.masks.shape[:2]:
                    raise DataError(f"{path}: image is {pred.masks.shape[1]}x{pred.masks.shape[0]} but its "
                                    f"--labels mask is {true.shape[1]}x{true.shape[0]}; labels must be of "
                                    "the predicted images")
                acc.update(pred.masks[None], true[None])
            if pics is not None:
                write_overlay(pics, image_id, path, pred.masks, true)
    skipped = [{"image": p.relative_to(images_dir).as_posix(), "reason": r} for p, r in bad.items()]
    if skipped:
        with atomic_write(out / "skipped.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["image", "reason"])
            w.writeheader()
            w.writerows(skipped)
    summary: dict[str, Any] = {"images": len(images) - len(set(bad) & set(images)), "skipped_files": _image_ids(others, images_dir),
                               "skipped_images": skipped, "complete": not skipped,
                               "submission": str(out / "submission.csv"), "class_names": predictor.class_names,
                               "backend": predictor.backend}
    if acc._pairs:
        rep = acc.compute()
        summary["dice"] = rep.mean
        summary["dice_per_class"] = dict(zip(predictor.class_names, rep.per_class))
    if formats:
        done = {id_of[p]: p for p in images if p not in bad}
        summary["formats"] = write_preannotations(out, images_dir, done, predictor.class_names, formats)
    atomic_json(out / "predict.json", summary)
    return summary


def write_preannotations(out: Path, images_dir: Path, images: dict[str, Path], class_names: list[str],
                         formats: Sequence[str]) -> dict[str, str]:
    """``out/submission.csv`` written again as each labelling tool's dataset, ``out/<format>`` (images copied
    beside the tool's files): the masks are the submission's, exactly (up to polygons in polygon formats)."""
    from steelseg.data.convert import convert
    from steelseg.data.kaggle import rle_dataset

    ds = rle_dataset(images_dir, out / "submission.csv", images, class_names)
    return {f: str(convert(ds, out / f, f, overwrite=True)) for f in formats}
