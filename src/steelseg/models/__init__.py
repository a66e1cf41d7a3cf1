"""The models wing: the factory and architecture names, pretrained weights that need no hub, losses,
and the model files (safetensors + model.json).

    from steelseg.models import create_segmenter
    net = create_segmenter("unet", "resnet18", classes=4)     # random init, offline
"""

from steelseg.lazy import lazy_exports

_EXPORTS = {
    "ARCHS": "steelseg.models.names", "check_model_names": "steelseg.models.names", "timm_name": "steelseg.models.names",
    "Segmenter": "steelseg.models.factory", "create_classifier": "steelseg.models.factory",
    "create_model": "steelseg.models.factory", "create_segmenter": "steelseg.models.factory",
    "depthwise_in_fp32": "steelseg.models.factory", "freeze_to_stride": "steelseg.models.factory",
    "build_loss": "steelseg.models.losses",
    "load_model": "steelseg.models.checkpoint", "read_model_json": "steelseg.models.checkpoint",
    "save_weights": "steelseg.models.checkpoint", "write_model_json": "steelseg.models.checkpoint",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
