"""Training: one Lightning module for segmenters and classifiers, and ``fit(cfg)``.

Every run writes a folder::

    runs/<name>/
      config.yaml          the resolved config
      split.json           which images trained and validated
      metrics.csv          one row per epoch (loss, Dice / AUC per class, lr, seconds)
      model/               model.json + best.safetensors + last.safetensors (no pickle)
      checkpoints/last.ckpt  Lightning resume state (weights, optimiser, scheduler, loop)
      tracking.json        MLflow / W&B run ids, so a resumed run logs into the same record

``steelseg train --resume runs/<name>`` continues from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from steelseg import __version__
from steelseg.checkpoint import save_weights, write_model_json
from steelseg.config import RunConfig, load_config
from steelseg.datasets import DefectDataset, SegmentationSamples, open_dataset
from steelseg.errors import ConfigError, DataError, TrainingError
from steelseg.fsutil import atomic_json, atomic_write
from steelseg.schema import InputMeta, ModelMeta, ModelSpec

import lightning as L  # noqa: E402  (after torch on purpose: Lightning imports torch anyway)
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging  # noqa: E402

__all__ = ["RunResult", "SteelsegModule", "build_loss", "fit", "resolve_split"]

RUN_DIR_ENV = "STEELSEG_RUN_DIR"


# ---- losses -----------------------------------------------------------------------------------
class _SumLoss(nn.Module):
    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


class _FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss

        return sigmoid_focal_loss(logits, target, self.alpha, self.gamma, reduction="mean")


class _PerClassLovasz(nn.Module):
    """Lovasz hinge per class channel over the whole batch, averaged over classes.

    The surrogate of the mean over classes of each class's IoU over the batch, which is what
    mIoU (a confusion matrix summed over the split) rewards; smp's multilabel Lovasz flattens all
    classes into one binary problem instead, so a large class would outweigh a small one.
    """

    def __init__(self) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.binary = smp.losses.LovaszLoss(mode="binary", per_image=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # the sort and the cumulative sums want full precision under bf16
        return torch.stack([self.binary(logits[:, c:c + 1], target[:, c:c + 1])
                            for c in range(logits.shape[1])]).mean()


def build_loss(name: str, task: str, num_classes: int, pos_weight: list[float] | None = None) -> nn.Module:
    """BCE, Dice, BCE+Dice, focal, Lovasz or BCE+Lovasz over per-class sigmoid outputs."""
    import segmentation_models_pytorch as smp

    pw = None
    if pos_weight is not None:
        if len(pos_weight) != num_classes:
            raise ConfigError(f"train.pos_weight: {len(pos_weight)} values for {num_classes} classes")
        pw = torch.tensor(pos_weight, dtype=torch.float32)
        if task == "segment":
            pw = pw.view(-1, 1, 1)
    bce = nn.BCEWithLogitsLoss(pos_weight=pw)
    if name == "bce":
        return bce
    if name == "focal":
        return _FocalLoss()
    dice = smp.losses.DiceLoss(mode="multilabel", from_logits=True)
    if name == "dice":
        return dice
    if name == "bce_dice":
        return _SumLoss(bce, dice)
    if name == "lovasz":
        return _PerClassLovasz()
    if name == "bce_lovasz":
        return _SumLoss(bce, _PerClassLovasz())
    raise ConfigError(f"train.loss: unknown loss {name!r}")


# ---- the module -------------------------------------------------------------------------------
def output_names(cfg: RunConfig, class_names: list[str]) -> list[str]:
    """Names of the model's outputs: the classes, or one "defect" output for a binary classifier."""
    return ["defect"] if cfg.model.task == "classify" and cfg.model.binary else list(class_names)

