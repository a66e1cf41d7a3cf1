"""Bundles: a folder a prediction pipeline travels in, written by ``steelseg tune`` / ``bundle`` and read
by :meth:`steelseg.inference.Predictor.from_bundle`::

    bundle/
      bundle.json          what is inside, classes, TTA, baseline kind
      postprocess.json     tuned per-class thresholds, minimum areas, gates
      segmenters/0/        model.json + best.safetensors (one folder per fold model)
      classifiers/0/       optional gating classifiers, same format
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steelseg.errors import DataError
from steelseg.fsutil import atomic_json, staged_dir
from steelseg.inference import postprocess
from steelseg.inference.backends import ONNX_FILE, model_format
from steelseg.inference.openvino import IR_FILE
from steelseg.models.checkpoint import model_file, read_model_json
from steelseg.schema import BundleInfo, ModelMeta, build, load_json, to_dict

__all__ = ["BUNDLE_JSON", "bundle_backend", "bundle_id", "bundle_model_dirs", "read_bundle", "resolve_model_dir", "write_bundle"]

BUNDLE_JSON = "bundle.json"


def resolve_model_dir(path: str | Path) -> Path:
    """A run folder (runs/x) or its model folder (runs/x/model) -> the folder with model.json."""
    p = Path(path)
    if (p / "model.json").is_file():
        return p
    if (p / "model" / "model.json").is_file():
        return p / "model"
    raise DataError(f"{p}: not a run or model folder (no model.json in it or in {p / 'model'})")


def bundle_backend(metas: dict[Path, ModelMeta]) -> str:
    """The one backend all model folders (with their model.json) share; a bundle that mixes formats
    is refused by name."""
    formats = {d: model_format(d, meta) for d, meta in metas.items()}
    if len(set(formats.values())) > 1:
        parts = "; ".join(f"{f} in {', '.join(str(d) for d, g in formats.items() if g == f)}"
                          for f in sorted(set(formats.values())))
        raise DataError(f"models mix formats: {parts}. Export the whole bundle with `steelseg export`")
    return next(iter(formats.values()))


def bundle_id(path: str | Path) -> str:
    """A short content hash of the bundle's small files: which model answered (serve's responses, archive rows)."""
    path = Path(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*.json")):
        h.update(p.relative_to(path).as_posix().encode())
        h.update(p.read_bytes())
    return f"{path.name}-{h.hexdigest()[:12]}"


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
    fmt = model_format(src, meta)
    names = ["model.json"]
    if fmt in ("onnx", "openvino"):
        name = str((meta.weights or {}).get("file", ONNX_FILE if fmt == "onnx" else IR_FILE))
        names += [name] + ([str(Path(name).with_suffix(".bin"))] if fmt == "openvino" else [])  # the IR's weights
    else:
        names.append("best.safetensors")
    for name in names:  # each file confined to its folder, links followed, before a byte is copied
        shutil.copyfile(model_file(src, name), dst / name)
    for folder in (src, src.parent):  # which images trained it (export calibrates on them)
        if (folder / "split.json").is_file():
            shutil.copyfile(model_file(folder, "split.json"), dst / "split.json")
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
    backend = bundle_backend(metas) if segmenters else "torch"
    with staged_dir(out, overwrite, "bundle", signatures=("bundle.json",)) as stage:
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


def bundle_model_dirs(path: Path, info: BundleInfo) -> tuple[list[Path], list[Path]]:
    """The segmenter and classifier folders of a bundle, checked against the counts bundle.json gives."""
    segs = sorted((path / "segmenters").glob("*/model.json"))
    if len(segs) != info.segmenters:
        raise DataError(f"{path / 'segmenters'}: {len(segs)} model folder(s), bundle.json says "
                        f"{info.segmenters} (missing model files?)")
    clss = sorted((path / "classifiers").glob("*/model.json"))
    if len(clss) != info.classifiers:
        raise DataError(f"{path / 'classifiers'}: {len(clss)} model folder(s), bundle.json says {info.classifiers}")
    return [p.parent for p in segs], [p.parent for p in clss]
