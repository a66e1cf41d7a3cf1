"""Model files: weights as safetensors plus ``model.json`` with everything needed to rebuild and run
the model (architecture, encoder, classes, names, normalisation, image size, thresholds).

No pickle anywhere: a model folder can be loaded without the training code or trusting the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steelseg.errors import DataError

__all__ = ["load_model", "read_model_json", "save_weights", "write_model_json"]

MODEL_JSON = "model.json"


def write_model_json(folder: str | Path, meta: dict[str, Any]) -> Path:
    path = Path(folder) / MODEL_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)
    return path


def read_model_json(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MODEL_JSON
    if not path.is_file():
        raise DataError(f"{path}: missing; a model folder needs model.json beside its .safetensors weights")
    return json.loads(path.read_text())


def save_weights(model: Any, path: str | Path) -> Path:
    """Write a module's state dict as safetensors (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    return path


def load_model(folder: str | Path, which: str = "best", device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild a model from ``model.json`` and load ``{which}.safetensors``; returns (model, meta)."""
    from safetensors.torch import load_file

    from steelseg.models import create_model

    folder = Path(folder)
    meta = read_model_json(folder)
    weights = folder / f"{which}.safetensors"
    if not weights.is_file():
        found = sorted(p.name for p in folder.glob("*.safetensors"))
        raise DataError(f"{weights}: missing (found: {', '.join(found) or 'no weights'})")
    model = create_model(meta["model"])
    model.load_state_dict(load_file(str(weights), device="cpu"))
    return model.to(device).eval(), meta
