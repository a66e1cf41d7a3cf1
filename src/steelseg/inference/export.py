"""ONNX export of a bundle, with a parity check against PyTorch and optional int8 quantisation.

``export_bundle(bundle, out)`` writes a bundle whose segmenters and classifiers are ``model.onnx``
files (sigmoid inside: the graph outputs probabilities; dynamic batch, and dynamic height and
width where the architecture allows, found by trying a second size), with model.json,
postprocess.json and bundle.json copied. Before anything is written, ONNX Runtime probabilities
are compared with PyTorch's on sample images and the post-processed masks must be identical;
any difference fails loudly and leaves nothing behind.

``quantize="int8"`` applies ONNX Runtime static quantisation (QDQ, per-channel int8 weights, uint8
activations) calibrated on images of the run's training data, then scores Kaggle mean Dice on a
validation split before and after; a drop larger than ``max_dice_drop`` is refused.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data.images import read_image, to_input
from steelseg.errors import DataError, SteelsegError
from steelseg.fsutil import atomic_json, staged_dir
from steelseg.inference.backends import ONNX_FILE, STRIDE, pad_to_stride
from steelseg.inference.bundle import BUNDLE_JSON, read_bundle
from steelseg.inference.predictor import Predictor
from steelseg.models.checkpoint import read_model_json, write_model_json
from steelseg.schema import ModelMeta, to_dict

__all__ = ["ExportError", "ExportReport", "bundle_dice", "check_parity", "compare_predictors", "export_bundle",
           "images_per_second"]

DEFAULT_OPSET = 17
PROB_TOLERANCE = 1e-3  # fp32 ONNX vs PyTorch: differences are float rounding, far below this


class ExportError(SteelsegError):
    """The exported model does not reproduce the original (parity) or loses too much (int8)."""


@dataclass
class ExportReport:
    out: Path
    models: list[dict[str, Any]] = field(default_factory=list)
    parity_max_abs: float = 0.0
    masks_identical: bool = True
    threshold_pixels: int = 0  # mask pixels that differ, all within float rounding of a threshold
    quantize: str | None = None
    dice_before: float | None = None
    dice_after: float | None = None
    speed_fp32: float | None = None  # images/s on the validation images (segmenters + classifiers)
    speed_int8: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "out"}
        d["out"] = str(self.out)
        return d


class _Probs:
    """Wraps a PyTorch model so the exported graph ends in a sigmoid and skips the stride padding
    (``OnnxRunner`` pads in NumPy exactly as ``Segmenter.forward`` does). A segmenter with an
    ``input_scale`` keeps its whole forward (resize, pad, crop, resize back) in the graph: the
    padding has to come after the resize there."""

    @staticmethod
    def wrap(net: Any, segment: bool, whole: bool = False) -> Any:
        """``whole``: a segmenter's full forward in the graph, resize and padding included."""
        import torch

        class Probs(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> Any:
                if segment and getattr(self.net, "cls_head", False):  # two outputs: gated masks, image head
                    from steelseg.models.factory import gated_logits

                    masks, cls = self.net.members_heads(x) if not whole else self.net.heads(x)
                    return torch.sigmoid(gated_logits(masks, cls)), torch.sigmoid(cls)
                out = self.net.members_forward(x) if segment and not whole else self.net(x)
                return torch.sigmoid(out)

        return Probs().eval()


def _export_one(runner: Any, dst: Path, sample: np.ndarray, opset: int) -> dict[str, Any]:
    """Export one torch runner to ``dst/model.onnx``; returns the model.json ``weights`` record."""
    import torch

    segment = runner.meta.task == "segment"
    # an input_scale segmenter resizes before it pads: its graph takes any size, the runner must not pad
    pads_inside = segment and runner.net.input_scale != 1.0
    net = _Probs.wrap(runner.net.float().cpu().eval(), segment, whole=pads_inside)
    x = pad_to_stride(sample[:1]) if segment and not pads_inside else sample[:1]
    dst.mkdir(parents=True)
    path = dst / ONNX_FILE
    two_head = segment and bool(getattr(runner.net, "cls_head", False))
    names = ["probs", "cls"] if two_head else ["probs"]

    def export(axes: dict[int, str]) -> None:
        out_axes = axes if segment else {k: v for k, v in axes.items() if k == 0}
        dyn = {"input": axes, "probs": out_axes}
        if two_head:
            dyn["cls"] = {k: v for k, v in axes.items() if k == 0}
        with torch.no_grad():
            torch.onnx.export(net, (torch.from_numpy(np.ascontiguousarray(x)),), str(path), dynamo=False,
                              opset_version=opset, input_names=["input"], output_names=names,
                              dynamic_axes=dyn if axes else None, do_constant_folding=True)

    info = {"format": "onnx", "file": ONNX_FILE, "opset": opset, "quantized": None, "dynamic_batch": True,
            "dynamic_hw": True, "export_size": list(x.shape[-2:]),
            "stride": STRIDE if segment and not pads_inside else None, "outputs": names}
    try:
        export({0: "batch", 2: "height", 3: "width"})
    except Exception:  # some graphs need known sizes: try a fixed-size graph, batch 1
        path.unlink(missing_ok=True)
        try:
            export({})
        except Exception as exc:
            spec = runner.meta.model
            raise ExportError(f"{runner.source}: {spec.arch or spec.encoder} cannot be exported to ONNX by this "
                              f"PyTorch ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Nothing was "
                              "written; keep the PyTorch bundle for this architecture") from None
        info.update(dynamic_hw=False, dynamic_batch=False)
        return info
    # Does the graph really take other sizes? Try one more stride step each way against PyTorch.
    other = np.pad(x, ((0, 0), (0, 0), (0, STRIDE), (0, STRIDE)), mode="reflect")
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": other})[0]
        with torch.no_grad():
            want = net(torch.from_numpy(other))
            want = (want[0] if isinstance(want, tuple) else want).numpy()
        info["dynamic_hw"] = bool(got.shape == want.shape and np.abs(got - want).max() < PROB_TOLERANCE)
    except Exception:  # a graph with sizes baked in fails at another size: fixed-size export
        info["dynamic_hw"] = False
    return info


def _sample_images(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    if not images:
        raise DataError("export needs sample images for the parity check (give --data or --samples)")
    shape = images[0].shape[:2]
    return [im for im in images if im.shape[:2] == shape]


def compare_predictors(torch_pred: Predictor, onnx_pred: Predictor, images: Sequence[np.ndarray]) -> tuple[float, int, int]:
    """(max absolute probability difference, mask pixels that differ, of those the ones whose PyTorch
    probability is not within the tolerance of its class threshold) over ``images``.

    A pixel whose probability lies within float rounding of the threshold may fall either side on
    any two runtimes (or two PyTorch versions); every other difference is a real disagreement.
    """
    worst, differ, real = 0.0, 0, 0
    thr = np.asarray(torch_pred.pp.pixel_threshold if torch_pred.pp else [0.5] * torch_pred.num_classes)
    for a, b in zip(torch_pred.predict(images), onnx_pred.predict(images)):
        worst = max(worst, float(np.abs(a.probs - b.probs).max()))
        if a.gate is not None and b.gate is not None:
            worst = max(worst, float(np.abs(a.gate - b.gate).max()))
        if a.skipped != b.skipped:
            real += 1
        bad = a.masks != b.masks
        if bad.any():
            differ += int(bad.sum())
            near = np.abs(a.probs - thr) <= PROB_TOLERANCE
            real += int((bad & ~near).sum())
    return worst, differ, real


def check_parity(torch_pred: Predictor, other: Predictor, samples: Sequence[np.ndarray], report: ExportReport,
                 what: str) -> dict[str, Any]:
    """Compare an exported predictor with PyTorch on ``samples``; fill ``report``; raise ExportError beyond the
    tolerance or on a mask pixel that differs away from the thresholds. Returns bundle.json's parity record."""
    diff, differ, real = compare_predictors(torch_pred, other, samples)
    report.parity_max_abs, report.masks_identical, report.threshold_pixels = diff, differ == 0, differ
    if diff > PROB_TOLERANCE or real:
        raise ExportError(f"{what} output differs from PyTorch on {len(samples)} sample images: max |dp| = "
                          f"{diff:.2e} (tolerance {PROB_TOLERANCE:g}), {real} mask pixel(s) differ away from "
                          "the thresholds. Nothing was written; report this with the bundle's model.json")
    return {"parity_max_abs": diff, "parity_images": len(samples), "threshold_pixels_differing": differ}


def bundle_dice(predictor: Predictor, images: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    from steelseg import metrics

    acc = metrics.DiceAccumulator()
    for pred, true in zip(predictor.predict(list(images)), truths):
        acc.update(pred.masks[None], true[None])
    return acc.compute().mean


def images_per_second(predictor: Predictor, images: Sequence[np.ndarray]) -> float:
    predictor.predict(images[:1])  # warm-up
    t0 = time.perf_counter()
    predictor.predict(images)
    return len(images) / max(time.perf_counter() - t0, 1e-9)


def _quantize(src: Path, dst: Path, calib: np.ndarray) -> None:
    """Static QDQ int8 quantisation of one ONNX file, calibrated on ``calib`` (N, C, H, W)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    pre = dst.with_name("pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception:  # shape inference is an optimisation; quantise the plain graph without it
        shutil.copyfile(src, pre)
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantiser warns once per shape tensor it leaves alone
    try:
        # U8S8 (uint8 activations, int8 weights): ONNX Runtime's fast path on x86 with VNNI; S8S8
        # measured 2x slower here (docs/results.md).
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)


def _calibration(runner_meta: ModelMeta, images: Sequence[np.ndarray], segment: bool) -> np.ndarray:
    x = to_input(images, runner_meta.input.spec())
    return pad_to_stride(x) if segment else x


def export_bundle(bundle: str | Path, out: str | Path, samples: Sequence[np.ndarray] = (),
                  quantize: str | None = None, calib_images: Sequence[np.ndarray] = (),
                  val_images: Sequence[np.ndarray] = (), val_masks: Sequence[np.ndarray] = (),
                  max_dice_drop: float = 0.005, opset: int = DEFAULT_OPSET, overwrite: bool = False,
                  threads: int | None = None) -> ExportReport:
    """Write ``out``: ``bundle`` with every model as ONNX (and int8 when asked); checked first."""
    t0 = time.perf_counter()
    bundle, out = Path(bundle), Path(out)
    if quantize not in (None, "int8"):
        raise DataError(f"--quantize {quantize}: only int8 is supported")
    if quantize and not (calib_images and val_images):
        raise DataError("int8 needs calibration and validation images: give --data (the run's training data)")
    if not np.isfinite(max_dice_drop):
        raise DataError(f"--max-dice-drop {max_dice_drop}: must be a number")
    info = read_bundle(bundle)
    if info.kind == "all-empty":
        raise DataError(f"{bundle}: the all-empty baseline has no model to export")
    torch_pred = Predictor.from_bundle(bundle, backend="torch")
    samples = _sample_images(samples)
    report = ExportReport(out, quantize=quantize)
    with staged_dir(out, overwrite, "bundle", signatures=("bundle.json",)) as stage:
        for sub in ("segmenters", "classifiers"):
            runners = torch_pred.segmenters if sub == "segmenters" else torch_pred.classifiers
            for i, runner in enumerate(runners):
                dst = stage / sub / str(i)
                x = to_input(samples[:1], runner.meta.input.spec())
                weights = _export_one(runner, dst, x, opset)
                meta = replace(runner.meta, weights=weights)
                write_model_json(dst, meta)
                report.models.append({"model": f"{sub}/{i}", **weights})
        shutil.copyfile(bundle / "postprocess.json", stage / "postprocess.json")
        exported = {**to_dict(info), "backend": "onnx", "export": {"opset": opset, "quantize": None}}
        atomic_json(stage / BUNDLE_JSON, exported)
        onnx_pred = Predictor.from_bundle(stage, backend="onnx", threads=threads)
        exported["export"].update(check_parity(torch_pred, onnx_pred, samples, report, "ONNX"))
        if quantize:
            _int8(stage, onnx_pred, calib_images, val_images, val_masks, max_dice_drop, report, threads)
            exported["export"].update({"quantize": "int8", "dice_before": report.dice_before,
                                       "dice_after": report.dice_after})
        atomic_json(stage / BUNDLE_JSON, exported)
    report.seconds = time.perf_counter() - t0
    return report


def _int8(stage: Path, fp32: Predictor, calib_images: Sequence[np.ndarray], val_images: Sequence[np.ndarray],
          val_masks: Sequence[np.ndarray], max_drop: float, report: ExportReport, threads: int | None) -> None:
    """Quantise every model in ``stage`` in place, or raise ExportError when Dice drops too much."""
    report.dice_before = bundle_dice(fp32, val_images, val_masks)
    report.speed_fp32 = images_per_second(fp32, val_images)
    shape = calib_images[0].shape[:2]
    calib = [im for im in calib_images if im.shape[:2] == shape]
    for runner in fp32.segmenters + fp32.classifiers:
        folder = runner.source
        src = folder / ONNX_FILE
        tmp = folder / "model.int8.onnx"
        _quantize(src, tmp, _calibration(runner.meta, calib, runner.meta.task == "segment"))
        tmp.replace(src)
        meta = read_model_json(folder)
        write_model_json(folder, replace(meta, weights={**(meta.weights or {}), "quantized": "int8"}))
    int8 = Predictor.from_bundle(stage, backend="onnx", threads=threads)
    report.dice_after = bundle_dice(int8, val_images, val_masks)
    report.speed_int8 = images_per_second(int8, val_images)
    drop = report.dice_before - report.dice_after
    if drop > max_drop:
        raise ExportError(f"int8 lowers Kaggle mean Dice from {report.dice_before:.4f} to {report.dice_after:.4f} "
                          f"on {len(val_images)} validation images (drop {drop:.4f} > allowed {max_drop}); "
                          "nothing was written. Keep fp32, or allow more with --max-dice-drop")


def load_export_data(bundle: str | Path, data: str | Path | None, calib_count: int = 32,
                     val_count: int = 64, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Sample, calibration (training split) and validation images (+ masks) for an export.

    ``data`` defaults to the data the bundle's first segmenter was trained on (model.json).
    """
    from steelseg.data.open import open_dataset

    bundle = Path(bundle)
    info = read_bundle(bundle)
    seg = sorted((bundle / "segmenters").glob("*/model.json"))
    if not seg:
        raise DataError(f"{bundle}: no segmenter to export")
    meta = read_model_json(seg[0].parent)
    data = data or meta.trained_on.get("data")
    if not data or not Path(data).exists():
        raise DataError(f"training data {data!r} of {seg[0]} not found; give --data")
    ds = open_dataset(data, info.class_names)
    split = _run_split(seg[0].parent, ds)
    rng = np.random.default_rng(seed)
    train_ids = split.get("train") or ds.image_ids
    val_ids = split.get("val") or ds.image_ids
    calib = [str(i) for i in rng.choice(train_ids, min(calib_count, len(train_ids)), replace=False)]
    val = [str(i) for i in rng.choice(val_ids, min(val_count, len(val_ids)), replace=False)]
    return {"calib": [read_image(ds.row(i)["path"], None) for i in calib],
            "val": [read_image(ds.row(i)["path"], None) for i in val],
            "val_masks": [ds.load_mask(i) for i in val]}


def _run_split(model_dir: Path, ds: Any) -> dict[str, list[str]]:
    """The train / val ids the model was trained with, when the run's split.json is at hand."""
    known = set(ds.image_ids)
    for cand in (model_dir / "split.json", model_dir.parent / "split.json"):
        if cand.is_file():
            split = json.loads(cand.read_text())
            return {k: [i for i in split.get(k, []) if i in known] for k in ("train", "val")}
    if "train" in ds.splits and "val" in ds.splits:
        return {"train": ds.splits["train"], "val": ds.splits["val"]}
    return {}
