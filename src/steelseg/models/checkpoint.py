"""Model files: weights as safetensors plus ``model.json`` (:class:`steelseg.schema.ModelMeta`) with
everything needed to rebuild and run the model (architecture, encoder, classes, names,
normalisation, image size, thresholds).

No pickle anywhere: a model folder can be loaded without the training code or trusting the file.
Every damaged file (bad JSON, missing or extra keys, random or truncated weights, weights whose
shapes do not fit model.json) is a DataError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steelseg.errors import DataError
from steelseg.schema import ModelMeta, load_json

__all__ = ["MODEL_JSON", "average_weights", "load_model", "load_state", "read_model_json", "save_weights",
           "write_model_json"]

MODEL_JSON = "model.json"


def write_model_json(folder: str | Path, meta: ModelMeta) -> Path:
    from steelseg.fsutil import atomic_json

    return atomic_json(Path(folder) / MODEL_JSON, meta.to_json())


def model_file(folder: str | Path, name: str) -> Path:
    """``folder/name``, a file a model folder (or a bundle) names, once it is known to lie inside the folder after
    links are followed (:func:`steelseg.fsutil.confine`, the check datasets use): a ``model.onnx`` that links
    to a file elsewhere is refused on load and on copy."""
    from steelseg.fsutil import confine

    return confine(Path(folder) / name, folder, "model file")


def read_model_json(folder: str | Path) -> ModelMeta:
    path = Path(folder) / MODEL_JSON
    if not path.is_file():
        raise DataError(f"{path}: missing; a model folder needs model.json beside its weights")
    return load_json(model_file(folder, MODEL_JSON), ModelMeta)


def save_weights(model: Any, path: str | Path) -> Path:
    """Write a module's state dict as safetensors (atomically)."""
    from safetensors.torch import save

    from steelseg.fsutil import atomic_write

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_write(path, "wb") as fh:
        fh.write(save(state))
    return Path(path)


def load_state(path: str | Path) -> dict[str, Any]:
    """A safetensors file as a dict of CPU tensors; a damaged file is a DataError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ...: the file is not what it should be
        raise DataError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); "
                        "was it truncated or overwritten?") from None


def average_weights(paths: list[str | Path]) -> dict[str, Any]:
    """The mean of several safetensors files of one architecture, tensor by tensor (float tensors in
    float64, then back to their dtype); integer buffers (BatchNorm's batch count) come from the first."""
    import torch

    if not paths:
        raise DataError("average_weights: no checkpoints given")
    states = [load_state(p) for p in paths]
    keys = list(states[0])
    for p, st in zip(paths[1:], states[1:]):
        if list(st) != keys or any(st[k].shape != states[0][k].shape for k in keys):
            raise DataError(f"{p}: its tensors differ from {paths[0]}'s; only checkpoints of one model average")
    out = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            out[k] = (sum(st[k].double() for st in states) / len(states)).to(first.dtype)
        else:
            out[k] = first.clone()
    return out


def load_model(folder: str | Path, which: str = "best", device: str = "cpu",
               meta: ModelMeta | None = None) -> tuple[Any, ModelMeta]:
    """Rebuild a model from ``model.json`` (or ``meta``, when the caller has read it already) and load
    ``{which}.safetensors``; returns (model, meta)."""
    from steelseg.models.factory import create_model

    folder = Path(folder)
    meta = meta or read_model_json(folder)
    weights = folder / f"{which}.safetensors"
    if weights.exists():
        model_file(folder, weights.name)
    if not weights.is_file():
        found = sorted(p.name for p in folder.glob("*.safetensors"))
        raise DataError(f"{weights}: missing (found: {', '.join(found) or 'no weights'})")
    model = create_model(meta.model)
    state = load_state(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise DataError(f"{weights}: weights do not fit the model that {folder / MODEL_JSON} describes "
                        f"({' '.join(s.strip() for s in first)})") from None
    return model.to(device).eval(), meta
