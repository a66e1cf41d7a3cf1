"""The LightningModule: one module for segmenters and classifiers (``model.task``), its validation
scores (Dice, IoU from a confusion matrix summed over the split, AUC / F1) and the learning-rate
schedule, which a time budget (``train.max_minutes``) can drive as well as a step count."""

from __future__ import annotations

import math
import sys
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from steelseg import metrics
from steelseg.errors import TrainingError
from steelseg.models.factory import create_classifier, create_segmenter, depthwise_in_fp32, freeze_to_stride
from steelseg.models.losses import build_loss
from steelseg.training.config import RunConfig

__all__ = ["SteelsegModule", "classification_scores", "detection_ap", "lr_factor", "output_names"]


def output_names(cfg: RunConfig, class_names: list[str]) -> list[str]:
    """Names of the model's outputs: the classes, or one "defect" output for a binary classifier."""
    return ["defect"] if cfg.model.task == "classify" and cfg.model.binary else list(class_names)

class SteelsegModule(L.LightningModule):
    """One module for both tasks: ``segment`` (masks) and ``classify`` (per-class presence)."""

    def __init__(self, cfg: RunConfig, class_names: list[str]) -> None:
        super().__init__()

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
        self._val_ids: list[str] = []
        # the last validation's image-level scores: (image ids, (N, K) scores, (N, K) presence); the run
        # recorder writes the best epoch's as val_predictions.csv (None under DDP, whose gather reorders)
        self.val_images: tuple[list[str], np.ndarray, np.ndarray] | None = None

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

    def _two_head_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """model.cls_head: the segmentation loss on the mask head plus train.cls_weight x BCE of the image
        head against each class's presence in the mask."""
        x = batch["image"]
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        masks, cls = self.model.heads(x)
        target = self._target(batch)
        present = target.flatten(2).amax(dim=2).to(cls.dtype)
        cls_loss = nn.functional.binary_cross_entropy_with_logits(cls.float(), present.float())
        self.log("train/cls_loss", cls_loss, on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return self._train_loss()(masks, target) + self.cfg.train.cls_weight * cls_loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._set_input_scale()
        if getattr(self.model, "cls_head", False):
            loss = self._two_head_loss(batch)
        else:
            loss = self._train_loss()(self(batch["image"]), self._target(batch))
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
        self._val_ids.extend(str(i) for i in batch.get("image_id", ()))
        if self.cfg.model.task == "segment":
            pred = probs > 0.5
            true = target > 0.5
            k = pred.shape[1]
            # Confusion matrix of label maps (0 = background) for IoU, summed over the split.
            p_lab = torch.where(pred.any(1), _channel_argmax(probs) + 1, 0)
            t_lab = torch.where(true.any(1), _channel_argmax(true.float()) + 1, 0)
            cm = torch.bincount((t_lab * (k + 1) + p_lab).flatten(), minlength=(k + 1) ** 2)
            self._val.append({
                "inter": (pred & true).sum((2, 3)), "pred": pred.sum((2, 3)), "true": true.sum((2, 3)),
                "cm": cm.view(1, k + 1, k + 1), "peak": probs.amax((2, 3)),  # image score: the maximum probability
            })
        else:
            self._val.append({"probs": probs, "labels": target})

    def on_validation_epoch_start(self) -> None:
        self._val = []
        self._val_ids = []

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        parts = {key: torch.cat([v[key] for v in self._val]) for key in self._val[0]}
        self._val, ids, self._val_ids = [], self._val_ids, []
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
            scores, present = parts["peak"].cpu().numpy(), parts["true"].cpu().numpy() > 0
            out.update(detection_ap(scores, present, names))
        else:
            scores, present = parts["probs"].cpu().numpy(), parts["labels"].cpu().numpy() > 0.5
            out.update(classification_scores(scores, parts["labels"].cpu().numpy(), names))
            out.update(detection_ap(scores, present, names))
        whole = self.trainer.world_size == 1 and len(ids) == len(scores)
        self.val_images = (ids, scores, present) if whole else None
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


def detection_ap(scores: np.ndarray, present: np.ndarray, names: list[str]) -> dict[str, float]:
    """Image-level average precision of (N, K) image scores against (N, K) presence: ``ap`` for any defect
    (the maximum score), ``ap_<class>`` per class; NaN where no image of the split is defective."""
    out = {"ap": metrics.average_precision(scores.max(axis=1), present.any(axis=1))}
    if len(names) > 1:
        out.update({f"ap_{n}": metrics.average_precision(scores[:, c], present[:, c]) for c, n in enumerate(names)})
    return out


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


def _channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(1)`` of an (N, C, H, W) tensor, the same ties (the first), 6x faster on CPU: argmax over a
    strided channel axis is slow, over the last contiguous one is not (0.68 s -> 0.10 s a 8x4x256x1600 batch)."""
    return x.movedim(1, -1).contiguous().argmax(-1)
