"""``steelseg export BUNDLE --format openvino [--precision fp32|bf16|int8|int8-bf16]``: see
:mod:`steelseg.inference.openvino` for what each precision means and how int8 keeps its Dice."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data.images import to_input
from steelseg.errors import DataError
from steelseg.fsutil import atomic_json, staged_dir
from steelseg.inference import postprocess
from steelseg.inference.backends import ONNX_FILE
from steelseg.inference.bundle import BUNDLE_JSON, read_bundle
from steelseg.inference.export import (
    ExportError,
    ExportReport,
    bundle_dice,
    check_parity,
    export_bundle,
    images_per_second,
)
from steelseg.inference.openvino import IR_FILE, PRECISIONS, fp32_layers, openvino_module, ov_core
from steelseg.inference.padding import pad_to_stride
from steelseg.inference.predictor import Predictor
from steelseg.models.checkpoint import read_model_json, write_model_json
from steelseg.schema import to_dict

__all__ = ["export_openvino"]


def _to_ir(folder: Path) -> None:
    """model.onnx -> model.xml + model.bin (fp32 weights) in ``folder``; model.json follows."""
    ov = openvino_module()
    model = ov.convert_model(str(folder / ONNX_FILE))
    ov.save_model(model, str(folder / IR_FILE), compress_to_fp16=False)
    (folder / ONNX_FILE).unlink()
    meta = read_model_json(folder)
    weights = {**(meta.weights or {}), "format": "openvino", "file": IR_FILE, "precision": "fp32"}
    weights.pop("quantized", None)
    write_model_json(folder, replace(meta, weights=weights))


def _set_precision(stage: Path, precision: str, extra: dict[str, Any] | None = None) -> None:
    for mj in sorted(stage.glob("*/*/model.json")):
        meta = read_model_json(mj.parent)
        write_model_json(mj.parent, replace(meta, weights={**(meta.weights or {}), "precision": precision,
                                                           **(extra or {}).get(str(mj.parent.relative_to(stage)), {})}))


def _guard(name: str, before: float, after: float, n: int, max_drop: float) -> None:
    drop = before - after
    if drop > max_drop:
        raise ExportError(f"OpenVINO {name} lowers Kaggle mean Dice from {before:.4f} to {after:.4f} on {n} "
                          f"validation images (drop {drop:.4f} > allowed {max_drop}); nothing was written. Keep "
                          "fp32, or allow more with --max-dice-drop")


def export_openvino(bundle: str | Path, out: str | Path, samples: Sequence[np.ndarray], precision: str = "fp32",
                    calib_images: Sequence[np.ndarray] = (), val_images: Sequence[np.ndarray] = (),
                    val_masks: Sequence[np.ndarray] = (), max_dice_drop: float = 0.005, threads: int | None = None,
                    overwrite: bool = False, opset: int = 17, keep_fp32: Sequence[str] = ()) -> ExportReport:
    """Write ``out``: ``bundle`` as OpenVINO IR at ``precision``, checked against PyTorch (fp32 parity) and
    guarded by validation Dice (bf16, int8). ``keep_fp32``: layer names int8 leaves in fp32 from the start."""
    t0 = time.perf_counter()
    if precision not in PRECISIONS:
        raise DataError(f"--precision {precision}: one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and not (val_images and (calib_images or precision == "bf16")):
        raise DataError(f"{precision} needs validation (and for int8 calibration) images: give --data")
    if not np.isfinite(max_dice_drop):
        raise DataError(f"--max-dice-drop {max_dice_drop}: must be a number")
    openvino_module()
    bundle, out = Path(bundle), Path(out)
    info = read_bundle(bundle)
    torch_pred = Predictor.from_bundle(bundle, backend="torch")
    report = ExportReport(out, quantize=None if precision == "fp32" else precision)
    with tempfile.TemporaryDirectory(prefix=".ov-export-", dir=out.parent if out.parent.exists() else None) as tmp:
        onnx_dir = Path(tmp) / "onnx"
        onnx_rep = export_bundle(bundle, onnx_dir, samples, opset=opset, threads=threads)  # PyTorch -> ONNX, checked
        with staged_dir(out, overwrite, "bundle", signatures=("bundle.json",)) as stage:
            shutil.copytree(onnx_dir, stage, dirs_exist_ok=True)
            for model_json in sorted(stage.glob("*/*/model.json")):
                _to_ir(model_json.parent)
            exported = {**to_dict(info), "backend": "openvino",
                        "export": {"format": "openvino", "precision": "fp32", "opset": opset,
                                   "onnx_parity_max_abs": onnx_rep.parity_max_abs}}
            atomic_json(stage / BUNDLE_JSON, exported)
            fp32 = Predictor.from_bundle(stage, backend="openvino", threads=threads)
            exported["export"].update(check_parity(torch_pred, fp32, list(samples), report, "OpenVINO"))
            if precision != "fp32":
                exported["export"].update(_reduced(stage, fp32, precision, calib_images, val_images, val_masks,
                                                   max_dice_drop, report, threads, keep_fp32))
            atomic_json(stage / BUNDLE_JSON, exported)
    report.seconds = time.perf_counter() - t0
    return report


def _reduced(stage: Path, fp32: Predictor, precision: str, calib: Sequence[np.ndarray], val: Sequence[np.ndarray],
             masks: Sequence[np.ndarray], max_drop: float, report: ExportReport, threads: int | None,
             keep_fp32: Sequence[str]) -> dict[str, Any]:
    """bf16 or int8 in place in ``stage``, refused when the Dice drop is above ``max_drop``."""
    report.dice_before = bundle_dice(fp32, val, masks)
    report.speed_fp32 = images_per_second(fp32, val)
    kept: dict[str, list[str]] = {}
    if precision == "bf16":
        _set_precision(stage, "bf16")
    else:
        kept = _int8_models(stage, fp32, calib, val, masks, max_drop, keep_fp32)
        _set_precision(stage, precision, {k: {"fp32_layers": v} for k, v in kept.items()})
    reduced = Predictor.from_bundle(stage, backend="openvino", threads=threads)
    report.dice_after = bundle_dice(reduced, val, masks)
    report.speed_int8 = images_per_second(reduced, val)
    _guard(precision, report.dice_before, report.dice_after, len(val), max_drop)
    return {"precision": precision, "dice_before": report.dice_before, "dice_after": report.dice_after,
            "validation_images": len(val), "speed_fp32": report.speed_fp32, "speed_reduced": report.speed_int8,
            **({"fp32_layers": kept} if precision != "bf16" else {})}


def _inputs(runner: Any, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One model input (batch 1, padded to the stride) per image; sizes may differ (the IR's are dynamic)."""
    seg = runner.meta.task == "segment"
    out = []
    for im in images:
        x = to_input([im], runner.meta.input.spec())
        out.append(np.ascontiguousarray(pad_to_stride(x) if seg else x, np.float32))
    return out


