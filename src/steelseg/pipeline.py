"""The prediction pipeline: classifier gating -> segmentation (+ flip TTA, fold ensembles) ->
post-processing, packed as a **bundle** folder that ``Predictor.from_bundle`` loads::

    bundle/
      bundle.json          what is inside, classes, TTA, baseline kind
      postprocess.json     tuned per-class thresholds, minimum areas, gates
      segmenters/0/        model.json + best.safetensors (one folder per fold model)
      classifiers/0/       optional gating classifiers, same format
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelseg import postprocess
from steelseg.backends import Runner, load_runner, model_format
from steelseg.checkpoint import read_model_json
from steelseg.errors import DataError
from steelseg.fsutil import atomic_json, check_writable_dir, staged_dir
from steelseg.images import IMAGE_EXTS, InputSpec, image_size, list_images, read_image, to_input
from steelseg.schema import BundleInfo, ModelMeta, build, load_json, to_dict

__all__ = ["Predictor", "Prediction", "predict_folder", "read_bundle", "resolve_model_dir", "write_bundle"]

BUNDLE_JSON = "bundle.json"


def resolve_model_dir(path: str | Path) -> Path:
    """A run folder (runs/x) or its model folder (runs/x/model) -> the folder with model.json."""
    p = Path(path)
    if (p / "model.json").is_file():
        return p
    if (p / "model" / "model.json").is_file():
        return p / "model"
    raise DataError(f"{p}: not a run or model folder (no model.json in it or in {p / 'model'})")


@dataclass
class Prediction:
    """Per image: probabilities (H, W, C), masks after post-processing, gate probabilities."""

    probs: np.ndarray
    masks: np.ndarray
    gate: np.ndarray | None = None
    gate_any: float | None = None
    skipped: bool = False  # the gating classifier called the image defect-free


TTA_FLIPS: list[tuple[int, ...]] = [(), (-1,), (-2,)]  # axes of (N, C, H, W) to flip; () = identity


@dataclass
class Predictor:
    """Runs segmenters (averaged) and classifiers (averaged) and post-processes their output.

    Models are runners (:mod:`steelseg.backends`): PyTorch or ONNX Runtime, picked from the files.
    """

    segmenters: list[Runner]
    classifiers: list[Runner] = field(default_factory=list)
    pp: postprocess.PostProcess | None = None
    class_names: list[str] = field(default_factory=list)
    tta: bool = False
    device: str = "cpu"
    batch_size: int = 4
    empty: bool = False  # the all-empty baseline: predicts no defect anywhere
    backend: str = "torch"
    tile: int | None = None  # images taller or wider than this are predicted in overlapping tiles
    overlap: int = 128  # pixels shared by neighbouring tiles, blended with linear ramps

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_models(cls, segmenters: Sequence[str | Path], classifiers: Sequence[str | Path] = (),
                    pp: postprocess.PostProcess | None = None, tta: bool = False, device: str = "cpu",
                    which: str = "best", backend: str | None = None, threads: int | None = None) -> Predictor:
        seg_dirs = [resolve_model_dir(p) for p in segmenters]
        cls_dirs = [resolve_model_dir(p) for p in classifiers]
        if not seg_dirs:
            raise DataError("no segmenter given")
        metas = {d: read_model_json(d) for d in seg_dirs + cls_dirs}  # each model.json parsed once
        backend = backend or _bundle_backend(metas)
        segs = [load_runner(d, backend, device, which, threads, metas[d]) for d in seg_dirs]
        clss = [load_runner(d, backend, device, which, threads, metas[d]) for d in cls_dirs]
        names = segs[0].meta.class_names
        for m in segs + clss:
            binary = m.meta.task == "classify" and m.meta.model.outputs == 1
            if m.meta.class_names != names and not binary:
                raise DataError(f"{m.source}: classes {m.meta.class_names} differ from {names} "
                                f"of {segs[0].source}")
        for m in segs:
            if m.meta.task != "segment":
                raise DataError(f"{m.source}: a {m.meta.task} model where a segmenter is needed")
        for m in clss:
            if m.meta.task != "classify":
                raise DataError(f"{m.source}: a {m.meta.task} model where a classifier is needed")
        pp = pp or postprocess.PostProcess.default(len(names))
        if pp.num_classes != len(names):
            raise DataError(f"post-processing has {pp.num_classes} classes, the models {len(names)}")
        return cls(segs, clss, pp, list(names), tta, device, backend=backend)

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu", tta: bool | None = None,
                    backend: str | None = None, threads: int | None = None, tile: int | None = None,
                    overlap: int | None = None) -> Predictor:
        """Load a bundle; ``backend`` (torch / onnx) defaults to what its model files are; ``tile`` /
        ``overlap`` default to the bundle's setting (none: whole images)."""
        path = Path(path)
        info = read_bundle(path)
        pp = postprocess.PostProcess.load(path / "postprocess.json")
        if pp.num_classes != len(info.class_names):
            raise DataError(f"{path / 'postprocess.json'}: {pp.num_classes} classes, but bundle.json names "
                            f"{len(info.class_names)} ({', '.join(info.class_names)})")
        use_tta = info.tta if tta is None else tta
        if info.kind == "all-empty":
            return cls([], [], pp, info.class_names, use_tta, device, empty=True, backend=backend or "torch")
        segs = sorted((path / "segmenters").glob("*/model.json"))
        if len(segs) != info.segmenters:
            raise DataError(f"{path / 'segmenters'}: {len(segs)} model folder(s), bundle.json says "
                            f"{info.segmenters} (missing model files?)")
        clss = sorted((path / "classifiers").glob("*/model.json"))
        if len(clss) != info.classifiers:
            raise DataError(f"{path / 'classifiers'}: {len(clss)} model folder(s), bundle.json says {info.classifiers}")
        pred = cls.from_models([p.parent for p in segs], [p.parent for p in clss], pp, use_tta, device,
                               backend=backend, threads=threads)
        if pred.class_names != info.class_names:
            raise DataError(f"{path / BUNDLE_JSON}: class_names {info.class_names} differ from the models' "
                            f"{pred.class_names}")
        pred.tile = tile if tile is not None else info.tile
        pred.overlap = overlap if overlap is not None else info.overlap
        if pred.tile is not None and not (64 <= pred.tile <= 16384 and 0 <= pred.overlap < pred.tile // 2 + 1):
            raise DataError(f"tile {pred.tile}, overlap {pred.overlap}: tile must be 64..16384 and overlap at "
                            "most half of it")
        return pred

    # ---- inference ----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _run(self, models: list[Runner], images: Sequence[np.ndarray], tta: bool) -> np.ndarray:
        """Average probabilities over models (and flips for segmenters)."""
        total = None
        n = 0
        inputs: dict[InputSpec, np.ndarray] = {}  # fold models share a normalisation: prepare once
        for m in models:
            spec = m.meta.input.spec()
            if spec not in inputs:
                inputs[spec] = to_input(images, spec)
            x = inputs[spec]
            seg = m.meta.task == "segment"
            for axes in (TTA_FLIPS if tta and seg else [()]):
                out = m(np.flip(x, axes) if axes else x)
                if axes:
                    out = np.flip(out, axes)
                total = out if total is None else total + out
                n += 1
        return np.ascontiguousarray(total / n, np.float32)

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict a list of (H, W) or (H, W, 3) uint8 images (sizes may differ); images larger than
        ``tile`` go through :meth:`predict_tiled`."""
        results: list[Prediction | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            if self.tile and max(img.shape[:2]) > self.tile and not self.empty:
                results[i] = self.predict_tiled(img)
                continue
            groups.setdefault(img.shape[:2], []).append(i)
        for shape, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                for i, pred in zip(chunk, self._predict_same_size([images[j] for j in chunk], shape)):
                    results[i] = pred
        return [r for r in results if r is not None]

    def predict_tiled(self, image: np.ndarray) -> Prediction:
        """One large image in overlapping ``tile`` x ``tile`` windows: memory stays that of a tile.

        Segmenter probabilities are blended with weights that ramp linearly over the overlap (no
        seams); classifier probabilities are the maximum over tiles (a defect anywhere counts).
        """
        tile = int(self.tile or max(image.shape[:2]))
        overlap = max(0, min(self.overlap, tile // 2))
        h, w = image.shape[:2]
        th, tw = min(tile, h), min(tile, w)
        ys, xs = _starts(h, th, overlap), _starts(w, tw, overlap)
        boxes = [(y, x) for y in ys for x in xs]
        k = self.num_classes
        gate = gate_any = None
        run_seg = True
        if self.classifiers:
            g = None
            for i in range(0, len(boxes), self.batch_size):
                crops = [image[y:y + th, x:x + tw] for y, x in boxes[i:i + self.batch_size]]
                part = self._run(self.classifiers, crops, False).max(axis=0)
                g = part if g is None else np.maximum(g, part)
            gate_any = float(g.max())
            gate = g if g.shape[0] == k else np.repeat(gate_any, k)
            if self.pp is not None and self.pp.gate_any is not None:
                run_seg = gate_any >= self.pp.gate_any
        probs = np.zeros((k, h, w), np.float32)
        if run_seg:
            weight = np.zeros((h, w), np.float32)
            ramp = np.outer(_ramp(th, overlap), _ramp(tw, overlap)).astype(np.float32)
            for i in range(0, len(boxes), self.batch_size):
                chunk = boxes[i:i + self.batch_size]
                out = self._run(self.segmenters, [image[y:y + th, x:x + tw] for y, x in chunk], self.tta)
                for (y, x), p in zip(chunk, out):
                    probs[:, y:y + th, x:x + tw] += p * ramp
                    weight[y:y + th, x:x + tw] += ramp
            probs /= weight
        probs = probs.transpose(1, 2, 0)
        masks = postprocess.apply(probs, self.pp, gate, gate_any)
        return Prediction(probs, masks, gate, gate_any, not run_seg)

    def _predict_same_size(self, images: Sequence[np.ndarray], shape: tuple[int, int]) -> list[Prediction]:
        k = self.num_classes
        n = len(images)
        if self.empty:
            z = np.zeros((*shape, k), np.float32)
            return [Prediction(z, np.zeros((*shape, k), np.uint8)) for _ in range(n)]
        gate = gate_any = None
        run_seg = np.ones(n, bool)
        if self.classifiers:
            g = self._run(self.classifiers, images, False)  # (n, K) or (n, 1)
            gate_any = g.max(axis=1)
            # A binary (defect / no defect) classifier gates every class on its one probability.
            gate = g if g.shape[1] == k else np.repeat(gate_any[:, None], k, axis=1)
            if self.pp is not None and self.pp.gate_any is not None:
                run_seg = gate_any >= self.pp.gate_any  # skip segmentation of defect-free images
        probs = np.zeros((n, k, *shape), np.float32)
        if run_seg.any():
            sel = np.flatnonzero(run_seg)
            probs[sel] = self._run(self.segmenters, [images[i] for i in sel], self.tta)
        probs = probs.transpose(0, 2, 3, 1)
        out = []
        for i in range(n):
            masks = postprocess.apply(probs[i], self.pp, None if gate is None else gate[i],
                                      None if gate_any is None else float(gate_any[i]))
            out.append(Prediction(probs[i], masks, None if gate is None else gate[i],
                                  None if gate_any is None else float(gate_any[i]), not run_seg[i]))
        return out

    def predict_paths(self, paths: Iterable[str | Path], progress: bool = False) -> Iterable[tuple[Path, Prediction]]:
        """Yield (path, prediction) for image files, reading them in batches as stored (gray or
        colour); each model's input is then made by :func:`steelseg.images.to_input`."""
        paths = [Path(p) for p in paths]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(paths), desc="predicting", unit="img")
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start:start + self.batch_size]
            images = [read_image(p, None) for p in chunk]
            yield from zip(chunk, self.predict(images))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()


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


