"""Model names: the architecture registry (one plain dict), timm / smp encoder names, and the check
that names valid choices with a did-you-mean. No torch at import time: the config check uses it."""

from __future__ import annotations

import difflib

from steelseg.errors import ConfigError

__all__ = ["ARCHS", "NO_ENCODER", "check_model_names", "timm_name"]

# name -> smp class name; one plain dict is the registry.
ARCHS = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3plus": "DeepLabV3Plus",
    "deeplabv3": "DeepLabV3",
    "pspnet": "PSPNet",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "tiramisu": "Tiramisu2d",  # FC-DenseNet from tiramisu-brulee (the tiramisu extra), no encoder
}
NO_ENCODER = {"tiramisu"}  # whole networks: model.encoder must be none


def _suggest(name: str, options: list[str], what: str, n_list: int = 12) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    shown = ", ".join(options[:n_list]) + (f", ... ({len(options)} in all)" if len(options) > n_list else "")
    return f"unknown {what} {name!r}.{hint} Valid: {shown}"


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def timm_name(encoder: str) -> str:
    """The timm model behind an encoder name: ``tu-NAME`` -> ``NAME`` (classifiers take either)."""
    return encoder[3:] if encoder.startswith("tu-") else encoder


def check_model_names(task: str, arch: str, encoder: str) -> None:
    """Raise ConfigError naming valid choices when the architecture or encoder is unknown."""
    if task == "segment":
        if arch not in ARCHS:
            raise ConfigError("model.arch: " + _suggest(arch, sorted(ARCHS), "architecture"))
        if arch in NO_ENCODER:
            if encoder not in ("none", ""):
                raise ConfigError(f"model.encoder: {encoder!r}; {arch} is a whole network with no separate "
                                  "encoder: set model.encoder: none")
            return
        if encoder.startswith("tu-"):
            names = _timm_names()
            if encoder[3:] not in names:
                raise ConfigError("model.encoder: " + _suggest(encoder[3:], names, "timm encoder (after tu-)"))
        else:
            import segmentation_models_pytorch as smp

            names = sorted(smp.encoders.get_encoder_names())
            if encoder not in names:
                raise ConfigError("model.encoder: " + _suggest(encoder, names, "smp encoder")
                                  + "; or any timm model as tu-NAME, e.g. tu-xception41")
    else:
        name = timm_name(encoder)
        names = _timm_names()
        if name not in names:
            raise ConfigError("model.encoder: " + _suggest(name, names, "timm classifier"))
