"""Model factories: segmenters over segmentation_models_pytorch, classifiers over timm.

``create_segmenter`` and ``create_classifier`` return plain ``nn.Module``s that take (B, C, H, W)
images of any size (inputs are padded to the encoder's stride and outputs cropped back) and return
logits: (B, K, H, W) for segmenters, (B, K) for classifiers. Encoders are any smp encoder or any
timm model as ``tu-NAME``; ``encoder_weights=None`` builds them offline with random weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from steelseg.errors import ConfigError
from steelseg.models.names import ARCHS, check_model_names, timm_name
from steelseg.schema import FREEZE_STRIDES, ModelSpec, check_model_kwargs

__all__ = ["ARCHS", "Segmenter", "check_model_names", "create_classifier", "create_model", "create_segmenter",
           "depthwise_in_fp32", "freeze_to_stride", "gated_logits"]

class Segmenter(nn.Module):
    """Wraps smp models: pads inputs to a multiple of the stride, crops logits back.

    With several ``members`` (``per_class``), each predicts one class and logits are concatenated.
    With ``input_scale`` other than 1 the image is resized by that factor first (bilinear) and the
    logits resized back to the input's size, so callers, losses and masks never see the scale: small
    images (NEU-Seg's 200x200) get finer features for boundaries at the cost of more pixels.
    """

    def __init__(self, members: list[nn.Module], stride: int = 32, input_scale: float = 1.0,
                 cls_head: bool = False) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.stride = stride
        self.input_scale = float(input_scale)
        self.cls_head = bool(cls_head)  # members return (mask logits, image logits): see heads()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mask logits; with a classification head, the logits of the soft-gated probabilities
        mask.sigmoid() * cls.sigmoid() (so every caller that applies a sigmoid gets the gated masks)."""
        masks, cls = self._heads(x)
        return masks if cls is None else gated_logits(masks, cls)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask logits (B, K, H, W), image logits (B, K)) of a two-head segmenter."""
        masks, cls = self._heads(x)
        if cls is None:
            raise ValueError("this segmenter has no classification head (model.cls_head)")
        return masks, cls

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        size = x.shape[-2:]
        if self.input_scale != 1.0:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        masks, cls = self.members_heads(x)
        masks = masks[..., :h, :w]
        if self.input_scale != 1.0:
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        return masks, cls

    def members_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mask logits, image logits or None) on ``x`` as given: no resize, no padding (ONNX export pads
        outside)."""
        if self.cls_head:
            masks, cls = self.members[0](x)
            return masks, cls
        if len(self.members) > 1:
            return torch.cat([m(x) for m in self.members], dim=1), None
        return self.members[0](x), None

    def members_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The members' (gated) logits on ``x`` as given: no resize, no padding."""
        masks, cls = self.members_heads(x)
        return masks if cls is None else gated_logits(masks, cls)