def _bundle_backend(metas: dict[Path, ModelMeta]) -> str:
    """The one backend all model folders (with their model.json) share; a bundle that mixes formats
    is refused by name."""
    formats = {d: model_format(d, meta) for d, meta in metas.items()}
    if len(set(formats.values())) > 1:
        onnx = [str(d) for d, f in formats.items() if f == "onnx"]
        torch = [str(d) for d, f in formats.items() if f == "torch"]
        raise DataError(f"models mix formats: ONNX in {', '.join(onnx)}; PyTorch in {', '.join(torch)}. "
                        "Export the whole bundle with `steelseg export`")
    return next(iter(formats.values()))


def read_bundle(path: str | Path) -> BundleInfo:
    """Validated ``bundle.json`` of a bundle folder."""
    path = Path(path)
    info_path = path / BUNDLE_JSON
    if not path.is_dir():
        raise DataError(f"{path}: bundle folder not found")
    if not info_path.is_file():
        raise DataError(f"{info_path}: missing; a bundle is made by `steelseg tune` or `steelseg bundle`")
    if not (path / "postprocess.json").is_file():
        raise DataError(f"{path / 'postprocess.json'}: missing from the bundle")
    return load_json(info_path, BundleInfo)


def _copy_model(src: Path, dst: Path, meta: ModelMeta) -> list[str]:
    """Copy a model folder's model.json (read as ``meta``) and weights (safetensors or ONNX); returns
    its class names."""
    dst.mkdir(parents=True)
    shutil.copyfile(src / "model.json", dst / "model.json")
    if model_format(src, meta) == "onnx":
        name = str((meta.weights or {}).get("file", "model.onnx"))
        shutil.copyfile(src / name, dst / name)
    else:
        shutil.copyfile(src / "best.safetensors", dst / "best.safetensors")
    for split in (src / "split.json", src.parent / "split.json"):  # which images trained it (export calibrates on them)
        if split.is_file():
            shutil.copyfile(split, dst / "split.json")
            break
    return meta.class_names


