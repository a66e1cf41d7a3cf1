"""Run configuration: dataclasses, loaded from YAML, overridable with ``section.key=value``.

Unknown keys and wrong types fail before anything runs, with the valid choices in the message.
The resolved config is saved as ``config.yaml`` in every run folder.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from steelseg.errors import ConfigError
from steelseg.schema import FREEZE_STRIDES, SEGMENTER_KWARGS, build, check_model_kwargs, load_yaml

__all__ = ["DataConfig", "ModelConfig", "RunConfig", "TrackConfig", "TrainConfig", "load_config"]


@dataclass
class DataConfig:
    path: str = ""  # dataset folder (Kaggle layout or mask folders)
    class_names: list[str] | None = None  # default: classes.txt in the dataset, else class1..C
    layout: str | None = None  # kaggle | masks | folders | groups | mvtec | coco; default: detected from the files
    layout_options: dict[str, Any] = field(default_factory=dict)  # line_width (labelme, cvat), boxes (yolo)
    folds: str | None = None  # folds CSV (steelseg folds); with `fold` picks the validation fold
    group_by: str | None = None  # new folds keep groups whole: null = the layout's groups (group folders),
    # folder = the first folder of each image id, none = no groups
    fold: int = 0
    train_split: str | None = None  # or the dataset's own split lists (e.g. NEU-Seg train / val)
    val_split: str | None = None
    extra: list[str] = field(default_factory=list)  # further dataset folders (any layout, same classes) added
    # to training: reviewed images (`steelseg serve --feedback`), pseudo-labels (`steelseg pseudo-label`)
    extra_in_val: bool = False  # also validate on a fold of the extra images (default: they only train)
    channels: int = 1  # 1 = grayscale input, 3 = RGB (for ImageNet encoders as they come)
    mean: list[float] = field(default_factory=lambda: [0.449])
    std: list[float] = field(default_factory=lambda: [0.226])
    crop: list[int] | None = None  # [h, w] random training crop, e.g. [256, 512] on Severstal
    batch_size: int = 8
    val_batch_size: int | None = None
    num_workers: int = 2
    cache: bool = False  # decode every image and mask once and keep them in memory (small datasets;
    # refused when they would need over half the free memory)
    balanced_sampling: bool = False  # oversample images of rare classes (class imbalance)
    flips: bool = True
    brightness_contrast: bool = True
    shift: float = 0.05  # max shift as a fraction of the image size, 0 disables


@dataclass
class ModelConfig:
    task: str = "segment"  # segment | classify
    arch: str = "unet"  # unet, unetplusplus, fpn, deeplabv3plus, pspnet, linknet, manet, pan, ...; tiramisu
    # (FC-DenseNet: a whole network, model.encoder: none; model.kwargs down_blocks, growth_rate, ...)
    encoder: str = "resnet18"  # any smp encoder, or a timm one as tu-NAME (tu-xception41)
    encoder_weights: str | None = None  # None = random init (offline); "imagenet" when online
    per_class: bool = False  # one binary segmenter per class instead of one multi-class model
    binary: bool = False  # classify only: one "any defect" output instead of one per class
    cls_head: bool = False  # segment only: an image-level classification head on the encoder (4th place):
    # trained jointly (train.cls_weight), predictions soft-gated mask.sigmoid() * cls.sigmoid(), its own gate
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the smp / timm constructor;
    # input_scale (segment) resizes images by that factor inside the model, logits back (small images)


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | onecycle | none
    warmup_epochs: float = 0.0
    loss: str = "bce_dice"  # bce | dice | bce_dice | focal | lovasz | bce_lovasz (classify: bce | focal)
    pos_weight: list[float] | None = None  # per-class positive weight for BCE
    finetune_loss: str | None = None  # switch to this loss for the last finetune_share of the run (e.g. lovasz)
    finetune_share: float = 0.2  # share of the run (steps or time budget, whichever is further) to fine-tune
    accumulate: int = 1
    precision: str = "auto"  # auto = 16-mixed on GPU, 32 on CPU
    early_stopping: int = 0  # patience in epochs, 0 = off
    monitor: str | None = None  # default: val/dice (segment) or val/auc (classify)
    seed: int = 42
    limit_train_batches: int | float = 1.0  # Lightning's meaning: int = batches, float = share
    limit_val_batches: int | float = 1.0
    val_every: int = 1  # validate every N epochs (short epochs of a small set: validation would dominate)
    channels_last: bool = True  # NHWC memory format: about 20% faster convolutions on CPU and GPU
    depthwise_fp32: bool = True  # under bf16 on CPU, depthwise convolutions in fp32 (their bf16 backward is slow)
    freeze_stride: int = 0  # freeze the encoder's layers up to 1/N resolution (2, 4, 8, 16; 0 = train all)
    low_res_scale: float | None = None  # segment: train at this input_scale for the first low_res_share of the
    # run (cheaper steps), then at model.kwargs.input_scale, the scale predictions use; null = off
    low_res_share: float = 0.7  # share of the run (steps or time budget, whichever is further) at low_res_scale
    max_minutes: float | None = None  # wall-clock budget (Lightning max_time); the lr schedule ends with it
    cls_weight: float = 0.5  # model.cls_head: weight of the classification head's BCE in the joint loss
    ema: float | None = None  # decay of an exponential moving average of the weights (e.g. 0.998), null = off;
    # validation, best.safetensors and last.safetensors then use the averaged weights
    average_best: int = 0  # N >= 2: after training, average the weights of the N best validated epochs; kept as
    # best.safetensors when the average validates at least as well (model.json best.average_of says)
    checkpoint_every: int = 50  # also save the resume checkpoint every N steps (survives kill -9)
    allow_no_defects: bool = False  # train even when no image of the dataset holds a defect (refused by default)
    accelerator: str = "auto"
    devices: str = "auto"  # "auto", a count or a list, passed to Lightning
    strategy: str = "auto"  # auto | ddp | ddp_spawn | fsdp ...
    num_nodes: int = 1


@dataclass
class TrackConfig:
    mlflow: bool = True
    tracking_uri: str | None = None  # default: sqlite store in ./mlruns; or an MLflow server URI
    experiment: str = "steelseg"
    wandb: bool = False
    wandb_project: str = "steelseg"
    wandb_mode: str = "offline"  # offline works without network; "online" to sync


@dataclass
class RunConfig:
    name: str | None = None  # default: <task>-<arch>-<encoder>-<time>
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from steelseg.fsutil import atomic_text

        atomic_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def flat(self) -> dict[str, Any]:
        """``section.key`` -> value, for experiment trackers."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            if isinstance(values, dict):
                out.update({f"{section}.{k}": v for k, v in values.items()})
            else:
                out[section] = values
        return out


