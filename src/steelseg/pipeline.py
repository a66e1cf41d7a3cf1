"""The prediction pipeline: classifier gating -> segmentation (+ flip TTA, fold ensembles) ->
post-processing, packed as a **bundle** folder that ``Predictor.from_bundle`` loads::

    bundle/
      bundle.json          what is inside, classes, TTA, baseline kind
      postprocess.json     tuned per-class thresholds, minimum areas, gates
      segmenters/0/        model.json + best.safetensors (one folder per fold model)
      classifiers/0/       optional gating classifiers, same format
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelseg import postprocess
from steelseg.errors import DataError

__all__ = ["Predictor", "Prediction", "write_bundle", "resolve_model_dir"]

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
class _Model:
    net: Any
    meta: dict[str, Any]
    which: str = "best"


@dataclass
class Prediction:
    """Per image: probabilities (H, W, C), masks after post-processing, gate probabilities."""

    probs: np.ndarray
    masks: np.ndarray
    gate: np.ndarray | None = None
    gate_any: float | None = None
    skipped: bool = False  # the gating classifier called the image defect-free


@dataclass
class Predictor:
    """Runs segmenters (averaged) and classifiers (averaged) and post-processes their output."""

    segmenters: list[_Model]
    classifiers: list[_Model] = field(default_factory=list)
    pp: postprocess.PostProcess | None = None
    class_names: list[str] = field(default_factory=list)
    tta: bool = False
    device: str = "cpu"
    batch_size: int = 4
    empty: bool = False  # the all-empty baseline: predicts no defect anywhere

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_models(cls, segmenters: Sequence[str | Path], classifiers: Sequence[str | Path] = (),
                    pp: postprocess.PostProcess | None = None, tta: bool = False, device: str = "cpu",
                    which: str = "best") -> Predictor:
        from steelseg.checkpoint import load_model

        segs = [_Model(*load_model(resolve_model_dir(p), which, device), which) for p in segmenters]
        clss = [_Model(*load_model(resolve_model_dir(p), which, device), which) for p in classifiers]
        if not segs:
            raise DataError("no segmenter given")
        names = segs[0].meta["class_names"]
        for m in segs + clss:
            if m.meta["class_names"] != names and not (m.meta["model"]["task"] == "classify"
                                                       and m.meta["model"]["outputs"] == 1):
                raise DataError(f"models disagree on classes: {names} vs {m.meta['class_names']}")
        for m in segs:
            if m.meta["model"]["task"] != "segment":
                raise DataError(f"{m.meta['model']} is not a segmenter")
        return cls(segs, clss, pp or postprocess.PostProcess.default(len(names)), list(names), tta, device)

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu", tta: bool | None = None) -> Predictor:
        path = Path(path)
        info_path = path / BUNDLE_JSON
        if not info_path.is_file():
            raise DataError(f"{info_path}: missing; a bundle is made by `steelseg tune` or `steelseg bundle`")
        info = json.loads(info_path.read_text())
        pp_path = path / "postprocess.json"
        if not pp_path.is_file():
            raise DataError(f"{pp_path}: missing from the bundle")
        pp = postprocess.PostProcess.load(pp_path)
        use_tta = info.get("tta", False) if tta is None else tta
        if info.get("kind") == "all-empty":
            return cls([], [], pp, info["class_names"], use_tta, device, empty=True)
        segs = sorted((path / "segmenters").glob("*/model.json"))
        if not segs:
            raise DataError(f"{path / 'segmenters'}: no segmenter in the bundle (missing model files?)")
        clss = sorted((path / "classifiers").glob("*/model.json"))
        for mj in segs + clss:
            if not (mj.parent / "best.safetensors").is_file():
                raise DataError(f"{mj.parent / 'best.safetensors'}: missing from the bundle")
        return cls.from_models([p.parent for p in segs], [p.parent for p in clss], pp, use_tta, device)

    # ---- inference ----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _tensor(self, images: Sequence[np.ndarray], meta: dict[str, Any]) -> Any:
        import torch

        inp = meta["input"]
        ch = inp["channels"]
        arrs = []
        for img in images:
            if img.ndim == 2 and ch == 3:
                img = np.repeat(img[..., None], 3, axis=2)
            elif img.ndim == 3 and ch == 1:
                img = img.mean(axis=2)
            x = img.astype(np.float32) * inp.get("scale", 1 / 255)
            x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
            mean = np.asarray(inp["mean"], np.float32).reshape(-1, 1, 1)
            std = np.asarray(inp["std"], np.float32).reshape(-1, 1, 1)
            arrs.append((x - mean) / std)
        return torch.from_numpy(np.stack(arrs)).to(self.device)

    def _run(self, models: list[_Model], images: Sequence[np.ndarray], tta: bool) -> np.ndarray:
        """Average sigmoid outputs over models (and flips for segmenters)."""
        import torch

        from steelseg.augment import TTA_FLIPS

        total = None
        n = 0
        inputs: dict[str, Any] = {}  # fold models share their normalisation: prepare the batch once
        with torch.inference_mode():
            for m in models:
                key = json.dumps(m.meta["input"], sort_keys=True)
                if key not in inputs:
                    inputs[key] = self._tensor(images, m.meta)
                x = inputs[key]
                seg = m.meta["model"]["task"] == "segment"
                for axes in (TTA_FLIPS if tta and seg else [()]):
                    xi = torch.flip(x, axes) if axes else x
                    out = torch.sigmoid(m.net(xi).float())
                    if axes:
                        out = torch.flip(out, axes)
                    total = out if total is None else total + out
                    n += 1
        return (total / n).cpu().numpy()

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict a list of (H, W) or (H, W, 3) uint8 images (sizes may differ)."""
        results: list[Prediction | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(i)
        for shape, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                for i, pred in zip(chunk, self._predict_same_size([images[j] for j in chunk], shape)):
                    results[i] = pred
        return [r for r in results if r is not None]

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
        """Yield (path, prediction) for image files, reading them in batches."""
        from steelseg.datasets import load_image

        paths = [Path(p) for p in paths]
        models = self.segmenters + self.classifiers
        ch = max((m.meta["input"]["channels"] for m in models), default=1)  # RGB models get colour
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(paths), desc="predicting", unit="img")
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start:start + self.batch_size]
            images = [load_image(p, ch) for p in chunk]
            yield from zip(chunk, self.predict(images))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()