class SteelsegModule(L.LightningModule):
    """One module for both tasks: ``segment`` (masks) and ``classify`` (per-class presence)."""

    def __init__(self, cfg: RunConfig, class_names: list[str]) -> None:
        super().__init__()
        from steelseg.models import create_classifier, create_segmenter, depthwise_in_fp32, freeze_to_stride

        self.cfg = cfg
        self.class_names = output_names(cfg, class_names)
        k = len(self.class_names)
        m = cfg.model
        if m.task == "segment":
            self.model = create_segmenter(m.arch, m.encoder, k, cfg.data.channels, m.encoder_weights,
                                          m.per_class, **m.kwargs)
        else:
            self.model = create_classifier(m.encoder, k, cfg.data.channels, m.encoder_weights, **m.kwargs)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.train.depthwise_fp32:  # a no-op unless the run trains under CPU autocast
            depthwise_in_fp32(self.model)
        if cfg.train.freeze_stride:
            n = freeze_to_stride(self.model, cfg.train.freeze_stride, cfg.data.channels)
            frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
            total = sum(p.numel() for p in self.model.parameters())
            from lightning.pytorch.utilities.rank_zero import rank_zero_only

            if rank_zero_only.rank == 0:  # once, not once per DDP process
                print(f"train.freeze_stride={cfg.train.freeze_stride}: {n} parameter tensors frozen "
                      f"({frozen:,} of {total:,} weights), the layers up to 1/{cfg.train.freeze_stride} "
                      "resolution", file=sys.stderr, flush=True)
        self.loss_fn = build_loss(cfg.train.loss, m.task, k, cfg.train.pos_weight)
        t = cfg.train
        self.finetune_fn = build_loss(t.finetune_loss, m.task, k, t.pos_weight) if t.finetune_loss else None
        self._finetuning = False
        # train.low_res_scale: the Segmenter's input_scale for the first low_res_share of the run
        self.final_scale = float(getattr(self.model, "input_scale", 1.0))
        self._total_steps: int | None = None  # _run_steps(), asked of Lightning once
        self._val: list[dict[str, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _target(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.cfg.model.task == "segment":
            return batch["mask"]
        labels = batch["labels"]
        return labels.amax(dim=1, keepdim=True) if self.cfg.model.binary else labels

    def progress(self, step: int | None = None) -> float:
        """Share of the run done at optimiser ``step`` (default: now): steps, or the time budget when
        ``train.max_minutes`` is set and further along. Drives the lr schedule and the fine-tune phase."""
        step = self.global_step if step is None else step
        progress = step / self._run_steps()
        budget = self.cfg.train.max_minutes
        if budget:
            from lightning.pytorch.callbacks import Timer

            timer = next((cb for cb in self.trainer.callbacks if isinstance(cb, Timer)), None)
            if timer is not None:
                progress = max(progress, timer.time_elapsed() / (budget * 60))
        return progress

    def _run_steps(self) -> int:
        """Optimiser steps the run is planned for (Lightning's estimate, asked once)."""
        if self._total_steps is None:
            self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        return self._total_steps

    def _train_loss(self) -> nn.Module:
        """``train.loss``, or ``train.finetune_loss`` once the last ``finetune_share`` of the run began."""
        t = self.cfg.train
        if self.finetune_fn is None:
            return self.loss_fn
        if not self._finetuning and self.progress() >= 1 - t.finetune_share:
            self._finetuning = True
            if self.trainer.is_global_zero:
                print(f"fine-tuning with train.finetune_loss={t.finetune_loss} from step {self.global_step} "
                      f"({100 * self.progress():.0f}% of the run done)", file=sys.stderr, flush=True)
        return self.finetune_fn if self._finetuning else self.loss_fn

    @property
    def at_final_scale(self) -> bool:
        """Whether the network now runs at model.kwargs.input_scale, the scale model.json records (and
        predictions use). Only then is a validation score eligible as the run's best model."""
        return float(getattr(self.model, "input_scale", 1.0)) == self.final_scale

    def _set_input_scale(self) -> None:
        """``train.low_res_scale`` until ``low_res_share`` of the run is done, then the final scale."""
        t = self.cfg.train
        if t.low_res_scale is None:
            return
        low = self.progress() < t.low_res_share
        was_low = not self.at_final_scale
        self.model.input_scale = float(t.low_res_scale) if low else self.final_scale
        if was_low and not low and self.trainer.is_global_zero:
            print(f"input_scale {t.low_res_scale} -> {self.final_scale} (model.kwargs.input_scale) from step "
                  f"{self.global_step} ({100 * self.progress():.0f}% of the run done)", file=sys.stderr, flush=True)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._set_input_scale()
        logits = self(batch["image"])
        loss = self._train_loss()(logits, self._target(batch))
        if not torch.isfinite(loss):  # training on would save a NaN "best" model
            raise TrainingError(
                f"training loss is {float(loss)} at epoch {self.current_epoch + 1}, step {self.global_step}: "
                "stopped. Lower train.lr, check the images (all finite?) and masks, or use precision 32")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=batch["image"].shape[0], sync_dist=True)
        if self.finetune_fn is not None:  # per epoch, the share of its steps that fine-tuned (metrics.csv)
            self.log("train/finetune", float(self._finetuning), on_step=False, on_epoch=True,
                     batch_size=batch["image"].shape[0], sync_dist=True)
        if self.cfg.train.low_res_scale is not None:  # per epoch, the mean input_scale trained at
            self.log("train/input_scale", float(self.model.input_scale), on_step=False, on_epoch=True,
                     batch_size=batch["image"].shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"])
        target = self._target(batch)
        loss = self.loss_fn(logits, target)
        self.log("val/loss", loss, on_epoch=True, batch_size=batch["image"].shape[0], sync_dist=True)
        probs = torch.sigmoid(logits.float())
        if self.cfg.model.task == "segment":
            pred = probs > 0.5
            true = target > 0.5
            k = pred.shape[1]
            # Confusion matrix of label maps (0 = background) for IoU, summed over the split.
            p_lab = torch.where(pred.any(1), probs.argmax(1) + 1, 0)
            t_lab = torch.where(true.any(1), true.float().argmax(1) + 1, 0)
            cm = torch.bincount((t_lab * (k + 1) + p_lab).flatten(), minlength=(k + 1) ** 2)
            self._val.append({
                "inter": (pred & true).sum((2, 3)), "pred": pred.sum((2, 3)), "true": true.sum((2, 3)),
                "cm": cm.view(1, k + 1, k + 1),
            })
        else:
            self._val.append({"probs": probs, "labels": target})

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def on_validation_epoch_end(self) -> None:
        from steelseg import metrics

        if not self._val:
            return
        parts = {key: torch.cat([v[key] for v in self._val]) for key in self._val[0]}
        self._val = []
        if self.trainer.world_size > 1:
            parts = {key: self.all_gather(v).flatten(0, 1) for key, v in parts.items()}
        out: dict[str, float] = {}
        names = self.class_names
        if self.cfg.model.task == "segment":
            acc = metrics.DiceAccumulator()
            acc.update_counts(parts["inter"].cpu().numpy(), parts["pred"].cpu().numpy(),
                              parts["true"].cpu().numpy())
            out.update(acc.compute().as_dict(names))
            cm = parts["cm"].sum(0).cpu().numpy()
            iou = metrics.iou_from_confusion(cm)
            out["miou"] = metrics.mean_iou(cm)
            out.update({f"iou_{n}": float(v) for n, v in zip(names, iou[1:]) if np.isfinite(v)})
        else:
            out.update(classification_scores(parts["probs"].cpu().numpy(), parts["labels"].cpu().numpy(), names))
        for key, value in out.items():
            if np.isfinite(value):
                # every rank gathered the whole split: the values agree, so each rank logs them
                # (EarlyStopping on every rank needs the monitored value)
                self.log(f"val/{key}", float(value), prog_bar=key in ("dice", "auc", "miou"))

    def configure_optimizers(self) -> Any:
        t = self.cfg.train
        params = [p for p in self.parameters() if p.requires_grad]  # train.freeze_stride leaves some out
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        if t.scheduler == "none":
            return opt
        total = self._run_steps()
        warmup = int(total * t.warmup_epochs / max(t.epochs, 1))

        def factor(step: int) -> float:
            # With a time budget the schedule ends when the budget does, whatever train.epochs says:
            # a run cut by max_minutes has annealed instead of stopping at a high learning rate.
            return lr_factor(t.scheduler, step, self.progress(step), warmup)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _cos(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def lr_factor(kind: str, step: int, progress: float, warmup: int = 0, floor: float = 0.01) -> float:
    """Multiplier of the base learning rate at optimiser ``step`` and ``progress`` (0..1 of the run).

    ``cosine``: linear warm-up over ``warmup`` steps, times a cosine decay to ``floor``.
    ``onecycle``: the shape of torch's OneCycleLR (cosine up from 1/25 over the first 30%, then down
    to 1/25e4; no momentum cycling), written here so that a time budget can drive it too.
    """
    p = min(max(progress, 0.0), 1.0)
    if kind == "onecycle":
        return _cos(1 / 25, 1.0, p / 0.3) if p < 0.3 else _cos(1.0, 1 / 25e4, (p - 0.3) / 0.7)
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return warm * _cos(1.0, floor, p)


def classification_scores(probs: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, float]:
    """AUC and F1 (at 0.5) per class and their means; AUC is NaN where a class has one label only."""
    from sklearn.metrics import f1_score, roc_auc_score

    out: dict[str, float] = {}
    aucs, f1s = [], []
    for c, name in enumerate(names):
        y = labels[:, c] > 0.5
        auc = float(roc_auc_score(y, probs[:, c])) if 0 < y.sum() < len(y) else float("nan")
        f1 = float(f1_score(y, probs[:, c] > 0.5, zero_division=0.0))
        out[f"auc_{name}"], out[f"f1_{name}"] = auc, f1
        aucs.append(auc)
        f1s.append(f1)
    any_y = labels.max(1) > 0.5
    if 0 < any_y.sum() < len(any_y):
        out["auc_any"] = float(roc_auc_score(any_y, probs.max(1)))
    out["auc"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    out["f1"] = float(np.mean(f1s))
    return out


# ---- callbacks --------------------------------------------------------------------------------
class EmaWeights(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights; validation runs on the average.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as timm's ModelEma
    does), so the average is not dominated by the random initial weights in the first epochs."""

    def __init__(self, decay: float) -> None:
        super().__init__(decay=decay)
        self._kwargs.pop("avg_fn", None)
        self._kwargs["multi_avg_fn"] = partial(_ema_update, decay=decay)

    def averaged(self) -> nn.Module | None:
        return None if self._average_model is None else self._average_model.module.model


def _ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor | int,
                decay: float) -> None:
    """One EMA step over a group of same-dtype tensors (AveragedModel's ``multi_avg_fn``)."""
    n = float(num_averaged)
    d = min(decay, (1 + n) / (10 + n))
    if averaged and (averaged[0].is_floating_point() or averaged[0].is_complex()):
        torch._foreach_lerp_(averaged, current, 1 - d)
    else:  # integer buffers (BatchNorm's num_batches_tracked): keep the current count
        for a, c in zip(averaged, current):
            a.copy_(c)


def _saved_model(trainer: L.Trainer, pl_module: L.LightningModule) -> nn.Module:
    """The network whose weights were validated: the weight average when one is kept."""
    for cb in trainer.callbacks:
        if isinstance(cb, EmaWeights) and cb.averaged() is not None:
            return cb.averaged()
    return pl_module.model


class RunRecorder(Callback):
    """Writes metrics.csv per epoch and the safetensors model folder (best and last weights)."""

    def __init__(self, run_dir: Path, meta: ModelMeta, monitor: str, mode: str) -> None:
        self.run_dir, self.meta, self.monitor, self.mode = run_dir, meta, monitor, mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._t0 = time.time()

    def state_dict(self) -> dict[str, Any]:
        # The best epoch's record travels in the resume checkpoint: a resumed run keeps it in model.json.
        return {"best": self.best, "best_epoch": self.best_epoch, "best_record": json.dumps(self.meta.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        if state.get("best_record"):
            self.meta.best = json.loads(state["best_record"])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook: train and val metrics are both here.
        # Every rank reads them: under DDP reading them is a collective (sync_dist) and must match.
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step,
               "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan"),
               "seconds": round(time.time() - self._t0, 2)}
        row.update({k: round(v, 6) for k, v in sorted(m.items()) if k.startswith(("train/", "val/"))
                    and not k.endswith("_step")})
        _append_csv(self.run_dir / "metrics.csv", row)
        score = m.get(self.monitor)
        # Scores from a train.low_res_scale phase are logged but belong to another input_scale than the
        # one model.json records: not eligible as the best model.
        if score is not None and np.isfinite(score) and getattr(pl_module, "at_final_scale", True):
            better = self.best is None or (score > self.best if self.mode == "max" else score < self.best)
            if better:
                self.best, self.best_epoch = score, trainer.current_epoch
                model_dir = self.run_dir / "model"
                save_weights(_saved_model(trainer, pl_module), model_dir / "best.safetensors")
                self.meta.best = {"epoch": self.best_epoch, "monitor": self.monitor, "value": score,
                                  "metrics": {k: v for k, v in m.items() if k.startswith("val/")}}
                write_model_json(model_dir, self.meta)
        _log_line(trainer, row)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model_dir = self.run_dir / "model"
        if not getattr(pl_module, "at_final_scale", True):  # the run ended before train.low_res_share
            scale = float(pl_module.model.input_scale)
            print(f"warning: the run ended while training at train.low_res_scale={scale}, before the switch "
                  "to model.kwargs.input_scale: model.json records input_scale "
                  f"{scale}, the scale these weights were trained at", file=sys.stderr, flush=True)
            self.meta.model.kwargs = {**self.meta.model.kwargs, "input_scale": scale}
        last = _saved_model(trainer, pl_module)
        save_weights(last, model_dir / "last.safetensors")
        if not (model_dir / "best.safetensors").exists():  # no validation ran: last is the best we have
            save_weights(last, model_dir / "best.safetensors")
        self.meta.epochs_trained = trainer.current_epoch
        write_model_json(model_dir, self.meta)


def cpu_facts() -> tuple[str | None, set[str]] | None:
    """The CPU's model name (None if not listed) and feature flags from /proc/cpuinfo; None where
    there is no such file (not Linux)."""
    name: str | None = None
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name is None:
                name = " ".join(value.split())
            elif key.strip() in ("flags", "Features") and not flags:  # Features: Arm
                flags = set(value.split())
    except OSError:
        return None
    return name, flags


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (MemAvailable in /proc/meminfo); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_has_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX-512 BF16, AMX, Arm BF16); None where unknown."""
    facts = cpu_facts()
    return None if facts is None else bool(facts[1] & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    facts = cpu_facts()
    if facts and facts[0]:
        return facts[0]
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(trainer: L.Trainer) -> str:
    """What a run trains on, in words, for model.json and ``steelseg runs`` (img/s means little
    without it): ``NVIDIA H200``, ``CPU AMD EPYC ... (2 threads)``, ``4 x ...`` under DDP."""
    kind = type(trainer.accelerator).__name__.removesuffix("Accelerator")
    if kind == "CUDA":
        try:
            name = torch.cuda.get_device_name(trainer.strategy.root_device)
        except (RuntimeError, AssertionError, ValueError):
            name = torch.cuda.get_device_name()
    elif kind == "CPU":
        name = f"CPU {cpu_model()} ({torch.get_num_threads()} threads)"
    else:
        name = kind
    return name if trainer.world_size == 1 else f"{trainer.world_size} x {name}"


class ResumeCheckpoint(Callback):
    """``checkpoints/last.ckpt``, the resume state: written at every epoch end (after validation, with
    the epoch's best-model record) and every ``every`` optimiser steps, by a rename, so a kill -9 loses
    at most ``every`` steps and never leaves a half-written file. (Lightning's ModelCheckpoint with
    ``save_top_k=0`` writes ``last`` only every N steps and at train end, which with weight averaging
    comes after the average was copied into the model.)"""

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank calls it; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every and trainer.global_step % self.every == 0 and trainer.global_step != self._saved_step:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)


def _log_line(trainer: L.Trainer, row: dict[str, Any]) -> None:
    if sys.stderr.isatty():
        return  # the progress bar shows it
    shown = {"train_loss": row.get("train/loss_epoch"), "val_loss": row.get("val/loss")}
    shown.update({k[4:]: v for k, v in row.items() if k in ("val/dice", "val/miou", "val/auc", "val/f1")})
    parts = [f"{k} {v:.4f}" for k, v in shown.items() if v is not None]
    print(f"epoch {row['epoch'] + 1}/{trainer.max_epochs}  " + "  ".join(parts) + f"  ({row['seconds']:.1f}s)",
          flush=True)


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    rows: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) != row["epoch"]]
    rows.append(row)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_write(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


# ---- data -------------------------------------------------------------------------------------
def resolve_split(cfg: RunConfig, ds: DefectDataset, run_dir: Path | None = None) -> tuple[list[str], list[str], str]:
    """(train ids, val ids, how): folds file > named splits > the dataset's train/val > new folds."""
    from steelseg.folds import fold_split, make_folds, read_folds, write_folds

    d = cfg.data
    if d.folds:
        train, val = fold_split(read_folds(d.folds), d.fold)
        return train, val, f"fold {d.fold} of {d.folds}"
    if d.train_split or d.val_split:
        if not (d.train_split and d.val_split):
            raise ConfigError("data.train_split and data.val_split go together")
        return ds.split(d.train_split).image_ids, ds.split(d.val_split).image_ids, \
            f"splits {d.train_split}/{d.val_split}"
    if "train" in ds.splits and "val" in ds.splits:
        return ds.splits["train"], ds.splits["val"], "the dataset's train/val lists"
    folds = make_folds(ds, k=5, seed=cfg.train.seed)
    if run_dir is not None:
        write_folds(folds, run_dir / "folds.csv")
    train, val = fold_split(folds, d.fold)
    return train, val, f"fold {d.fold} of 5 new stratified folds (seed {cfg.train.seed})"


def _balanced_weights(ds: DefectDataset) -> np.ndarray:
    """Per-image sampling weights so each class (and defect-free) is drawn about equally often."""
    pres = ds.presence()
    labels = np.concatenate([pres, ~pres.any(1, keepdims=True)], axis=1)
    freq = labels.sum(0).clip(min=1)
    return (labels / freq).max(1)


def make_loaders(cfg: RunConfig, train_ds: DefectDataset, val_ds: DefectDataset) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader, WeightedRandomSampler

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from steelseg.augment import seed_worker, stream_seed, train_transform

    d = cfg.data
    train_sizes = set(zip(train_ds.table["height"], train_ds.table["width"]))
    if len(train_sizes) > 1 and not d.crop:
        raise ConfigError(f"{d.path}: training images come in {len(train_sizes)} sizes; set data.crop: [h, w] "
                          "so batches share one size (smaller images are padded)")
    # Validation runs at full size: images of several sizes go one at a time.
    mixed_val = len(set(zip(val_ds.table["height"], val_ds.table["width"]))) > 1
    kw = {"channels": d.channels, "mean": d.mean, "std": d.std}
    rank = getattr(rank_zero_only, "rank", 0) or 0  # from the environment under DDP: ranks augment differently
    seed = None if cfg.train.seed is None else stream_seed(cfg.train.seed, rank)
    train_set = SegmentationSamples(train_ds, train_transform(d, seed=seed), **kw)
    val_set = SegmentationSamples(val_ds, None, **kw)
    if d.cache:
        devices = str(cfg.train.devices)  # under DDP each process on this machine keeps a copy
        _preload(train_set, val_set, copies=int(devices) if devices.isdigit() else 1)
    sampler = None
    if d.balanced_sampling:
        w = torch.as_tensor(_balanced_weights(train_ds), dtype=torch.double)
        sampler = WeightedRandomSampler(w, num_samples=len(w), replacement=True)
    common = {"num_workers": d.num_workers, "persistent_workers": d.num_workers > 0,
              "pin_memory": torch.cuda.is_available()}
    train = DataLoader(train_set, batch_size=d.batch_size, shuffle=sampler is None, sampler=sampler,
                       drop_last=len(train_set) > d.batch_size, worker_init_fn=seed_worker, **common)
    val = DataLoader(val_set, batch_size=1 if mixed_val else (d.val_batch_size or d.batch_size), shuffle=False,
                     **common)
    return train, val


def _preload(*sets: SegmentationSamples, copies: int = 1) -> None:
    """``data.cache``: decode the sets into memory once, after checking that they fit (``copies``
    processes on this machine each keep one)."""
    one = sum(s.decoded_bytes() for s in sets)
    need = one * max(1, copies)
    free = available_memory()
    gib = 2 ** 30
    if free is not None and need > free / 2:
        raise ConfigError(f"data.cache: the decoded images and masks need about {need / gib:.1f} GiB, more than "
                          f"half of the {free / gib:.1f} GiB of free memory; set data.cache: false (read the "
                          "files each epoch) or train on a smaller set")
    t0 = time.time()
    show = sys.stderr.isatty()
    for s, desc in zip(sets, ("caching training images", "caching validation images")):
        s.preload(desc, progress=show)
    print(f"data.cache: {sum(len(s) for s in sets)} images and masks decoded into memory "
          f"({one / 2 ** 20:.0f} MiB) in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)


# ---- the run ----------------------------------------------------------------------------------
@dataclass
class RunResult:
    run_dir: Path
    best: float | None
    best_epoch: int | None
    monitor: str


def _batches(n: int, limit: int | float) -> int:
    return min(n, limit) if isinstance(limit, int) else int(n * limit)


def _new_run_dir(cfg: RunConfig) -> Path:
    if os.environ.get(RUN_DIR_ENV):  # a DDP worker started by Lightning: same folder as rank 0
        return Path(os.environ[RUN_DIR_ENV])
    name = cfg.name or f"{cfg.model.task}-{cfg.model.arch if cfg.model.task == 'segment' else 'cls'}-" \
                       f"{cfg.model.encoder.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out_dir) / name
    if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        raise ConfigError(f"{run_dir} already holds a run; use --resume {run_dir} or another name")
    return run_dir


def _loggers(cfg: RunConfig, run_dir: Path, resume: bool) -> list[Any]:
    track = cfg.track
    ids_path = run_dir / "tracking.json"
    ids = json.loads(ids_path.read_text()) if resume and ids_path.is_file() else {}
    loggers: list[Any] = []
    if track.mlflow:
        from lightning.pytorch.loggers import MLFlowLogger

        uri = track.tracking_uri or default_tracking_uri()
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        artifacts = None
        if not track.tracking_uri:
            artifacts = (Path.cwd() / "mlruns" / "artifacts").as_uri()
        loggers.append(MLFlowLogger(experiment_name=track.experiment, run_name=run_dir.name, tracking_uri=uri,
                                    run_id=ids.get("mlflow_run_id"), artifact_location=artifacts))
    if track.wandb:
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError as exc:  # pragma: no cover
            raise ConfigError("track.wandb needs the wandb extra: pip install 'steelseg[wandb]'") from exc
        loggers.append(WandbLogger(project=track.wandb_project, name=run_dir.name, save_dir=str(run_dir),
                                   offline=track.wandb_mode == "offline", id=ids.get("wandb_run_id"),
                                   resume="allow" if resume else None,
                                   mode=track.wandb_mode))
    return loggers


def default_tracking_uri() -> str:
    """Local MLflow store under the working folder: ./mlruns/mlflow.db (no server needed)."""
    return "sqlite:///" + str(Path.cwd() / "mlruns" / "mlflow.db")


def _model_meta(cfg: RunConfig, ds: DefectDataset, split_how: str) -> ModelMeta:
    sizes = sorted({(int(h), int(w)) for h, w in zip(ds.table["height"], ds.table["width"])})
    m = cfg.model
    spec = ModelSpec(task=m.task, arch=m.arch, encoder=m.encoder, outputs=len(output_names(cfg, ds.class_names)),
                     binary=m.binary, in_channels=cfg.data.channels, per_class=m.per_class, kwargs=dict(m.kwargs),
                     encoder_weights_at_init=m.encoder_weights)
    inp = InputMeta(channels=cfg.data.channels, mean=list(cfg.data.mean), std=list(cfg.data.std), scale=1 / 255,
                    image_size=list(sizes[0]) if len(sizes) == 1 else None, train_crop=cfg.data.crop)
    from steelseg.pretrained import describe

    return ModelMeta(model=spec, class_names=list(ds.class_names), input=inp, steelseg_version=__version__,
                     thresholds={"pixel": [0.5] * len(ds.class_names)},
                     trained_on={"data": cfg.data.path, "split": split_how,
                                 "init_weights": describe(m.encoder_weights)})


def fit(cfg: RunConfig, resume: str | Path | None = None, progress: bool | None = None,
        callbacks: list[Callback] | None = None) -> RunResult:
    """Train one model as ``cfg`` says; ``resume`` continues the run folder given.

    ``callbacks`` are extra Lightning callbacks (profiling, custom logging).
    """
    launcher = not os.environ.get(RUN_DIR_ENV)
    try:
        return _fit(cfg, resume, progress, callbacks or [])
    finally:
        if launcher:  # the next run in this process gets a folder of its own
            os.environ.pop(RUN_DIR_ENV, None)


def _fit(cfg: RunConfig, resume: str | Path | None, progress: bool | None, extra: list[Callback]) -> RunResult:
    run_dir = Path(resume) if resume else _new_run_dir(cfg)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if resume and not ckpt.is_file():
        raise DataError(f"{ckpt}: nothing to resume from (the run saved no checkpoint yet)")
    if resume:
        _check_resume_state(ckpt)
    is_worker = bool(os.environ.get(RUN_DIR_ENV)) and os.environ.get("LOCAL_RANK", "0") != "0"
    if not cfg.data.path:
        raise ConfigError("data.path is empty: give the dataset with --data PATH or --set data.path=PATH")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    ds = open_dataset(cfg.data.path, cfg.data.class_names, layout=cfg.data.layout)  # bad data fails before a run folder exists
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP workers re-run this command and read it
    (run_dir / "model").mkdir(parents=True, exist_ok=True)
    train_ids, val_ids, how = resolve_split(cfg, ds, None if is_worker else run_dir)
    if not train_ids or not val_ids:
        raise DataError(f"{cfg.data.path}: empty training or validation set ({how})")
    meta = _model_meta(cfg, ds, how)
    if not is_worker and not resume:
        cfg.save(run_dir / "config.yaml")
        atomic_json(run_dir / "split.json", {"how": how, "train": train_ids, "val": val_ids})
    train_loader, val_loader = make_loaders(cfg, ds.subset(train_ids), ds.subset(val_ids))
    module = SteelsegModule(cfg, ds.class_names)
    t = cfg.train
    monitor = t.monitor or ("val/dice" if cfg.model.task == "segment" else "val/auc")
    mode = "min" if monitor.endswith("loss") else "max"
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar

    progress = sys.stderr.isatty() if progress is None else progress
    callbacks: list[Any] = [
        RunRecorder(run_dir, meta, monitor, mode),
        ResumeCheckpoint(run_dir / "checkpoints" / "last.ckpt", t.checkpoint_every),
    ]
    callbacks += extra
    if progress:
        callbacks.append(TQDMProgressBar())
    if t.ema:
        callbacks.append(EmaWeights(decay=t.ema))
    if t.early_stopping:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=t.early_stopping))
    precision = t.precision
    if precision == "auto":
        precision = "16-mixed" if torch.cuda.is_available() else "32-true"
    devices: Any = t.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    loggers = _loggers(cfg, run_dir, bool(resume))
    trainer = L.Trainer(
        default_root_dir=str(run_dir), max_epochs=t.epochs, accelerator=t.accelerator, devices=devices,
        strategy=t.strategy, num_nodes=t.num_nodes, precision=precision, accumulate_grad_batches=t.accumulate,
        limit_train_batches=t.limit_train_batches,
        max_time=None if t.max_minutes is None else {"minutes": t.max_minutes}, limit_val_batches=t.limit_val_batches,
        callbacks=callbacks, logger=loggers or False, enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
        log_every_n_steps=max(1, min(10, _batches(len(train_loader), t.limit_train_batches))),
    )
    meta.trained_on["device"] = device_name(trainer)  # the last machine to train it, when resumed elsewhere
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)  # the one Lightning chose, not a guess beside it
    if precision.startswith("bf16") and on_cpu and cpu_has_bf16() is False:
        print(f"warning: train.precision {precision} on a CPU without native bf16 (no avx512_bf16 / amx_bf16 "
              "in /proc/cpuinfo): bf16 is emulated there and slower; --set train.precision=32-true",
              file=sys.stderr)
    if loggers and trainer.is_global_zero:
        for lg in loggers:
            lg.log_hyperparams(cfg.flat())
        ids = {}
        for lg in loggers:
            if type(lg).__name__ == "MLFlowLogger":
                ids["mlflow_run_id"] = lg.run_id
            elif type(lg).__name__ == "WandbLogger":
                ids["wandb_run_id"] = lg.version
        atomic_json(run_dir / "tracking.json", ids)
    # weights_only=True always: a tampered last.ckpt cannot run code, whatever the environment says.
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt) if resume else None, weights_only=True)
    recorder: RunRecorder = callbacks[0]
    if trainer.is_global_zero:
        for lg in loggers:
            if type(lg).__name__ == "MLFlowLogger":
                lg.experiment.log_artifacts(lg.run_id, str(run_dir / "model"), "model")
                if (run_dir / "metrics.csv").is_file():
                    lg.experiment.log_artifact(lg.run_id, str(run_dir / "metrics.csv"))
    return RunResult(run_dir, recorder.best, recorder.best_epoch, monitor)


def _check_resume_state(ckpt: Path) -> None:
    """Refuse a resume checkpoint that holds anything but tensors and plain data (a tampered file
    could otherwise run code); ``weights_only=True`` wins over $TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD."""
    try:
        torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{ckpt}: not a plain resume checkpoint, refused ({first}); it was changed or "
                        "damaged since steelseg wrote it") from None


def fit_from_args(config: str | None, overrides: list[str], resume: str | None) -> RunResult:
    """What ``steelseg train`` runs: a resumed run re-reads its own config.yaml."""
    if resume:
        cfg_path = Path(resume) / "config.yaml"
        if not cfg_path.is_file():
            raise DataError(f"{cfg_path}: missing; --resume takes a run folder written by steelseg train")
        return fit(load_config(cfg_path, overrides), resume=resume)
    return fit(load_config(config, overrides))