def write_bundle(out: str | Path, segmenters: Sequence[str | Path], classifiers: Sequence[str | Path] = (),
                 pp: postprocess.PostProcess | None = None, class_names: Sequence[str] | None = None,
                 tta: bool = False, kind: str = "pipeline", extra: dict[str, Any] | None = None,
                 overwrite: bool = False, tile: int | None = None, overlap: int = 128) -> Path:
    """Copy model folders (model.json + weights) and post-processing into a bundle.

    The bundle is built in a folder beside ``out`` and swapped in only when complete; an existing
    ``out`` is refused unless ``overwrite`` (and the models may then come from inside it).
    """
    out = Path(out)
    dirs = {sub: [resolve_model_dir(d) for d in ds] for sub, ds in
            (("segmenters", segmenters), ("classifiers", classifiers))}
    names = list(class_names) if class_names else None
    metas = {d: read_model_json(d) for d in dirs["segmenters"] + dirs["classifiers"]}  # each parsed once
    backend = _bundle_backend(metas) if segmenters else "torch"
    with staged_dir(out, overwrite, "bundle") as stage:
        for sub, folders in dirs.items():
            for i, src in enumerate(folders):
                model_names = _copy_model(src, stage / sub / str(i), metas[src])
                if names is None and sub == "segmenters":
                    names = model_names
        if names is None:
            raise DataError("a bundle needs class names (none given and no segmenter to read them from)")
        pp = pp or postprocess.PostProcess.default(len(names))
        if pp.num_classes != len(names):
            raise DataError(f"post-processing has {pp.num_classes} classes, the bundle {len(names)}")
        pp.save(stage / "postprocess.json")
        info = build(BundleInfo, {"kind": kind, "class_names": list(names), "tta": tta,
                                  "segmenters": len(segmenters), "classifiers": len(classifiers),
                                  "backend": backend, "tile": tile, "overlap": overlap, **(extra or {})},
                     "bundle.json: ")
        atomic_json(stage / BUNDLE_JSON, to_dict(info))
    return out