def write_bundle(out: str | Path, segmenters: Sequence[str | Path], classifiers: Sequence[str | Path] = (),
                 pp: postprocess.PostProcess | None = None, class_names: Sequence[str] | None = None,
                 tta: bool = False, kind: str = "pipeline", extra: dict[str, Any] | None = None) -> Path:
    """Copy model folders (model.json + best.safetensors) and post-processing into a bundle."""
    from steelseg.checkpoint import read_model_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("segmenters", "classifiers"):
        shutil.rmtree(out / sub, ignore_errors=True)
    names = list(class_names) if class_names else None
    for sub, dirs in (("segmenters", segmenters), ("classifiers", classifiers)):
        for i, d in enumerate(dirs):
            src = resolve_model_dir(d)
            dst = out / sub / str(i)
            dst.mkdir(parents=True)
            shutil.copyfile(src / "model.json", dst / "model.json")
            weights = src / "best.safetensors"
            if not weights.is_file():
                raise DataError(f"{weights}: missing")
            shutil.copyfile(weights, dst / "best.safetensors")
            if names is None and sub == "segmenters":
                names = read_model_json(src)["class_names"]
    if names is None:
        raise DataError("a bundle needs class names (none given and no segmenter to read them from)")
    pp = pp or postprocess.PostProcess.default(len(names))
    pp.save(out / "postprocess.json")
    info = {"format": "steelseg-bundle/1", "kind": kind, "class_names": list(names), "tta": tta,
            "segmenters": len(segmenters), "classifiers": len(classifiers), **(extra or {})}
    (out / BUNDLE_JSON).write_text(json.dumps(info, indent=2))
    return out


def list_images(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) in a folder, sorted by name."""
    from steelseg.datasets import IMAGE_EXTS

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    return images, [p for p in files if p not in images]


def predict_folder(bundle: str | Path, images_dir: str | Path, out: str | Path, overlays: bool = False,
                   labels: str | Path | None = None, tta: bool | None = None, device: str = "cpu",
                   progress: bool = False, min_size: int = 16) -> dict[str, Any]:
    """Write ``out/submission.csv`` (and overlays) for every image in ``images_dir``."""
    import cv2

    from steelseg import metrics, viz
    from steelseg.datasets import _image_size, load_image, open_dataset
    from steelseg.submission import SubmissionWriter

    predictor = Predictor.from_bundle(bundle, device=device, tta=tta)
    images, others = list_images(images_dir)
    if not images:
        raise DataError(f"{images_dir}: no images (looked for .jpg, .jpeg, .png, .bmp, .tif)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    truth = open_dataset(labels, predictor.class_names) if labels else None
    labelled = set(truth.image_ids) if truth is not None else set()
    for p in images:  # refuse what no model can take, before any work is done
        h, w = _image_size(p)
        if h < min_size or w < min_size:
            raise DataError(f"{p}: image is {w}x{h}; the model needs at least {min_size}x{min_size} pixels")
    acc = metrics.DiceAccumulator()
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
    class_ids = list(range(1, predictor.num_classes + 1))
    with SubmissionWriter(out / "submission.csv", class_ids) as sub:
        for path, pred in predictor.predict_paths(images, progress=progress):
            sub.add(path.name, pred.masks)
            true = None
            if truth is not None and path.name in labelled:
                true = truth.load_mask(path.name)
                acc.update(pred.masks[None], true[None])
            if overlays:
                img = load_image(path)
                pic = viz.caption(viz.overlay(img, pred.masks), f"{path.name}: prediction")
                if true is not None:
                    pic = viz.side_by_side(pic, viz.caption(viz.overlay(img, true), "ground truth"))
                cv2.imwrite(str(out / "overlays" / (path.stem + ".png")), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
    summary: dict[str, Any] = {"images": len(images), "skipped_files": [p.name for p in others],
                               "submission": str(out / "submission.csv"), "class_names": predictor.class_names}
    if acc._pairs:
        rep = acc.compute()
        summary["dice"] = rep.mean
        summary["dice_per_class"] = dict(zip(predictor.class_names, rep.per_class))
    (out / "predict.json").write_text(json.dumps(summary, indent=2))
    return summary
