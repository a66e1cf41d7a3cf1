"""The prediction pipeline: classifier gating -> segmentation (+ flip TTA, fold ensembles) ->
post-processing. :class:`Predictor` loads from a bundle (:mod:`steelseg.inference.bundle`) or model
folders; its models are runners (:mod:`steelseg.inference.backends`), so gating, TTA and
post-processing are written once for PyTorch and ONNX Runtime alike.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from steelseg.data.images import InputSpec, read_image, to_input
from steelseg.errors import DataError
from steelseg.inference import postprocess
from steelseg.inference.backends import Runner, load_runner
from steelseg.inference.bundle import BUNDLE_JSON, bundle_backend, bundle_model_dirs, read_bundle, resolve_model_dir
from steelseg.inference.tiles import tile_grid
from steelseg.models.checkpoint import read_model_json

__all__ = ["Prediction", "Predictor", "TTA_FLIPS"]


@dataclass
class Prediction:
    """Per image: probabilities (H, W, C), masks after post-processing, gate probabilities."""

    probs: np.ndarray
    masks: np.ndarray
    gate: np.ndarray | None = None
    gate_any: float | None = None
    skipped: bool = False  # the gating classifier called the image defect-free


TTA_FLIPS: list[tuple[int, ...]] = [(), (-1,), (-2,)]  # axes of (N, C, H, W) to flip; () = identity


def _check_models(segs: list[Runner], clss: list[Runner]) -> list[str]:
    """The class names all models share (a binary classifier gates any classes); each in its role."""
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
    return list(names)


STRIP_PIXELS = 256 * 1600  # batch_size images of this size is the memory a call may take


@dataclass
class Predictor:
    """Runs segmenters (averaged) and classifiers (averaged) and post-processes their output.

    Models are runners (:mod:`steelseg.inference.backends`): PyTorch or ONNX Runtime, picked from the files.
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
                    which: str = "best", backend: str | None = None, threads: int | None = None,
                    streams: int | None = None) -> Predictor:
        seg_dirs = [resolve_model_dir(p) for p in segmenters]
        cls_dirs = [resolve_model_dir(p) for p in classifiers]
        if not seg_dirs:
            raise DataError("no segmenter given")
        metas = {d: read_model_json(d) for d in seg_dirs + cls_dirs}  # each model.json parsed once
        backend = backend or bundle_backend(metas)
        segs = [load_runner(d, backend, device, which, threads, metas[d], streams) for d in seg_dirs]
        clss = [load_runner(d, backend, device, which, threads, metas[d], streams) for d in cls_dirs]
        names = _check_models(segs, clss)
        pp = pp or postprocess.PostProcess.default(len(names))
        if pp.num_classes != len(names):
            raise DataError(f"post-processing has {pp.num_classes} classes, the models {len(names)}")
        return cls(segs, clss, pp, names, tta, device, backend=backend)

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu", tta: bool | None = None,
                    backend: str | None = None, threads: int | None = None, tile: int | None = None,
                    overlap: int | None = None, streams: int | None = None) -> Predictor:
        """Load a bundle; ``backend`` (torch / onnx / openvino) defaults to what its model files are; ``tile`` /
        ``overlap`` default to the bundle's setting (none: whole images); ``streams``: see ``load_runner``."""
        path = Path(path)
        info = read_bundle(path)
        pp = postprocess.PostProcess.load(path / "postprocess.json")
        if pp.num_classes != len(info.class_names):
            raise DataError(f"{path / 'postprocess.json'}: {pp.num_classes} classes, but bundle.json names "
                            f"{len(info.class_names)} ({', '.join(info.class_names)})")
        use_tta = info.tta if tta is None else tta
        if info.kind == "all-empty":
            return cls([], [], pp, info.class_names, use_tta, device, empty=True, backend=backend or "torch")
        segs, clss = bundle_model_dirs(path, info)
        pred = cls.from_models(segs, clss, pp, use_tta, device, backend=backend, threads=threads, streams=streams)
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
        return self._run_both(models, images, tta)[0]

    def _run_both(self, models: list[Runner], images: Sequence[np.ndarray],
                  tta: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Average probabilities over models (and flips for segmenters), and the image-level probabilities
        of two-head segmenters (model.cls_head) averaged alike, or None when no model has that head."""
        total = cls_total = None
        n = n_cls = 0
        inputs: dict[InputSpec, np.ndarray] = {}  # fold models share a normalisation: prepare once
        for m in models:
            spec = m.meta.input.spec()
            if spec not in inputs:
                inputs[spec] = to_input(images, spec)
            x = inputs[spec]
            seg = m.meta.task == "segment"
            for axes in (TTA_FLIPS if tta and seg else [()]):
                xin = np.flip(x, axes) if axes else x
                out, cls = m.run_both(xin) if hasattr(m, "run_both") else (m(xin), None)
                if axes:
                    out = np.flip(out, axes)
                total = out if total is None else total + out
                n += 1
                if cls is not None:
                    cls_total = cls if cls_total is None else cls_total + cls
                    n_cls += 1
        cls_mean = None if cls_total is None else np.ascontiguousarray(cls_total / n_cls, np.float32)
        return np.ascontiguousarray(total / n, np.float32), cls_mean

    def _gates(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classifier probabilities (n, K) or (n, 1) -> per-class gates (n, K), the any-defect gate (n,) and
        which images to segment (the rest the gate calls defect-free). A binary (defect / no defect)
        classifier gates every class on its one probability."""
        gate_any = g.max(axis=1)
        gate = g if g.shape[1] == self.num_classes else np.repeat(gate_any[:, None], self.num_classes, axis=1)
        run_seg = np.ones(len(g), bool)
        if self.pp is not None and self.pp.gate_any is not None:
            run_seg = gate_any >= self.pp.gate_any
        return gate, gate_any, run_seg

    def _finish(self, probs: np.ndarray, gate: np.ndarray | None, gate_any: float | None,
                skipped: bool) -> Prediction:
        """Post-process one image's (H, W, K) probabilities into its :class:`Prediction`."""
        masks = postprocess.apply(probs, self.pp, gate, gate_any)
        return Prediction(probs, masks, gate, gate_any, skipped)

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
            step = self.batch_for(shape)
            for start in range(0, len(idx), step):
                chunk = idx[start:start + step]
                for i, pred in zip(chunk, self._predict_same_size([images[j] for j in chunk], shape)):
                    results[i] = pred
        return [r for r in results if r is not None]

    def batch_for(self, shape: tuple[int, int]) -> int:
        """Images per model call: ``batch_size`` for a 1600x256 strip or larger; small images go in more of
        them, up to the same pixels and at most 16 (a 200x200 NEU-Seg image: 16; fewer, larger calls run
        faster on every backend, bench in docs/results.md)."""
        pixels = max(1, shape[0] * shape[1])
        return max(self.batch_size, min(16, self.batch_size * STRIP_PIXELS // pixels))

    def predict_tiled(self, image: np.ndarray) -> Prediction:
        """One large image in overlapping ``tile`` x ``tile`` windows (:mod:`steelseg.inference.tiles`)."""
        grid = tile_grid(image.shape[:2], self.tile, self.overlap, self.batch_size)
        gate = gate_any = None
        run_seg = True
        if self.classifiers:
            g = grid.max_over_tiles(image, lambda crops: self._run(self.classifiers, crops, False))
            gates, anys, runs = self._gates(g[None])
            gate, gate_any, run_seg = gates[0], float(anys[0]), bool(runs[0])
        probs = np.zeros((self.num_classes, *image.shape[:2]), np.float32)
        if run_seg:
            probs = grid.blend(image, lambda crops: self._run(self.segmenters, crops, self.tta), self.num_classes)
        return self._finish(probs.transpose(1, 2, 0), gate, gate_any, not run_seg)

    def _predict_same_size(self, images: Sequence[np.ndarray], shape: tuple[int, int]) -> list[Prediction]:
        k = self.num_classes
        n = len(images)
        if self.empty:
            z = np.zeros((*shape, k), np.float32)
            return [Prediction(z, np.zeros((*shape, k), np.uint8)) for _ in range(n)]
        gate = gate_any = None
        run_seg = np.ones(n, bool)
        if self.classifiers:
            gate, gate_any, run_seg = self._gates(self._run(self.classifiers, images, False))
        probs = np.zeros((n, k, *shape), np.float32)
        if run_seg.any():
            sel = np.flatnonzero(run_seg)
            probs[sel], head = self._run_both(self.segmenters, [images[i] for i in sel], self.tta)
            if head is not None and gate is None:  # a two-head segmenter is its own (soft) gate
                gate = np.zeros((n, k), np.float32)
                gate[sel] = head
        probs = probs.transpose(0, 2, 3, 1)
        return [self._finish(probs[i], None if gate is None else gate[i],
                             None if gate_any is None else float(gate_any[i]), not run_seg[i]) for i in range(n)]

    def predict_paths(self, paths: Iterable[str | Path], progress: bool = False, prefetch: bool | None = None,
                      on_error: Callable[[Path, Exception], None] | None = None) -> Iterable[tuple[Path, Prediction]]:
        """Yield (path, prediction) for image files, reading them in batches as stored (gray or
        colour); each model's input is then made by :func:`steelseg.data.images.to_input`.

        Streaming: one batch of images and probabilities is held at a time, so memory does not grow with
        the folder. ``prefetch`` decodes the next batch in a thread while the models run (default: on
        when the machine has more than 2 cores; ``bench/predict_stream.py`` measures it). Progress: a
        tqdm bar (images/s, ETA) on a terminal, else a line with images/s and the ETA every 30 s."""
        paths = [Path(p) for p in paths]
        step = self._first_batch(paths)
        chunks = [paths[i:i + step] for i in range(0, len(paths), step)]
        if prefetch is None:
            prefetch = (os.cpu_count() or 1) > 2
        meter = _Progress(len(paths), progress)
        try:
            for chunk, images in _decoded(chunks, prefetch, on_error):
                if images:
                    yield from zip(chunk, self.predict(images))
                meter.update(len(chunk))
        finally:
            meter.close()

    def _first_batch(self, paths: list[Path]) -> int:
        """:meth:`batch_for` the first image's size, read from its header (a folder's images share one
        size, as a line's camera makes them); ``batch_size`` when it cannot be read (decoding says why)."""
        if not paths or self.tile:
            return self.batch_size
        try:
            from PIL import Image

            with Image.open(paths[0]) as im:
                w, h = im.size
        except (OSError, ValueError):
            return self.batch_size
        return self.batch_for((h, w))


def _decoded(chunks: list[list[Path]], prefetch: bool, on_error: Callable[[Path, Exception], None] | None = None
             ) -> Iterator[tuple[list[Path], list[np.ndarray]]]:
    """(chunk, its images) in order; with ``prefetch`` the next chunk is decoded while this one is used. With
    ``on_error`` an image that cannot be read is handed to it and left out, instead of stopping the stream."""
    def read(chunk: list[Path]) -> tuple[list[Path], list[np.ndarray]]:
        if on_error is None:
            return chunk, [read_image(p, None) for p in chunk]
        good, images = [], []
        for p in chunk:
            try:
                images.append(read_image(p, None))
                good.append(p)
            except (DataError, OSError, ValueError) as exc:
                on_error(p, exc)
        return good, images

    if not prefetch or len(chunks) < 2:
        for chunk in chunks:
            yield read(chunk)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="steelseg-decode") as pool:
        nxt = pool.submit(read, chunks[0])
        for i in range(len(chunks)):
            done = nxt.result()
            if i + 1 < len(chunks):
                nxt = pool.submit(read, chunks[i + 1])
            yield done


class _Progress:
    """A tqdm bar on a terminal; elsewhere (logs, CI) a line every ``every`` seconds with images/s and ETA."""

    def __init__(self, total: int, bar: bool, every: float = 30.0) -> None:
        self.total, self.done, self.every = total, 0, every
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="predicting", unit="img")

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            print(f"predicted {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), {rate:.2f} img/s, "
                  f"ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