NULLABLE = {("train", "finetune_loss"), ("data", "group_by")}  # choices that may also be null (off)
CHOICES = {
    ("model", "task"): ["segment", "classify"],
    ("train", "scheduler"): ["cosine", "onecycle", "none"],
    ("train", "loss"): ["bce", "dice", "bce_dice", "focal", "lovasz", "bce_lovasz"],
    ("train", "finetune_loss"): ["bce", "dice", "bce_dice", "focal", "lovasz", "bce_lovasz"],
    ("train", "precision"): ["auto", "32", "16-mixed", "bf16-mixed", "32-true"],
    ("track", "wandb_mode"): ["offline", "online", "disabled"],
    ("data", "group_by"): ["folder", "none"],
}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    return build(cls, values, where, ConfigError)


def _set(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = load_yaml(raw, f"--set {dotted}", ConfigError) if raw != "" else None


def validate(cfg: RunConfig) -> RunConfig:
    """Check choices and model names; raise ConfigError listing the valid ones."""
    for (section, key), choices in CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value is None and (section, key) in NULLABLE:
            continue
        if str(value) not in choices:
            extra = " (or null)" if (section, key) in NULLABLE else ""
            raise ConfigError(f"{section}.{key}: {value!r} is not one of {', '.join(choices)}{extra}")
    if cfg.data.channels not in (1, 3):
        raise ConfigError(f"data.channels: {cfg.data.channels} (use 1 for grayscale or 3 for RGB)")
    if len(cfg.data.mean) != cfg.data.channels or len(cfg.data.std) != cfg.data.channels:
        raise ConfigError(f"data.mean / data.std need {cfg.data.channels} value(s), one per channel")
    if cfg.data.crop is not None and len(cfg.data.crop) != 2:
        raise ConfigError(f"data.crop: expected [height, width], got {cfg.data.crop}")
    _check_ranges(cfg)
    if cfg.model.binary and cfg.model.task != "classify":
        raise ConfigError("model.binary is for classifiers (model.task: classify)")
    if cfg.model.cls_head:
        if cfg.model.task != "segment" or cfg.model.per_class:
            raise ConfigError("model.cls_head is for one multi-class segmenter (model.task: segment, "
                              "model.per_class: false)")
        cfg.model.kwargs = {**cfg.model.kwargs, "cls_head": True}  # the factory builds it; model.json records it
    for key in ("loss", "finetune_loss"):
        value = getattr(cfg.train, key)
        if cfg.model.task == "classify" and value is not None and value not in ("bce", "focal"):
            extra = " (or null)" if ("train", key) in NULLABLE else ""
            raise ConfigError(f"train.{key}: {value!r} is for segmenters; classifiers use bce or focal{extra}")
    from steelseg.models.names import check_model_names

    check_model_names(cfg.model.task, cfg.model.arch, cfg.model.encoder)
    return cfg


MAX_SIDE = 16384  # a crop or image side beyond this would allocate gigabytes per batch


def _need(ok: bool, where: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {value!r}; {what}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_ranges(cfg: RunConfig) -> None:
    """Values that type-check but cannot work: caught before any run folder or model exists."""
    d, t = cfg.data, cfg.train
    _need(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    _need(d.val_batch_size is None or d.val_batch_size >= 1, "data.val_batch_size", d.val_batch_size,
          "must be >= 1 (or null for batch_size)")
    _need(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0 (0 = load in the main process)")
    _need(d.fold >= 0, "data.fold", d.fold, "must be >= 0")
    _need(all(_finite(v) for v in d.mean), "data.mean", d.mean, "must be finite numbers")
    _need(all(_finite(v) and v > 0 for v in d.std), "data.std", d.std, "every value must be > 0")
    if d.crop is not None:
        _need(all(16 <= v <= MAX_SIDE for v in d.crop), "data.crop", d.crop,
              f"each side must be in 16..{MAX_SIDE} pixels")
    _need(_finite(d.shift) and 0 <= d.shift < 0.5, "data.shift", d.shift, "must be in 0..0.5")
    _need(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    _need(_finite(t.lr) and t.lr > 0, "train.lr", t.lr, "must be a finite number > 0")
    _need(_finite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _need(_finite(t.warmup_epochs) and t.warmup_epochs >= 0, "train.warmup_epochs", t.warmup_epochs, "must be >= 0")
    _need(t.accumulate >= 1, "train.accumulate", t.accumulate, "must be >= 1")
    _need(t.early_stopping >= 0, "train.early_stopping", t.early_stopping, "must be >= 0 (0 = off)")
    _need(t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every, "must be >= 0 (0 = per epoch only)")
    _need(t.ema is None or (_finite(t.ema) and 0.5 <= t.ema < 1), "train.ema", t.ema,
          "must be a decay in [0.5, 1), e.g. 0.998 (or null for no weight averaging)")
    _need(t.max_minutes is None or (_finite(t.max_minutes) and t.max_minutes > 0), "train.max_minutes",
          t.max_minutes, "must be > 0 (or null for no limit)")
    _need(_finite(t.finetune_share) and 0 < t.finetune_share < 1, "train.finetune_share", t.finetune_share,
          "must be a share of the run in (0, 1), e.g. 0.2 for the last fifth")
    _need(t.freeze_stride == 0 or t.freeze_stride in FREEZE_STRIDES, "train.freeze_stride", t.freeze_stride,
          "must be 2, 4, 8 or 16 (freeze the encoder's layers up to that stride), or 0 to train every layer")
    if t.low_res_scale is not None:
        low, high = SEGMENTER_KWARGS["input_scale"]
        _need(cfg.model.task == "segment", "train.low_res_scale", t.low_res_scale,
              "is for segmenters (it sets model.kwargs.input_scale for part of the run); use null")
        _need(_finite(t.low_res_scale) and low <= t.low_res_scale <= high, "train.low_res_scale",
              t.low_res_scale, f"must be in {low}..{high}, like model.kwargs.input_scale (or null for off)")
        _need(t.early_stopping == 0, "train.early_stopping", t.early_stopping,
              "must be 0 with train.low_res_scale: stopping early could end the run before it trains at "
              "model.kwargs.input_scale, the scale the saved model predicts at")
    _need(_finite(t.low_res_share) and 0 < t.low_res_share < 1, "train.low_res_share", t.low_res_share,
          "must be a share of the run in (0, 1), e.g. 0.7 for the first 70%")
    _need(t.num_nodes >= 1, "train.num_nodes", t.num_nodes, "must be >= 1")
    _need(t.val_every >= 1, "train.val_every", t.val_every, "must be >= 1 (validate every N epochs)")
    for key, low in (("limit_train_batches", 1), ("limit_val_batches", 0)):  # 0 val batches: no validation
        v = getattr(t, key)
        _need(_finite(v) and (v >= low if isinstance(v, int) else 0 < v <= 1.0), f"train.{key}", v,
              f"must be a batch count >= {low} or a share in (0, 1]")
    if t.pos_weight is not None:
        _need(all(_finite(v) and v > 0 for v in t.pos_weight), "train.pos_weight", t.pos_weight,
              "every value must be > 0")
    try:
        check_model_kwargs(cfg.model.task, cfg.model.kwargs, arch=cfg.model.arch)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    from steelseg.models.pretrained import required_normalisation

    need = required_normalisation(cfg.model.encoder_weights)
    if need and (any(v != need[0] for v in d.mean) or any(v != need[1] for v in d.std)):
        raise ConfigError(f"model.encoder_weights {cfg.model.encoder_weights} were trained on pixels scaled to "
                          f"[-1, 1]: set data.mean: {[need[0]] * d.channels} and data.std: {[need[1]] * d.channels}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                check: bool = True) -> RunConfig:
    """Load a YAML run config (or the defaults) and apply ``section.key=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        tree = load_yaml(path.read_text(), str(path), ConfigError) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), raw)
    where = f"{path}: " if path else ""
    try:
        cfg = _build(RunConfig, tree, "")
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    return validate(cfg) if check else cfg