def gated_logits(masks: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """logit(sigmoid(masks) * sigmoid(cls)) per pixel and class, computed in log space (4th place's soft
    gate); ``cls`` is (B, K), broadcast over the image. In float32 whatever the autocast: in bf16,
    exp(-1e-7) rounds to 1 and a sure pixel's logit would be +inf (a NaN loss)."""
    lp = F.logsigmoid(masks.float()) + F.logsigmoid(cls.float())[..., None, None]
    lp = torch.clamp(lp, max=-1e-7)  # p < 1: log(1 - p) stays finite
    return lp - torch.log1p(-torch.exp(lp))


def _tiramisu(classes: int, in_channels: int, encoder_weights: str | None, **kwargs: Any) -> nn.Module:
    """FC-DenseNet (Jegou et al. 2017, "The One Hundred Layers Tiramisu") from tiramisu-brulee, which needs
    nothing but torch; its defaults are the paper's FC-DenseNet67-like 5x5 blocks."""
    if encoder_weights:
        raise ConfigError("model.arch: tiramisu has no pretrained weights; set model.encoder_weights: null")
    try:
        from tiramisu_brulee.model import Tiramisu2d
    except ImportError as exc:
        raise ConfigError(f"model.arch: tiramisu needs the tiramisu extra: pip install 'steelseg[tiramisu]' "
                          f"({exc})") from None
    for key in ("down_blocks", "up_blocks"):
        if key in kwargs:
            kwargs[key] = tuple(int(v) for v in kwargs[key])
    return Tiramisu2d(in_channels=in_channels, out_channels=classes, **kwargs)


def _smp_model(arch: str, encoder: str, classes: int, in_channels: int, encoder_weights: str | None,
               **kwargs: Any) -> nn.Module:
    if arch == "tiramisu":
        if kwargs.pop("aux_params", None) is not None:
            raise ConfigError("model.cls_head: not available for model.arch tiramisu")
        return _tiramisu(classes, in_channels, encoder_weights, **kwargs)
    import segmentation_models_pytorch as smp

    cls = getattr(smp, ARCHS[arch])
    return cls(encoder_name=encoder, encoder_weights=encoder_weights, in_channels=in_channels,
               classes=classes, **kwargs)


def create_segmenter(arch: str, encoder: str, classes: int, in_channels: int = 1,
                     encoder_weights: str | None = None, per_class: bool = False,
                     **kwargs: Any) -> Segmenter:
    """A segmenter with ``classes`` sigmoid outputs; ``per_class`` builds one binary model per class."""
    from steelseg.models.pretrained import is_local, load_pretrained, pretrained_state

    check_model_names("segment", arch, encoder)
    kwargs = _checked_kwargs("segment", kwargs, arch)
    input_scale = kwargs.pop("input_scale", 1.0)  # the wrapper's, not smp's
    cls_head = bool(kwargs.pop("cls_head", False))
    hub = None if is_local(encoder_weights) else encoder_weights  # files and packages load below
    if per_class:
        if cls_head:
            raise ConfigError("model.cls_head needs one multi-class segmenter, not model.per_class")
        members = [_smp_model(arch, encoder, 1, in_channels, hub, **kwargs) for _ in range(classes)]
    elif cls_head:  # smp's own classification head on the encoder's deepest features
        members = [_smp_model(arch, encoder, classes, in_channels, hub,
                              aux_params={"classes": classes, "dropout": 0.2}, **kwargs)]
    else:
        members = [_smp_model(arch, encoder, classes, in_channels, hub, **kwargs)]
    if is_local(encoder_weights):
        state = pretrained_state(str(encoder_weights), encoder)
        for m in members:
            target = m.encoder.model if encoder.startswith("tu-") else m.encoder
            load_pretrained(target, state, f"encoder {encoder}", in_channels)
    return Segmenter(members, input_scale=input_scale, cls_head=cls_head)


def create_classifier(encoder: str, classes: int, in_channels: int = 1,
                      encoder_weights: str | None = None, **kwargs: Any) -> nn.Module:
    """A timm classifier with ``classes`` sigmoid outputs (1 = defect / no defect, K = multi-label)."""
    import timm

    from steelseg.models.pretrained import is_local, load_pretrained, pretrained_state

    name = timm_name(encoder)
    check_model_names("classify", "", name)
    kwargs = _checked_kwargs("classify", kwargs)
    model = timm.create_model(name, pretrained=encoder_weights == "imagenet", num_classes=classes,
                              in_chans=in_channels, **kwargs)
    if is_local(encoder_weights):  # the head keeps its fresh weights when the class count differs
        load_pretrained(model, pretrained_state(str(encoder_weights), name), f"classifier {name}", in_channels)
    return model


def create_model(spec: ModelSpec) -> nn.Module:
    """Build a model from the ``model`` section of a ``model.json`` (weights not loaded)."""
    if spec.task == "segment":
        return create_segmenter(spec.arch, spec.encoder, spec.outputs, spec.in_channels,
                                None, spec.per_class, **spec.kwargs)
    return create_classifier(spec.encoder, spec.outputs, spec.in_channels, None, **spec.kwargs)


def _checked_kwargs(task: str, kwargs: dict[str, Any], arch: str = "") -> dict[str, Any]:
    try:
        check_model_kwargs(task, kwargs, arch=arch)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {k: v for k, v in kwargs.items() if v is not None}


class _Fp32UnderCpuAutocast:
    """Mixin for a convolution class: under CPU autocast it runs in float32 (input cast up, autocast off)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and _cpu_autocast_on():
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())  # type: ignore[misc]
        return super().forward(x)  # type: ignore[misc]


_FP32_CLASSES: dict[type, type] = {}


def _cpu_autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


def depthwise_in_fp32(model: nn.Module) -> int:
    """Make ``model``'s depthwise convolutions run in float32 under CPU autocast; returns how many.

    oneDNN's bf16 depthwise-convolution backward is 2-5x slower than its float32 one on CPU (for a
    5x5 stride-2 layer of EfficientNet-Lite0: 94 ms against 17 ms, channels-last, ``bench/recipe_speed.py``),
    and depthwise layers then take half of a bf16 training step. Each such module's class is swapped
    for a subclass, so parameter names, ``state_dict`` and deep copies (EMA) are unchanged; on GPU, or
    without autocast, the module behaves as before.
    """
    n = 0
    for mod in model.modules():
        cls = type(mod)
        if (isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels
                and not isinstance(mod, _Fp32UnderCpuAutocast)):
            if cls not in _FP32_CLASSES:
                _FP32_CLASSES[cls] = type(f"{cls.__name__}Fp32", (_Fp32UnderCpuAutocast, cls), {})
            mod.__class__ = _FP32_CLASSES[cls]
            n += 1
    return n


def freeze_to_stride(model: nn.Module, stride: int, in_channels: int = 1) -> int:
    """Freeze every layer of ``model`` that runs before its first one coarser than 1/``stride``.

    These are the stem and the first stages of the encoder (``stride`` 2, 4, 8 or 16): generic edge
    and texture filters in a pretrained encoder, and the layers whose backward pass costs most on a
    CPU (full-resolution activations, memory-bound depthwise convolutions). With nothing before them
    needing a gradient, autograd stops where the frozen part ends. Batch norms there keep updating
    their running statistics (their scale and shift are frozen). The layers are found by running the
    model once on a blank 256x256 image (any encoder, timm or smp); each member of a per-class
    segmenter is frozen alike. Returns how many parameter tensors were frozen; raises ConfigError
    when ``stride`` is not 2, 4, 8 or 16.
    """
    if stride not in FREEZE_STRIDES:
        raise ConfigError(f"train.freeze_stride: {stride!r}; must be 2, 4, 8 or 16 (or 0 for no freezing)")
    nets = list(model.members) if isinstance(model, Segmenter) else [model]
    return sum(_freeze_net(net, stride, in_channels) for net in nets)


def _freeze_net(net: nn.Module, stride: int, in_channels: int) -> int:
    order: list[nn.Module] = []  # modules with parameters of their own, in the order they ran
    sizes: list[int | None] = []  # their output heights (None: not an image-shaped output, or pooled to 1x1)
    ref: list[int] = []  # the height of the first input any module saw

    def pre(mod: nn.Module, args: tuple[Any, ...]) -> None:
        if not ref and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            ref.append(int(args[0].shape[-2]))

    def post(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if mod not in order:
            spatial = isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-2] * out.shape[-1] > 1
            order.append(mod)
            sizes.append(int(out.shape[-2]) if spatial else None)

    owners = [m for m in net.modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_pre_hook(pre) for m in owners] + [m.register_forward_hook(post) for m in owners]
    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, in_channels, 256, 256))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    cut = next((i for i, h in enumerate(sizes) if h is not None and h * stride < ref[0]), None)
    if cut is None:
        raise ConfigError(f"train.freeze_stride: {stride}: no layer of this model works below 1/{stride} "
                          "of the input's resolution; use a smaller stride")
    n = 0
    for mod in order[:cut]:
        for p in mod.parameters(recurse=False):
            if p.requires_grad:
                p.requires_grad_(False)
                n += 1
    return n
