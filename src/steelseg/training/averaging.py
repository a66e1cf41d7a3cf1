"""``train.average_best: N``: after training, the weights of the N best validated epochs (kept by the run
recorder in ``model/top/``) are averaged tensor by tensor (12th place of Severstal: +0.3-0.5 points) and
the average is validated like any epoch. It replaces ``best.safetensors`` only when it scores at least as
well as the best single epoch on the run's monitor (tie-breaks included); model.json's ``best.average_of``
records the epochs, both scores and which weights were kept."""

from __future__ import annotations

import sys
from typing import Any

import lightning as L

from steelseg.metrics import monitor_key
from steelseg.models.checkpoint import average_weights, save_weights, write_model_json
from steelseg.training.callbacks import RunRecorder

__all__ = ["average_best"]


def _validate(trainer: L.Trainer, module: L.LightningModule, val_loader: Any) -> dict[str, float]:
    """One validation pass on one device, outside the fit (no weight-average callback swapping weights)."""
    dev = trainer.strategy.root_device
    check = L.Trainer(accelerator="gpu" if dev.type == "cuda" else "cpu",
                      devices=[dev.index or 0] if dev.type == "cuda" else 1, logger=False, callbacks=[],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      precision=trainer.precision, limit_val_batches=trainer.limit_val_batches)
    out = check.validate(module, val_loader, verbose=False)
    return {k: float(v) for k, v in (out[0] if out else {}).items()}


def average_best(trainer: L.Trainer, module: L.LightningModule, recorder: RunRecorder, val_loader: Any,
                 n: int) -> dict[str, Any] | None:
    """Average the best ``n`` epochs' weights, validate, keep the average when it is no worse; rank 0 only."""
    if not trainer.is_global_zero:
        return None
    files = [f for f in recorder.top_files() if f.exists()]
    epochs = [e for _, e in recorder.top][:len(files)]
    record: dict[str, Any] = {"requested": n, "epochs": epochs, "best_single": recorder.best, "used": False}
    if len(files) < 2:
        record["reason"] = f"only {len(files)} validated epoch(s) to average"
    else:
        state = average_weights(files)
        module.model.load_state_dict(state)
        metrics = _validate(trainer, module, val_loader)
        key = monitor_key(metrics, recorder.monitor)
        record["value"] = metrics.get(recorder.monitor.split(",")[0].strip())
        record["metrics"] = {k: v for k, v in metrics.items() if k.startswith("val/")}
        best_key = getattr(recorder, "_best_key", None)
        if key is not None and (best_key is None or key >= best_key):
            record["used"] = True
            save_weights(module.model, recorder.run_dir / "model" / "best.safetensors")
    model_dir = recorder.run_dir / "model"
    recorder.meta.best = {**(recorder.meta.best or {}), "average_of": record}
    write_model_json(model_dir, recorder.meta)
    kept = "the average" if record["used"] else "the best single epoch"
    print(f"average_best: epochs {epochs} averaged -> {recorder.monitor.split(',')[0]} {record.get('value')} "
          f"(best single epoch {recorder.best}); kept {kept}", file=sys.stderr, flush=True)
    return record
