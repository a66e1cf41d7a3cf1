"""Lightning callbacks of a run: the weight average (EMA), the run recorder (metrics.csv, best and last
safetensors, model.json) and the resume checkpoint (``checkpoints/last.ckpt``, written by a rename)."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from torch import nn

from steelseg.fsutil import atomic_write
from steelseg.metrics import monitor_key
from steelseg.models.checkpoint import save_weights, write_model_json
from steelseg.schema import ModelMeta

__all__ = ["EmaWeights", "ResumeCheckpoint", "RunRecorder"]


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

    def __init__(self, run_dir: Path, meta: ModelMeta, monitor: str, mode: str, keep_top: int = 0) -> None:
        self.run_dir, self.meta, self.monitor, self.mode = run_dir, meta, monitor, mode
        self.best: float | None = None  # the first monitored value of the best epoch
        self.best_epoch: int | None = None
        self._best_key: tuple[float, ...] | None = None  # metrics.monitor_key of the best epoch
        self.keep_top = keep_top  # train.average_best: the weights of the best N epochs, kept in model/top/
        self.top: list[tuple[list[float], int]] = []  # (monitor key, epoch), best first
        self._validated: int | None = None  # the last epoch whose validation ran (train.val_every skips some)
        self._t0 = time.time()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = trainer.current_epoch

    def state_dict(self) -> dict[str, Any]:
        # The best epoch's record travels in the resume checkpoint: a resumed run keeps it in model.json.
        return {"best": self.best, "best_epoch": self.best_epoch, "best_record": json.dumps(self.meta.best),
                "best_key": None if self._best_key is None else list(self._best_key), "top": json.dumps(self.top)}

    def top_files(self) -> list[Path]:
        """The kept weights of the best epochs, best first (``train.average_best``)."""
        return [self.run_dir / "model" / "top" / f"epoch{e:04d}.safetensors" for _, e in self.top]

    def _keep(self, trainer: L.Trainer, pl_module: L.LightningModule, key: tuple[float, ...]) -> None:
        epoch = trainer.current_epoch
        ranked = sorted([*[(k, e) for k, e in self.top if e != epoch], (list(key), epoch)], key=lambda t: t[0],
                        reverse=True)
        keep, drop = ranked[:self.keep_top], ranked[self.keep_top:]
        if (list(key), epoch) in keep:
            folder = self.run_dir / "model" / "top"
            folder.mkdir(parents=True, exist_ok=True)
            save_weights(_saved_model(trainer, pl_module), folder / f"epoch{epoch:04d}.safetensors")
        for _, e in drop:
            (self.run_dir / "model" / "top" / f"epoch{e:04d}.safetensors").unlink(missing_ok=True)
        self.top = keep

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.top = [(list(k), int(e)) for k, e in json.loads(state.get("top") or "[]")]
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        if state.get("best_key") is not None:
            self._best_key = tuple(state["best_key"])
        elif self.best is not None:  # a checkpoint from before monitor keys: one monitored value
            self._best_key = (self.best if self.mode == "max" else -self.best,)
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
        key = monitor_key(m, self.monitor)  # "val/ap,val/dice": ties on the first broken by the next
        score = m.get(self.monitor.split(",")[0].strip())
        # Scores from a train.low_res_scale phase are logged but belong to another input_scale than the
        # one model.json records: not eligible as the best model.
        if key is not None and getattr(pl_module, "at_final_scale", True):
            # an epoch without validation still shows the last validation's metrics: never a candidate
            if self.keep_top >= 2 and self._validated == trainer.current_epoch:
                self._keep(trainer, pl_module, key)
            if self._best_key is None or key > self._best_key:
                self._best_key = key
                self.best, self.best_epoch = score, trainer.current_epoch
                model_dir = self.run_dir / "model"
                save_weights(_saved_model(trainer, pl_module), model_dir / "best.safetensors")
                self.meta.best = {"epoch": self.best_epoch, "monitor": self.monitor, "value": score,
                                  "metrics": {k: v for k, v in m.items() if k.startswith("val/")}}
                write_model_json(model_dir, self.meta)
                self._write_val_images(pl_module)
        _log_line(trainer, row)

    def _write_val_images(self, pl_module: L.LightningModule) -> None:
        """``val_predictions.csv``: the best epoch's image-level score per class (a classifier's
        probability, a segmenter's largest pixel probability) beside the truth, one row per validation
        image, so its AUC / AP / F1 can be checked by anyone (``steelseg`` scores them with scikit-learn)."""
        val = getattr(pl_module, "val_images", None)
        path = self.run_dir / "val_predictions.csv"
        if val is None:
            path.unlink(missing_ok=True)  # never a stale file beside a newer best model
            return
        ids, scores, present = val
        names = list(getattr(pl_module, "class_names", [str(c) for c in range(scores.shape[1])]))
        with atomic_write(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_id", "epoch", *[f"score_{n}" for n in names], *[f"true_{n}" for n in names]])
            for i, image_id in enumerate(ids):
                w.writerow([image_id, self.best_epoch, *[f"{v:.6g}" for v in scores[i]],
                            *[int(v) for v in present[i]]])

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
    shown.update({k[4:]: v for k, v in row.items() if k in ("val/dice", "val/miou", "val/auc", "val/f1", "val/ap")})
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
