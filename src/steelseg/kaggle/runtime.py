"""What the kit's notebook runs on Kaggle once steelseg is installed from the kit: find the inputs, pick
the device, time a sample and plan, predict streaming into ``submission.csv`` in the layout of the
competition's ``sample_submission.csv``, and validate it. The predict path only (no training stack)."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steelseg.errors import DataError

__all__ = [
    "BUNDLE_MARKER",
    "DEPS_MARKER",
    "Inputs",
    "Plan",
    "Sample",
    "choose_device",
    "find_inputs",
    "plan_run",
    "predict_submission",
    "read_sample",
    "read_submission",
    "validate_submission",
]

DEPS_MARKER = "steelseg-kit-deps.json"
BUNDLE_MARKER = "steelseg-kit-bundle.json"
OLD_HEADER = ["ImageId_ClassId", "EncodedPixels"]
NEW_HEADER = ["ImageId", "EncodedPixels", "ClassId"]
_SKIP = {"test_images", "train_images", "__pycache__"}


@dataclass
class Inputs:
    bundle: Path
    competition: Path  # the folder with sample_submission.csv
    test_images: Path


def _walk(root: Path, max_depth: int = 5) -> Iterator[tuple[Path, list[str]]]:
    """(folder, file names) below ``root``, not into image folders (thousands of files)."""
    for here, dirs, files in os.walk(root):
        depth = len(Path(here).relative_to(root).parts)
        dirs[:] = [] if depth >= max_depth else sorted(d for d in dirs if d not in _SKIP)
        yield Path(here), files


def _unpacked(bundle: Path, working: Path | None) -> Path:
    """The bundle with its sub-folders: where a dataset kept them as ``NAME.zip`` (uploaded with
    ``--dir-mode zip`` and not unpacked), a copy in ``working`` with the archives extracted."""
    archives = [z for z in bundle.glob("*.zip") if not (bundle / z.stem).is_dir()]
    if not archives:
        return bundle
    if working is None:
        raise DataError(f"{bundle}: sub-folders are still zipped ({archives[0].name}); give a working folder")
    import shutil
    import zipfile

    dst = Path(working) / "steelseg-bundle"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("*.zip"))
    for z in archives:
        with zipfile.ZipFile(z) as zf:
            zf.extractall(dst / z.stem)
    return dst


def find_inputs(root: str | Path, kit: dict[str, Any], working: str | Path | None = None) -> Inputs:
    """Search ``root`` (``/kaggle/input``) for the kit's bundle and the competition's files; the error
    names each missing input and the dataset or competition to add in the notebook's Data panel."""
    root = Path(root)
    bundle = competition = None
    for here, files in _walk(root) if root.is_dir() else []:
        if BUNDLE_MARKER in files and "bundle.json" in files and bundle is None:
            bundle = here
        if "sample_submission.csv" in files and (here / "test_images").is_dir() and competition is None:
            competition = here
    missing = []
    if bundle is None:
        missing.append(f"the steelseg bundle (a folder with {BUNDLE_MARKER} and bundle.json): add the dataset "
                       f"{kit['bundle_dataset']}")
    if competition is None:
        missing.append(f"the competition data (sample_submission.csv beside test_images/): add the competition "
                       f"{kit['competition']}")
    if missing:
        raise DataError(f"not found under {root}: " + "; ".join(missing))
    return Inputs(_unpacked(bundle, None if working is None else Path(working)), competition,
                  competition / "test_images")


def choose_device(backend: str, want_gpu: bool = True) -> tuple[str, str]:
    """("cuda" or "cpu", why). A GPU is used only when this torch build has kernels for it: Kaggle's
    P100 (sm_60) is not in current builds' arch list, and would fail at the first kernel."""
    if backend != "torch":
        return "cpu", f"{backend} bundle: ONNX Runtime's CPU build runs it"
    if not want_gpu:
        return "cpu", "the kit was built with --no-gpu"
    import torch

    if not torch.cuda.is_available():
        return "cpu", "no GPU is attached to this session"
    major, minor = torch.cuda.get_device_capability(0)
    arch, archs = f"sm_{major}{minor}", torch.cuda.get_arch_list()
    name = torch.cuda.get_device_name(0)
    if arch not in archs:
        return "cpu", (f"{name} is {arch}, which this torch {torch.__version__} build has no kernels for "
                       f"({', '.join(archs)}): running on the CPU. Choose a T4 or newer in the notebook's settings")
    return "cuda", f"{name} ({arch}) is supported by torch {torch.__version__}"


