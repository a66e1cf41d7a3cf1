"""``fit(cfg)``: one training run, start to end.

Every run writes a folder::

    runs/<name>/
      config.yaml          the resolved config
      split.json           which images trained and validated
      metrics.csv          one row per epoch (loss, Dice / AUC per class, lr, seconds)
      val_predictions.csv  the best epoch's image-level score per class and validation image, beside the truth
      model/               model.json + best.safetensors + last.safetensors (no pickle)
      checkpoints/last.ckpt  Lightning resume state (weights, optimiser, scheduler, loop)
      tracking.json        MLflow / W&B run ids, so a resumed run logs into the same record

``steelseg train --resume runs/<name>`` continues from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from steelseg import __version__, logs
from steelseg.data.table import DefectDataset
from steelseg.errors import ConfigError, DataError, TrainingStopped
from steelseg.fsutil import atomic_json
from steelseg.machine import cpu_has_bf16, cpu_model
from steelseg.models.pretrained import describe
from steelseg.schema import InputMeta, ModelMeta, ModelSpec
from steelseg.training.callbacks import EmaWeights, ResumeCheckpoint, RunRecorder
from steelseg.training.config import RunConfig, load_config
from steelseg.training.loaders import (
    TrainingData,
    add_extra,
    make_loaders,
    open_training_data,
    resolve_split,
    split_groups,
)
from steelseg.training.module import SteelsegModule, output_names
from steelseg.training.tracking import log_artifacts, make_loggers, record_run

__all__ = ["RUN_DIR_ENV", "RunResult", "fit", "fit_from_args"]

RUN_DIR_ENV = "STEELSEG_RUN_DIR"


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
    _check_new(run_dir)
    return run_dir


def _check_new(run_dir: Path) -> None:
    if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        raise ConfigError(f"{run_dir} already holds a run; use --resume {run_dir} or another name")


CLAIM = ".steelseg-train.lock"  # in a run folder while a process trains in it
RANK_VARS = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")  # set (not 0) in every DDP process but the first


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _link_claim(mine: Path, lock: Path) -> None:
    """``lock`` made from ``mine`` (which holds our process id) atomically, never seen empty; where the file
    system has no hard links, created exclusively and then written. FileExistsError when taken."""
    try:
        os.link(mine, lock)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network or FAT file systems)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(mine.read_text())


def claim_run_dir(run_dir: Path) -> Path | None:
    """Claim ``run_dir`` for this process before any work, atomically (``O_EXCL``): a second ``steelseg
    train`` with the same name is refused while the first is alive, instead of sharing the folder. A
    claim left by a process that died is taken over. DDP processes other than the first (Lightning's
    workers, other nodes, SLURM tasks) use its folder and claim nothing (None)."""
    if any(os.environ.get(k, "0") != "0" for k in RANK_VARS):
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / CLAIM
    mine = run_dir / f"{CLAIM}.{os.getpid()}"
    mine.write_text(f"{os.getpid()}\n")
    try:
        for _ in range(3):
            try:
                _link_claim(mine, lock)
            except FileExistsError:
                try:
                    pid = int(lock.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pid = None
                if pid is not None and pid != os.getpid() and _pid_alive(pid):
                    raise ConfigError(f"{run_dir}: another steelseg train (process {pid}) is training in this "
                                      "run folder; wait for it to end, or give this run another --name") from None
                lock.unlink(missing_ok=True)  # a claim left by a run that died
                continue
            return lock
    finally:
        mine.unlink(missing_ok=True)
    raise ConfigError(f"{run_dir}: could not claim the run folder ({lock} keeps reappearing); give another --name")


def _model_meta(cfg: RunConfig, ds: DefectDataset, split_how: str) -> ModelMeta:
    sizes = sorted({(int(h), int(w)) for h, w in zip(ds.table["height"], ds.table["width"])})
    m = cfg.model
    spec = ModelSpec(task=m.task, arch=m.arch, encoder=m.encoder, outputs=len(output_names(cfg, ds.class_names)),
                     binary=m.binary, in_channels=cfg.data.channels, per_class=m.per_class, kwargs=dict(m.kwargs),
                     encoder_weights_at_init=m.encoder_weights)
    inp = InputMeta(channels=cfg.data.channels, mean=list(cfg.data.mean), std=list(cfg.data.std), scale=1 / 255,
                    image_size=list(sizes[0]) if len(sizes) == 1 else None, train_crop=cfg.data.crop)
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


def _open_run(cfg: RunConfig, resume: str | Path | None) -> tuple[Path, Path]:
    """(run folder, resume checkpoint): a new folder, or the resumed one after checking its checkpoint."""
    run_dir = Path(resume) if resume else _new_run_dir(cfg)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if resume and not ckpt.is_file():
        raise DataError(f"{ckpt}: nothing to resume from (the run saved no checkpoint yet)")
    if resume:
        _check_resume_state(ckpt)
    if not cfg.data.path:
        raise ConfigError("data.path is empty: give the dataset with --data PATH or --set data.path=PATH")
    return run_dir, ckpt


def _monitor(cfg: RunConfig) -> tuple[str, str]:
    """The validation metric that picks the best model and whether higher is better."""
    monitor = cfg.train.monitor or ("val/dice" if cfg.model.task == "segment" else "val/auc")
    first = monitor.split(",")[0].strip()  # "val/ap,val/dice": the first decides, the next break ties
    return monitor, "min" if first.endswith("loss") else "max"


def _callbacks(cfg: RunConfig, run_dir: Path, meta: ModelMeta, progress: bool, extra: list[Callback]) -> list[Any]:
    """The recorder first (``fit`` reads its best score), the resume checkpoint, then the optional ones."""
    from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar

    t = cfg.train
    monitor, mode = _monitor(cfg)
    callbacks: list[Any] = [
        RunRecorder(run_dir, meta, monitor, mode, keep_top=t.average_best),
        ResumeCheckpoint(run_dir / "checkpoints" / "last.ckpt", t.checkpoint_every),
    ]
    callbacks += extra
    if progress:
        callbacks.append(TQDMProgressBar())
    if t.ema:
        callbacks.append(EmaWeights(decay=t.ema))
    if t.early_stopping:
        callbacks.append(EarlyStopping(monitor=monitor.split(",")[0].strip(), mode=mode, patience=t.early_stopping))
    return callbacks


def _precision(cfg: RunConfig) -> str:
    return ("16-mixed" if torch.cuda.is_available() else "32-true") if cfg.train.precision == "auto" \
        else cfg.train.precision


def _trainer(cfg: RunConfig, run_dir: Path, callbacks: list[Any], loggers: list[Any], progress: bool,
             train_batches: int) -> L.Trainer:
    t = cfg.train
    devices: Any = t.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return L.Trainer(
        default_root_dir=str(run_dir), max_epochs=t.epochs, accelerator=t.accelerator, devices=devices,
        strategy=t.strategy, num_nodes=t.num_nodes, precision=_precision(cfg), accumulate_grad_batches=t.accumulate,
        limit_train_batches=t.limit_train_batches, check_val_every_n_epoch=t.val_every,
        max_time=None if t.max_minutes is None else {"minutes": t.max_minutes}, limit_val_batches=t.limit_val_batches,
        callbacks=callbacks, logger=loggers or False, enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
        enable_checkpointing=False,  # ResumeCheckpoint writes checkpoints/last.ckpt; no second, hidden copy
        log_every_n_steps=max(1, min(10, _batches(train_batches, t.limit_train_batches))),
    )


def _warn_emulated_bf16(trainer: L.Trainer, precision: str) -> None:
    from lightning.pytorch.accelerators import CPUAccelerator

    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)  # the one Lightning chose, not a guess beside it
    if precision.startswith("bf16") and on_cpu and cpu_has_bf16() is False:
        print(f"warning: train.precision {precision} on a CPU without native bf16 (no avx512_bf16 / amx_bf16 "
              "in /proc/cpuinfo): bf16 is emulated there and slower; --set train.precision=32-true",
              file=sys.stderr)


def _fit(cfg: RunConfig, resume: str | Path | None, progress: bool | None, extra: list[Callback]) -> RunResult:
    run_dir, ckpt = _open_run(cfg, resume)
    is_worker = bool(os.environ.get(RUN_DIR_ENV)) and os.environ.get("LOCAL_RANK", "0") != "0"
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    data = open_training_data(cfg)  # bad data fails before a run folder exists
    ds = data.combined
    if not cfg.train.allow_no_defects and len(ds.table) and not ds.presence().any():
        raise DataError(f"{cfg.data.path}: none of its {len(ds.table)} images holds a defect (every mask is "
                        "empty): a model trained on it learns to predict nothing. Check the labels (--layout, "
                        "--class-names, the masks' pixel values), or --set train.allow_no_defects=true to "
                        "train anyway")
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP workers re-run this command and read it
    claim = claim_run_dir(run_dir)
    try:
        if claim is not None and not resume:
            _check_new(run_dir)  # again, now that it is ours: a twin may have trained here and ended
        return _train(cfg, run_dir, ckpt, resume, data, is_worker, progress, extra)
    finally:
        if claim is not None:
            claim.unlink(missing_ok=True)


def _train(cfg: RunConfig, run_dir: Path, ckpt: Path, resume: str | Path | None, data: TrainingData,
           is_worker: bool, progress: bool | None, extra: list[Callback]) -> RunResult:
    (run_dir / "model").mkdir(parents=True, exist_ok=True)
    ds = data.combined
    train_ids, val_ids, how = resolve_split(cfg, data.main, None if is_worker else run_dir)
    train_ids, val_ids, how, extras = add_extra(cfg, data, train_ids, val_ids, how)
    if not train_ids or not val_ids:
        raise DataError(f"{cfg.data.path}: empty training or validation set ({how})")
    meta = _model_meta(cfg, ds, how)
    if extras:
        meta.trained_on["extra"] = extras
    if not is_worker and not resume:
        cfg.save(run_dir / "config.yaml")
        split: dict[str, Any] = {"how": how, "train": train_ids, "val": val_ids}
        groups = split_groups(data.main, cfg.data.group_by, [i for i in train_ids if i in data.main_ids],
                              [i for i in val_ids if i in data.main_ids])
        if groups is not None:
            split["groups"] = groups
        if extras:
            split["extra"] = extras
        atomic_json(run_dir / "split.json", split)
    train_loader, val_loader = make_loaders(cfg, ds.subset(train_ids), ds.subset(val_ids))
    module = SteelsegModule(cfg, ds.class_names)
    progress = sys.stderr.isatty() if progress is None else progress
    callbacks = _callbacks(cfg, run_dir, meta, progress, extra)
    with _library_log(run_dir, cfg.track.mlflow):
        loggers = make_loggers(cfg, run_dir, bool(resume))
        if logs.active():
            logs.install()  # again: MLflow installs console handlers of its own when it is first imported
        trainer = _trainer(cfg, run_dir, callbacks, loggers, progress, len(train_loader))
        meta.trained_on["device"] = device_name(trainer)  # the last machine to train it, when resumed elsewhere
        _run_trainer(cfg, run_dir, trainer, module, train_loader, val_loader, ckpt, resume, loggers)
    recorder: RunRecorder = callbacks[0]
    if cfg.train.average_best >= 2:
        from steelseg.training.averaging import average_best

        average_best(trainer, module, recorder, val_loader, cfg.train.average_best)
    if trainer.is_global_zero:
        log_artifacts(loggers, run_dir)
    return RunResult(run_dir, recorder.best, recorder.best_epoch, recorder.monitor)


@contextlib.contextmanager
def _library_log(run_dir: Path, mlflow: bool) -> Iterator[None]:
    """The libraries' chatter (Lightning, MLflow) into RUN/log.txt, unless ``steelseg -v``."""
    if not logs.active():
        yield
        return
    if mlflow:  # MLflow installs console handlers of its own when it is first imported: import it first
        import mlflow as _  # noqa: F401
    logs.install()
    with logs.log_to(run_dir / "log.txt"):
        yield


def _run_trainer(cfg: RunConfig, run_dir: Path, trainer: L.Trainer, module: SteelsegModule, train_loader: Any,
                 val_loader: Any, ckpt: Path, resume: str | Path | None, loggers: list[Any]) -> None:
    _warn_emulated_bf16(trainer, _precision(cfg))
    if loggers and trainer.is_global_zero:
        record_run(loggers, cfg, run_dir)
    # weights_only=True always: a tampered last.ckpt cannot run code, whatever the environment says.
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt) if resume else None, weights_only=True)
    except SIGTERMException:  # Lightning's is a SystemExit without a code: a scheduler would read success
        raise TrainingStopped(f"training stopped by SIGTERM at epoch {trainer.current_epoch + 1}, step "
                              f"{trainer.global_step}; {run_dir} keeps its last checkpoint (saved every "
                              f"{cfg.train.checkpoint_every} steps and at each epoch end): resume with "
                              f"`steelseg train --resume {run_dir}`") from None


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