def _int8_models(stage: Path, fp32: Predictor, calib: Sequence[np.ndarray], val: Sequence[np.ndarray],
                 masks: Sequence[np.ndarray], max_drop: float, keep_fp32: Sequence[str]) -> dict[str, list[str]]:
    """NNCF int8 of every model in place; segmenters with accuracy control on their own Dice."""
    import nncf

    ov = openvino_module()
    kept: dict[str, list[str]] = {}
    pp = fp32.pp or postprocess.PostProcess.default(fp32.num_classes)
    for runner in fp32.segmenters + fp32.classifiers:
        folder = runner.source
        model = ov_core().read_model(str(folder / IR_FILE))
        cal = nncf.Dataset(_inputs(runner, calib))
        ignored = nncf.IgnoredScope(names=list(keep_fp32), validate=False) if keep_fp32 else None
        common = {"subset_size": len(calib), "ignored_scope": ignored, "preset": nncf.QuantizationPreset.PERFORMANCE}
        if runner.meta.task == "segment" and max_drop >= 0:
            items = list(zip(_inputs(runner, val), masks))
            q = nncf.quantize_with_accuracy_control(
                model, cal, nncf.Dataset(items, lambda it: it[0]), _dice_fn(pp), max_drop=max_drop,
                drop_type=nncf.DropType.ABSOLUTE, **common,
                advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(max_num_iterations=40))
        else:
            q = nncf.quantize(model, cal, **common)
        for f in (IR_FILE, IR_FILE.replace(".xml", ".bin")):
            (folder / f).unlink()
        ov.save_model(q, str(folder / IR_FILE), compress_to_fp16=False)
        name = str(folder.relative_to(stage))
        kept[name] = fp32_layers(q)
        print(f"int8 {name}: {len(kept[name])} layer(s) kept out of int8", file=sys.stderr, flush=True)
    return kept


def _dice_fn(pp: postprocess.PostProcess) -> Any:
    """NNCF's validation function: the segmenter's Kaggle mean Dice after the bundle's post-processing."""
    from steelseg import metrics

    def validate(compiled: Any, items: Any) -> float:
        acc = metrics.DiceAccumulator()
        for x, mask in items:
            h, w = mask.shape[:2]
            probs = np.asarray(compiled(x)[0])[0, :, :h, :w].transpose(1, 2, 0)
            acc.update(postprocess.apply(probs, pp)[None], mask[None])
        return float(acc.compute().mean)

    return validate