@dataclass
class Sample:
    header: list[str]
    rows: list[tuple[str, int | None]]  # (ImageId, ClassId) per listed row; ClassId None in the new layout
    images: list[str]  # unique ImageIds in order

    @property
    def classes_of(self) -> dict[str, list[int]]:
        """ClassIds listed per image (old layout), in the sample's order."""
        out: dict[str, list[int]] = {}
        for image, c in self.rows:
            if c is not None:
                out.setdefault(image, []).append(c)
        return out

    @property
    def old_layout(self) -> bool:
        return self.header == OLD_HEADER


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    from steelseg.data import rle

    rle.allow_long_csv_fields()
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        return header, [r for r in reader if r]


def _old_key(cell: str, path: Path) -> tuple[str, int]:
    image, _, cls = cell.rpartition("_")
    if not image or not cls.isdigit():
        raise DataError(f"{path}: row {cell!r} is not ImageId_ClassId (e.g. 0000f269f.jpg_1)")
    return image, int(cls)


def _bad_header(path: Path, header: list[str]) -> DataError:
    return DataError(f"{path}: header {','.join(header)!r} is neither {','.join(OLD_HEADER)} nor {','.join(NEW_HEADER)}")


def read_sample(path: str | Path) -> Sample:
    """``sample_submission.csv`` in the old (``ImageId_ClassId,EncodedPixels``) or the new
    (``ImageId,EncodedPixels,ClassId``) layout."""
    path = Path(path)
    header, body = _read_csv(path)
    if header == OLD_HEADER:
        rows: list[tuple[str, int | None]] = [_old_key(r[0], path) for r in body]
    elif header == NEW_HEADER:
        rows = [(r[0], None) for r in body]
    else:
        raise _bad_header(path, header)
    if not rows:
        raise DataError(f"{path}: no rows")
    return Sample(header, rows, list(dict.fromkeys(r[0] for r in rows)))


def read_submission(path: str | Path) -> dict[tuple[str, int], str]:
    """(ImageId, ClassId) -> RLE of a submission (or sample) in either layout."""
    path = Path(path)
    header, body = _read_csv(path)
    if header == OLD_HEADER:
        return {_old_key(r[0], path): r[1] if len(r) > 1 else "" for r in body}
    if header == NEW_HEADER:
        return {(r[0], int(r[2])): r[1] for r in body}
    raise _bad_header(path, header)


@dataclass
class Plan:
    tta: bool
    seconds_per_image: float
    hidden_images: int
    projected_minutes: float
    notes: list[str] = field(default_factory=list)


def _time_per_image(predictor: Any, paths: list[Path]) -> float:
    """Seconds per image over ``paths`` after one warm-up image (model compilation, first allocation)."""
    list(predictor.predict_paths(paths[:1]))
    t0 = time.perf_counter()
    for _ in predictor.predict_paths(paths[1:]):
        pass
    return (time.perf_counter() - t0) / max(len(paths) - 1, 1)


def plan_run(bundle: Path, images: list[Path], device: str, kit: dict[str, Any], sample_size: int = 8) -> Plan:
    """Time ``sample_size`` images and project the hidden set (at least 3x the visible images, and at
    least ``kit['hidden_images']``); when that would not fit ``kit['minutes']``, drop TTA and say so."""
    from steelseg.inference.predictor import Predictor

    hidden = max(3 * len(images), int(kit.get("hidden_images", 0)))
    budget = float(kit.get("minutes", 50))
    probe = images[:sample_size + 1]
    predictor = Predictor.from_bundle(bundle, device=device)
    tta = bool(predictor.tta)
    per = _time_per_image(predictor, probe)
    notes = [f"{per:.3f} s per image ({'with' if tta else 'without'} flip TTA, {device}, {len(probe) - 1} timed)"]
    if tta and per * hidden / 60 > budget:
        notes.append(f"with TTA {per * hidden / 60:.1f} min projected for {hidden} images > {budget:.0f} min: "
                     "TTA dropped")
        predictor = Predictor.from_bundle(bundle, device=device, tta=False)
        tta, per = False, _time_per_image(predictor, probe)
        notes.append(f"{per:.3f} s per image without TTA")
    minutes = per * hidden / 60
    if minutes > budget:
        notes.append(f"WARNING: {minutes:.1f} min projected for {hidden} images exceeds {budget:.0f} min even "
                     "without TTA: export the bundle to ONNX int8 (steelseg export --quantize int8) or use a GPU")
    return Plan(tta, per, hidden, minutes, notes)


def _rows_for(sample: Sample, classes: list[int], image_id: str, masks: Any,
              class_ids: dict[int, int]) -> list[list[str]]:
    """The image's rows: its listed ClassIds (old layout), or every class (new layout)."""
    from steelseg.data import rle

    if sample.old_layout:
        return [[f"{image_id}_{c}", rle.encode(masks[..., class_ids[c]])] for c in classes]
    return [[image_id, rle.encode(masks[..., k]), str(c)] for c, k in class_ids.items()]


