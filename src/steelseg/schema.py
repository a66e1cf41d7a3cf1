"""Typed files on disk: one dataclass per file, shared by the code that writes it and every reader.

* ``model.json`` -> :class:`ModelMeta` (with :class:`ModelSpec` and :class:`InputMeta`; the input's
  normalisation as an :class:`InputSpec`, which :mod:`steelseg.data.images` applies)
* ``bundle.json`` -> :class:`BundleInfo`
* ``postprocess.json`` -> :class:`steelseg.inference.postprocess.PostProcess`
* run configs (YAML) -> :mod:`steelseg.training.config`, through the same :func:`build`

:func:`build` turns a parsed mapping into a dataclass, checking every key and type; the classes
check ranges in ``__post_init__``. :func:`load_json` reads a file and names the file and the field
in every error, so a hand-edited or damaged file never runs with a silently wrong value.
No torch here: the service and the ONNX path read these files without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from steelseg.errors import DataError, SteelsegError

__all__ = ["BundleInfo", "InputMeta", "ModelMeta", "ModelSpec", "build", "check_model_kwargs", "load_json",
           "to_dict"]

T = TypeVar("T")

@dataclass(frozen=True)
class InputSpec:
    """How a model wants its input: channels, and ``(pixel * scale - mean) / std`` per channel."""

    channels: int = 1
    mean: tuple[float, ...] = (0.449,)
    std: tuple[float, ...] = (0.226,)
    scale: float = 1 / 255

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels: {self.channels} (1 for gray or 3 for RGB)")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.channels:
                raise ValueError(f"{name}: {len(values)} value(s) for {self.channels} channel(s)")
            if not all(np.isfinite(v) for v in values):
                raise ValueError(f"{name}: {list(values)} holds a non-finite value")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std: {list(self.std)}; every value must be > 0")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale: {self.scale}; must be a finite number > 0")

    def lut(self) -> np.ndarray:
        """(C, 256) float32: the normalised value of every uint8 level, per channel."""
        levels = np.arange(256, dtype=np.float32) * np.float32(self.scale)
        mean = np.asarray(self.mean, np.float32)[:, None]
        std = np.asarray(self.std, np.float32)[:, None]
        return ((levels[None, :] - mean) / std).astype(np.float32)



MODEL_FORMAT = "steelseg-model/1"
BUNDLE_FORMAT = "steelseg-bundle/1"


# ---- the typed builder ------------------------------------------------------------------------
def _check_type(value: Any, tp: Any, where: str, error: type[SteelsegError]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where, error)
            except SteelsegError as exc:
                errors.append(str(exc))
        raise error(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        out = [_check_type(v, item, f"{where}[{i}]", error) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise error(f"{where}: expected a section (mapping), got {value!r}")
        return build(tp, value, where + ".", error)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise error(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def build(cls: type[T], values: dict[str, Any] | None, where: str = "",
          error: type[SteelsegError] = DataError) -> T:
    """A ``cls`` dataclass from a mapping: unknown keys (with a did-you-mean), missing required keys
    and wrong types raise ``error`` naming the field; range checks in ``__post_init__`` too."""
    if values is not None and not isinstance(values, dict):
        raise error(f"{where or 'top level'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in (values or {}).items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise error(f"unknown key '{where}{key}'{hint}; valid keys: {', '.join(fields)}")
        kwargs[key] = _check_type(value, hints[key], f"{where}{key}", error)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise error(f"{where or ''}missing key(s): {', '.join(where + m for m in missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise error(f"{where}{exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-ready data: tuples become lists, NaN / infinity (a metric with no
    data, say) become null, so the file is standard JSON."""
    return _finite_only(json.loads(json.dumps(dataclasses.asdict(obj))))


def _finite_only(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_only(v) for v in value]
    return value