def _clean_stale(out: Path) -> None:
    """Remove what a killed earlier run left: a partial submission and half-written overlay folders."""
    (out / "submission.csv.partial").unlink(missing_ok=True)
    for p in out.glob(".overlays.*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.glob(".*.tmp"):
        p.unlink(missing_ok=True)


def _image_ids(images: Sequence[Path], root: Path) -> list[str]:
    """ImageId of each file: its name, or its path under ``root`` (with /) when read recursively."""
    return [p.relative_to(root).as_posix() for p in images]


def predict_folder(bundle: str | Path, images_dir: str | Path, out: str | Path, overlays: bool = False,
                   labels: str | Path | None = None, tta: bool | None = None, device: str = "cpu",
                   progress: bool = False, min_size: int = 16, backend: str | None = None,
                   threads: int | None = None, recursive: bool = False, tile: int | None = None,
                   overlap: int | None = None) -> dict[str, Any]:
    """Write ``out/submission.csv`` (and overlays) for every image in ``images_dir``.

    Files that are not images, and subfolders unless ``recursive``, are listed as skipped. Overlays
    of a run are written to a folder of their own and replace ``out/overlays`` as one at the end.
    """
    import cv2

    from steelseg import metrics, viz
    from steelseg.datasets import open_dataset
    from steelseg.submission import SubmissionWriter

    predictor = Predictor.from_bundle(bundle, device=device, tta=tta, backend=backend, threads=threads, tile=tile,
                                      overlap=overlap)
    images_dir = Path(images_dir)
    images, others = list_images(images_dir, recursive=recursive)
    if not images:
        raise DataError(f"{images_dir}: no images (looked for {', '.join(IMAGE_EXTS)}"
                        f"{'' if recursive else ' directly inside it; --recursive reads subfolders'})")
    ids = _image_ids(images, images_dir)
    for p in images:  # refuse what no model can take, or what would not fit in memory, before any work
        h, w = image_size(p)
        if h < min_size or w < min_size:
            raise DataError(f"{p}: image is {w}x{h}; the model needs at least {min_size}x{min_size} pixels")
    out = check_writable_dir(out)
    _clean_stale(out)
    truth = open_dataset(labels, predictor.class_names) if labels else None
    labelled = set(truth.image_ids) if truth is not None else set()
    acc = metrics.DiceAccumulator()
    class_ids = list(range(1, predictor.num_classes + 1))
    with contextlib.ExitStack() as stack:
        sub = stack.enter_context(SubmissionWriter(out / "submission.csv", class_ids))
        pics = stack.enter_context(staged_dir(out / "overlays", True, "overlays")) if overlays else None
        for image_id, (path, pred) in zip(ids, predictor.predict_paths(images, progress=progress)):
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
                img = read_image(path, None)
                pic = viz.caption(viz.overlay(img, pred.masks), f"{image_id}: prediction")
                if true is not None:
                    pic = viz.side_by_side(pic, viz.caption(viz.overlay(img, true), "ground truth"))
                dst = pics / (image_id.replace("/", "__") + ".png")  # the full name: a.jpg and a.png differ
                cv2.imwrite(str(dst), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
    summary: dict[str, Any] = {"images": len(images), "skipped_files": _image_ids(others, images_dir),
                               "submission": str(out / "submission.csv"), "class_names": predictor.class_names,
                               "backend": predictor.backend}
    if acc._pairs:
        rep = acc.compute()
        summary["dice"] = rep.mean
        summary["dice_per_class"] = dict(zip(predictor.class_names, rep.per_class))
    atomic_json(out / "predict.json", summary)
    return summary