def predict_submission(inputs: Inputs, sample: Sample, plan: Plan, device: str, out: str | Path,
                       every: int = 200) -> dict[str, Any]:
    """Predict every image the sample lists, one at a time, writing its rows as they come (bounded
    memory); ``out`` appears complete or not at all. Returns the image sizes seen (for validation)."""
    from steelseg.data.images import read_image
    from steelseg.fsutil import atomic_write
    from steelseg.inference.predictor import Predictor

    predictor = Predictor.from_bundle(inputs.bundle, device=device, tta=plan.tta)
    class_ids = {c: c - 1 for c in range(1, predictor.num_classes + 1)}  # ClassId c = the bundle's class c
    listed = sorted({c for _, c in sample.rows if c is not None})
    if listed and (max(listed) > predictor.num_classes or min(listed) < 1):
        raise DataError(f"sample_submission.csv lists ClassId {min(listed)}-{max(listed)}, but the bundle has "
                        f"classes 1-{predictor.num_classes} ({', '.join(predictor.class_names)})")
    paths = [inputs.test_images / i for i in sample.images]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        raise DataError(f"{len(absent)} images listed in sample_submission.csv are not in {inputs.test_images} "
                        f"(e.g. {absent[0]})")
    if sample.old_layout and len(set(sample.rows)) != len(sample.rows):
        raise DataError("sample_submission.csv lists an ImageId_ClassId row twice")
    classes_of = sample.classes_of
    sizes: dict[str, tuple[int, int]] = {}
    t0 = time.perf_counter()
    with atomic_write(out, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(sample.header)
        for n, path in enumerate(paths, 1):  # one image at a time: read, predict, write its rows
            pred = predictor.predict([read_image(path, None)])[0]
            sizes[path.name] = pred.masks.shape[:2]
            w.writerows(_rows_for(sample, classes_of.get(path.name, []), path.name, pred.masks, class_ids))
            if n % every == 0 or n == len(paths):
                rate = n / (time.perf_counter() - t0)
                print(f"{n}/{len(paths)} images, {rate:.2f} img/s, ETA {(len(paths) - n) / rate / 60:.1f} min",
                      flush=True)
    return {"images": len(paths), "seconds": time.perf_counter() - t0, "sizes": sizes, "tta": plan.tta,
            "device": device, "backend": predictor.backend}


def validate_submission(path: str | Path, sample: Sample, sizes: dict[str, tuple[int, int]],
                        num_classes: int) -> dict[str, Any]:
    """Read ``submission.csv`` back: the sample's header; every listed row (old layout) or every listed
    image with each class (new layout); each RLE decodes inside its image. Raises on the first fault."""
    from steelseg.data import rle

    header, rows = _read_csv(Path(path))
    if header != sample.header:
        raise DataError(f"{path}: header {header}, the sample's is {sample.header}")
    if sample.old_layout:
        keys = [r[0] for r in rows]
        want = [f"{i}_{c}" for i, c in sample.rows]
        pairs = [(r[0].rpartition("_")[0], r[1]) for r in rows]
    else:
        keys = [(r[0], r[2]) for r in rows]
        want = [(i, str(c)) for i in sample.images for c in range(1, num_classes + 1)]
        pairs = [(r[0], r[1]) for r in rows]
    if sorted(keys) != sorted(want):  # every expected row once; the order is free
        have = set(keys)
        missing = [k for k in want if k not in have]
        raise DataError(f"{path}: {len(rows)} rows, {len(want)} expected"
                        + (f"; missing e.g. {missing[0]}" if missing else "; some row is extra or repeated"))
    non_empty = 0
    for image, code in pairs:
        rle.decode(code, sizes[image])  # raises on a malformed run or one outside the image
        non_empty += bool(code.strip())
    return {"rows": len(rows), "non_empty": non_empty, "images": len(sizes)}


def environment() -> str:
    """One line per fact, printed first in the notebook (what Kaggle gave this run)."""
    import platform

    lines = [f"python {sys.version.split()[0]} on {platform.platform()}", f"cpus {os.cpu_count()}"]
    try:
        import torch

        lines.append(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    except ImportError:
        lines.append("torch: not installed")
    return "\n".join(lines)


def save_report(path: str | Path, **parts: Any) -> None:
    """The run's facts as JSON beside the submission (the rehearsal reads it)."""
    from steelseg.fsutil import atomic_json

    atomic_json(path, json.loads(json.dumps(parts, default=str)))