def load_json(path: str | Path, cls: type[T]) -> T:
    """Read ``path`` as a ``cls``; every problem is a DataError naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; expected JSON") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    try:
        return build(cls, data, "", DataError)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def check_plain_name(name: Any, where: str) -> str:
    """A file named inside a steelseg file (model.json's weights.file) must be a plain name in the same
    folder: no folders, no ``..``, not absolute, so a copied or edited file cannot make steelseg read or
    copy anything outside its folder."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or "\0" in name or ":" in name:
        raise ValueError(f"{where}: {name!r} is not a plain file name in this folder (no folders, '..' or "
                         "drive letters); name a file beside this one")
    return name


def load_yaml(text: str, where: str, error: type[SteelsegError] = DataError) -> Any:
    """Parse YAML that steelseg reads (run configs, ``--set`` values), refusing anchors and aliases:
    configs never need them, and nested aliases under 1 KB expand to gigabytes once the config is
    written back (a "billion laughs"). ``where`` names the file (or flag) in the error."""
    import yaml

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            anchor = getattr(event, "anchor", None)
            if isinstance(event, yaml.AliasEvent) or anchor:
                raise error(f"{where}:{event.start_mark.line + 1}: YAML anchor or alias ({'*' if isinstance(event, yaml.AliasEvent) else '&'}{anchor}); "
                            "steelseg configs take plain values: write the value out where it is used")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML ({exc})") from None


def _finite(values: Any, name: str, lo: float | None = None, hi: float | None = None) -> None:
    for v in values if isinstance(values, (list, tuple)) else [values]:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{name}: {v!r} is not a finite number")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ValueError(f"{name}: {v!r} is outside {lo}..{hi}")


# ---- model keyword arguments ------------------------------------------------------------------
# The constructor arguments that model.json / model.kwargs may pass to smp and timm. Anything else
# (checkpoint_path, pretrained_cfg_overlay, ...) could make a loader open files: refused.
SEGMENTER_KWARGS = {
    "encoder_depth": (1, 5), "decoder_channels": (1, 2048), "decoder_use_batchnorm": None,
    "decoder_use_norm": None, "decoder_attention_type": None, "decoder_pyramid_channels": (1, 2048),
    "decoder_segmentation_channels": (1, 2048), "decoder_merge_policy": None, "decoder_dropout": (0.0, 1.0),
    "encoder_output_stride": (8, 32), "decoder_atrous_rates": (1, 64), "upsampling": (1, 32),
    "psp_out_channels": (1, 2048), "psp_use_batchnorm": None, "psp_dropout": (0.0, 1.0),
    "decoder_interpolation": None,
    "input_scale": (0.25, 4.0),  # steelseg's own (Segmenter): resize the input by this factor, logits back
    "cls_head": None,  # steelseg's own (model.cls_head): an image-level head on the encoder, soft gating
}
FREEZE_STRIDES = (2, 4, 8, 16)  # train.freeze_stride (0 = off): the encoder's layers up to 1/N resolution
CLASSIFIER_KWARGS = {"drop_rate": (0.0, 1.0), "drop_path_rate": (0.0, 1.0), "global_pool": None}
# model.arch: tiramisu (FC-DenseNet, tiramisu-brulee's Tiramisu2d): a whole network, no encoder
TIRAMISU_KWARGS = {"down_blocks": (1, 32), "up_blocks": (1, 32), "bottleneck_layers": (1, 64),
                   "growth_rate": (1, 256), "first_conv_out_channels": (1, 1024), "dropout_rate": (0.0, 1.0),
                   "input_scale": (0.25, 4.0)}


def check_model_kwargs(task: str, kwargs: dict[str, Any], where: str = "model.kwargs", arch: str = "") -> None:
    """Raise ValueError when a keyword is not one the model factory documents or is out of range."""
    allowed = (TIRAMISU_KWARGS if arch == "tiramisu" else SEGMENTER_KWARGS) if task == "segment" else CLASSIFIER_KWARGS
    if arch == "tiramisu":
        for key in ("down_blocks", "up_blocks"):
            if key in kwargs and (not isinstance(kwargs[key], (list, tuple)) or not 1 <= len(kwargs[key]) <= 5):
                raise ValueError(f"{where}.{key}: {kwargs[key]!r}; a list of 1 to 5 layer counts, one per dense "
                                 "block (each block halves the resolution; 5 keep it a divisor of the 32-pixel "
                                 "padding), e.g. [4, 4, 4, 4]")
        if len(kwargs.get("down_blocks", [0] * 5)) != len(kwargs.get("up_blocks", [0] * 5)):
            raise ValueError(f"{where}: down_blocks and up_blocks need the same number of blocks")
    for key, value in kwargs.items():
        if key not in allowed:
            raise ValueError(f"{where}.{key}: not an accepted model argument; accepted for "
                             f"{task}: {', '.join(sorted(allowed))}")
        rng = allowed[key]
        if rng is None or value is None:
            continue
        lo, hi = rng
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"{where}.{key}: {value!r}; each value must be a number in {lo}..{hi}")


# ---- model.json -------------------------------------------------------------------------------
TASKS = ("segment", "classify")


@dataclass
class ModelSpec:
    """What to build: the ``model`` section of model.json."""

    task: str
    encoder: str
    outputs: int
    in_channels: int = 1
    arch: str = ""
    binary: bool = False
    per_class: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    encoder_weights_at_init: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        if not 1 <= self.outputs <= 1000:
            raise ValueError(f"outputs: {self.outputs}; expected 1..1000")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels: {self.in_channels} (1 or 3)")
        if self.task == "segment" and not self.arch:
            raise ValueError("arch: empty; a segmenter needs an architecture such as unet")
        check_model_kwargs(self.task, self.kwargs, "kwargs", self.arch)


