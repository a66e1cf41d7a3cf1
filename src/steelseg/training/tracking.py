"""Experiment tracking of a run: MLflow (a local sqlite store by default, or a server) and Weights &
Biases (offline by default), through Lightning's loggers; the tracker run ids are kept in the run
folder so a resumed run logs into the same record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steelseg.errors import ConfigError
from steelseg.fsutil import atomic_json
from steelseg.training.config import RunConfig

__all__ = ["default_tracking_uri", "log_artifacts", "make_loggers", "record_run"]


def make_loggers(cfg: RunConfig, run_dir: Path, resume: bool) -> list[Any]:
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


def record_run(loggers: list[Any], cfg: RunConfig, run_dir: Path) -> None:
    """Log the flattened config to every tracker and keep their run ids in ``run_dir/tracking.json``."""
    ids = {}
    for lg in loggers:
        lg.log_hyperparams(cfg.flat())
        if type(lg).__name__ == "MLFlowLogger":
            ids["mlflow_run_id"] = lg.run_id
        elif type(lg).__name__ == "WandbLogger":
            ids["wandb_run_id"] = lg.version
    atomic_json(run_dir / "tracking.json", ids)


def log_artifacts(loggers: list[Any], run_dir: Path) -> None:
    """The model folder and metrics.csv into the MLflow run, once training ended."""
    for lg in loggers:
        if type(lg).__name__ == "MLFlowLogger":
            lg.experiment.log_artifacts(lg.run_id, str(run_dir / "model"), "model")
            if (run_dir / "metrics.csv").is_file():
                lg.experiment.log_artifact(lg.run_id, str(run_dir / "metrics.csv"))
