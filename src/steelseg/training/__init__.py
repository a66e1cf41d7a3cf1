"""The training wing: the run config, the LightningModule, callbacks (run recorder, resume, EMA),
loaders, tracking and ``fit``. The only wing that imports Lightning and MLflow.

    from steelseg.training import fit, load_config
    result = fit(load_config("configs/tiny.yaml", ["data.path=data/synth"]))
"""

from steelseg.lazy import lazy_exports

_EXPORTS = {
    "DataConfig": "steelseg.training.config", "ModelConfig": "steelseg.training.config",
    "RunConfig": "steelseg.training.config", "TrainConfig": "steelseg.training.config",
    "TrackConfig": "steelseg.training.config", "load_config": "steelseg.training.config",
    "RunResult": "steelseg.training.run", "fit": "steelseg.training.run", "fit_from_args": "steelseg.training.run",
    "SteelsegModule": "steelseg.training.module",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