@dataclass
class InputMeta:
    """The ``input`` section: what :func:`steelseg.data.images.to_input` needs, plus sizes seen in training."""

    channels: int = 1
    mean: list[float] = field(default_factory=lambda: [0.449])
    std: list[float] = field(default_factory=lambda: [0.226])
    scale: float = 1 / 255
    image_size: list[int] | None = None
    train_crop: list[int] | None = None

    def __post_init__(self) -> None:
        self.spec()  # the checks live in InputSpec

    def spec(self) -> InputSpec:
        try:
            return InputSpec(self.channels, tuple(self.mean), tuple(self.std), self.scale)
        except ValueError as exc:
            raise ValueError(str(exc)) from None


CLASS_NAME_FORBIDDEN = set('<>&"\'`')  # markup; control characters are refused too


def check_class_names(names: list[str]) -> None:
    """Class names travel into pages, CSV files and file names: refuse markup and control characters (a
    name such as ``<img src=x onerror=...>`` would otherwise reach the review page), empty names and
    duplicates, with what to do."""
    if not names:
        raise ValueError("class_names: empty")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class_names: {name!r} is not a name; give each class a non-empty name")
        bad = sorted({ch for ch in name if ch in CLASS_NAME_FORBIDDEN or ord(ch) < 32 or 127 <= ord(ch) < 160})
        if bad:
            raise ValueError(f"class_names: {name!r} holds markup or control characters ({' '.join(map(repr, bad))}); "
                             "rename the class (letters, digits, spaces, - _ . are safe)")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: {names} names a class twice")


@dataclass
class ModelMeta:
    """model.json: everything needed to rebuild and run a model, and where it came from."""

    model: ModelSpec
    class_names: list[str]
    input: InputMeta = field(default_factory=InputMeta)
    classes: list[int] = field(default_factory=list)
    format: str = MODEL_FORMAT
    steelseg_version: str = ""
    activation: str = "sigmoid"
    thresholds: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    epochs_trained: int | None = None
    weights: dict[str, Any] | None = None  # exported models: {"format": "onnx", "file": ..., ...}

    def __post_init__(self) -> None:
        if self.format != MODEL_FORMAT:
            raise ValueError(f"format: {self.format!r}; this steelseg reads {MODEL_FORMAT}")
        check_class_names(self.class_names)
        if self.activation != "sigmoid":
            raise ValueError(f"activation: {self.activation!r}; only sigmoid outputs are supported")
        if self.input.channels != self.model.in_channels:
            raise ValueError(f"input.channels ({self.input.channels}) differs from model.in_channels "
                             f"({self.model.in_channels})")
        binary = self.model.task == "classify" and self.model.outputs == 1
        if not binary and self.model.outputs != len(self.class_names):
            raise ValueError(f"model.outputs ({self.model.outputs}) differs from the {len(self.class_names)} "
                             "class_names")
        if not self.classes:
            self.classes = list(range(1, len(self.class_names) + 1))
        if self.weights is not None and "file" in self.weights:
            check_plain_name(self.weights["file"], "weights.file")

    @property
    def task(self) -> str:
        return self.model.task

    def to_json(self) -> dict[str, Any]:
        return to_dict(self)


# ---- bundle.json ------------------------------------------------------------------------------
BUNDLE_KINDS = ("pipeline", "plain", "all-empty")
BACKENDS = ("torch", "onnx", "openvino")


@dataclass
class BundleInfo:
    """bundle.json: what a bundle holds and how to run it."""

    class_names: list[str]
    kind: str = "pipeline"
    format: str = BUNDLE_FORMAT
    tta: bool = False
    segmenters: int = 0
    classifiers: int = 0
    backend: str = "torch"
    tuned_on: dict[str, Any] | None = None
    export: dict[str, Any] | None = None
    tile: int | None = None  # predict images larger than this in overlapping tiles
    overlap: int = 128

    def __post_init__(self) -> None:
        if self.format != BUNDLE_FORMAT:
            raise ValueError(f"format: {self.format!r}; this steelseg reads {BUNDLE_FORMAT}")
        if self.kind not in BUNDLE_KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {', '.join(BUNDLE_KINDS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        check_class_names(self.class_names)
        if self.segmenters < 0 or self.classifiers < 0:
            raise ValueError("segmenters / classifiers: counts must be >= 0")
        if self.tile is not None and not 64 <= self.tile <= 16384:
            raise ValueError(f"tile: {self.tile}; must be 64..16384 pixels (or null)")
        if not 0 <= self.overlap <= 8192:
            raise ValueError(f"overlap: {self.overlap}; must be 0..8192 pixels")
        if self.kind != "all-empty" and self.segmenters < 1:
            raise ValueError(f"segmenters: {self.segmenters}; a {self.kind} bundle needs at least one")
