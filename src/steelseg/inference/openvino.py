"""OpenVINO: the runner (``--backend openvino``) and the export (``steelseg export --format openvino``).

The export goes PyTorch -> ONNX (steelseg's own export, with its parity check) -> OpenVINO IR
(``model.xml`` + ``model.bin``, fp32 weights), and checks the IR against PyTorch again. Precisions:

* ``fp32``: the IR run in float32 (``INFERENCE_PRECISION_HINT f32``: OpenVINO would otherwise pick bf16
  on CPUs that have it);
* ``bf16``: the same IR run in bfloat16 on CPUs with AVX-512 BF16 / AMX; guarded by Kaggle Dice on
  validation images (``--max-dice-drop``), as int8 is;
* ``int8``: NNCF post-training quantisation calibrated on training images. When the Dice drop exceeds
  ``--max-dice-drop``, NNCF's accuracy-aware quantisation ranks the quantised layers by how much each
  costs in Dice on the validation images and returns the most sensitive ones to fp32 until the drop
  is within the limit. The layers kept in fp32 are listed in bundle.json (``export.fp32_layers``) and
  model.json, so a later export can start from them;
* ``int8-bf16``: the same int8 IR, with every layer left out of int8 (the ones NNCF does not quantise and
  the kept ones) run in bf16 instead of fp32; guarded by Dice like the others (on CPUs without bf16
  OpenVINO runs those layers in fp32).

The precision lives in each model.json (``weights.precision``); the runner compiles each model once, with
the thread count asked for. A batch of several images is split over ``streams`` infer requests run at
once (OpenVINO CPU streams, threads shared among them): on 2 cores two streams of one thread each
beat one request on both for the small batches inference uses (bench in docs/results.md). One image
at a time (the service) is faster on one stream with every thread: ``streams=1``. NumPy in, NumPy out;
padding to the stride as the ONNX runner does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.errors import DataError
from steelseg.inference.padding import STRIDE, check_inner_pad, pad_to_stride
from steelseg.models.checkpoint import model_file
from steelseg.schema import ModelMeta

__all__ = ["IR_FILE", "PRECISIONS", "OpenVinoRunner", "auto_streams", "compile_config", "fp32_layers",
           "openvino_module", "ov_core"]

IR_FILE = "model.xml"
PRECISIONS = ("fp32", "bf16", "int8", "int8-bf16")
_CORE: Any = None


def openvino_module() -> Any:
    try:
        import openvino as ov
    except ImportError as exc:  # pragma: no cover - the openvino extra is missing
        raise DataError(f"OpenVINO models need openvino: pip install 'steelseg[openvino]' ({exc})") from None
    return ov


def ov_detail(exc: BaseException) -> str:
    """What OpenVINO says went wrong, without its first line (``Exception from src/inference/src/cpp/core.cpp:84:``,
    the place in its C++ sources) and its check locations."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("Exception from", "Check '")) and not ln.endswith(".cpp:")]
    return "; ".join(said[:3])[:400] or (lines[0][:300] if lines else type(exc).__name__)


def ov_core() -> Any:
    """One OpenVINO Core per process (it caches devices and plugins)."""
    global _CORE
    if _CORE is None:
        _CORE = openvino_module().Core()
    return _CORE


def compile_config(precision: str, threads: int | None, streams: int = 1) -> dict[str, Any]:
    """OpenVINO CPU settings: the precision hint (layers outside int8 in fp32 or bf16), threads, and one
    stream (latency: every thread on one request) or ``streams`` requests run at once."""
    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision in ("bf16", "int8-bf16") else "f32"}
    if streams > 1:
        cfg["NUM_STREAMS"] = int(streams)
    else:
        cfg["PERFORMANCE_HINT"] = "LATENCY"
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def auto_streams(threads: int | None) -> int:
    """Two streams where there are two threads or more (each stream gets half), else one."""
    return 2 if (threads or os.cpu_count() or 1) >= 2 else 1


class OpenVinoRunner:
    """A model folder's OpenVINO IR, compiled once for the CPU at its precision."""

    def __init__(self, folder: Path, meta: ModelMeta, threads: int | None = None, streams: int | None = None) -> None:
        info = meta.weights or {}
        self.meta, self.source = meta, folder
        self.precision = str(info.get("precision", "fp32"))
        if self.precision not in PRECISIONS:
            raise DataError(f"{folder / 'model.json'}: weights.precision {self.precision!r}; one of {PRECISIONS}")
        path = folder / str(info.get("file", IR_FILE))
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise DataError(f"{path}: missing, or its weights {path.with_suffix('.bin').name} are (model.json names "
                            "it as the model's weights)")
        model_file(folder, path.name), model_file(folder, path.with_suffix(".bin").name)
        self.streams = max(1, int(streams)) if streams else auto_streams(threads)
        core = ov_core()
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", compile_config(self.precision, threads, self.streams))
        except Exception as exc:  # OpenVINO raises RuntimeError with a long trace
            raise DataError(f"{path}: not a loadable OpenVINO model ({type(exc).__name__}: {ov_detail(exc)}); was it "
                            "truncated or overwritten?") from None
        self.requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        self.segment = meta.model.task == "segment"
        self.pad = self.segment and info.get("stride", STRIDE) is not None
        self.scale = float((meta.model.kwargs or {}).get("input_scale", 1.0))
        self.n_out = len(self.compiled.outputs)
        self.dynamic_batch = bool(info.get("dynamic_batch", True))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run_both(x)[0]

    def run_both(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        h, w = x.shape[-2:]
        if self.pad:
            x = pad_to_stride(x)
        elif self.segment:
            check_inner_pad(h, w, self.scale, self.source, "OpenVINO")
        outs = self._infer(np.ascontiguousarray(x, np.float32))
        probs = outs[0][..., :h, :w] if self.segment else outs[0]
        return np.ascontiguousarray(probs), outs[1] if self.n_out > 1 else None

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output for the batch ``x``: split over the streams' requests, run at once, joined (a graph
        exported for batch 1 takes one image per request)."""
        parts = [x[i:i + 1] for i in range(len(x))] if not self.dynamic_batch else \
            np.array_split(x, min(self.streams, len(x)))
        outs: list[list[np.ndarray]] = [[] for _ in range(self.n_out)]
        for start in range(0, len(parts), len(self.requests)):
            wave = list(zip(self.requests, parts[start:start + len(self.requests)]))
            for req, part in wave:
                req.start_async({0: part})
            for req, _ in wave:
                req.wait()
                for i in range(self.n_out):
                    outs[i].append(np.array(req.get_output_tensor(i).data, copy=True))
        return [np.concatenate(o) for o in outs]


def fp32_layers(model: Any) -> list[str]:
    """The convolutions and matrix products of an int8 model that NNCF left in fp32: those whose weights
    do not come through a FakeQuantize (or a compressed int8 constant)."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"):
            continue
        src = op.input_value(1).get_node()
        seen = 0
        while src.get_type_name() in ("Convert", "Reshape", "Multiply", "Subtract", "Unsqueeze") and seen < 6:
            src = src.input_value(0).get_node()
            seen += 1
        quantized = src.get_type_name() == "FakeQuantize" or (
            src.get_type_name() == "Constant" and src.get_element_type().get_type_name() in ("i8", "u8"))
        if not quantized:
            out.append(op.get_friendly_name())
    return out
