"""The model registry of a line, in MLflow's model registry (the one module that talks to it): bundles registered
as versions of a line's model, a ``champion`` alias moved only through a promotion gate, and a way back.

- :func:`register`: the bundle folder logged as an MLflow run's artifact, with its tuned scores, and registered
  as a new version of the line's model.
- :func:`promote`: the candidate and the champion scored on the same gate set (labelled images, reviewed
  corrections); the alias moves only when the candidate misses no defective image that the champion finds and
  its Kaggle Dice is not below the champion's by more than ``tolerance``. The decision and both scores are kept
  as tags of the candidate's version; every move of the alias is kept on the registered model
  (``steelseg.champions``), which :func:`rollback` walks back.
- :func:`fetch`: ``models:/LINE@champion`` (or ``models:/LINE/3``) as a local bundle folder, downloaded once into
  steelseg's cache.

The store is the local SQLite one (``./mlruns/mlflow.db``, as training's tracking) unless a URI is given.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.errors import DataError
from steelseg.fsutil import cache_dir

__all__ = ["ALIAS", "default_registry_uri", "fetch", "is_model_uri", "promote", "register", "rollback", "score_gate"]

ALIAS = "champion"
HISTORY = "steelseg.champions"  # registered-model tag: the versions the alias pointed at, oldest first
EXPERIMENT = "steelseg-registry"


def default_registry_uri() -> str:
    return "sqlite:///" + str(Path.cwd() / "mlruns" / "mlflow.db")


def is_model_uri(s: str | Path) -> bool:
    return str(s).startswith("models:/")


def _client(uri: str | None) -> Any:
    import mlflow
    from mlflow.tracking import MlflowClient

    from steelseg import logs

    if logs.active():
        logs.install()  # MLflow's console handlers, added at its import, go quiet (its database INFO lines)
    uri = uri or default_registry_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def register(bundle: str | Path, name: str, uri: str | None = None) -> int:
    """Log ``bundle`` and register it as a new version of ``name``; its version number."""
    import mlflow

    from steelseg.inference.bundle import read_bundle

    bundle = Path(bundle)
    info = read_bundle(bundle)  # a bundle, checked, before anything is written to the registry
    client = _client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    store = (uri or default_registry_uri())
    artifacts = (Path(store[len("sqlite:///"):]).parent / "registry-artifacts").as_uri() \
        if store.startswith("sqlite:///") else None
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT, artifact_location=artifacts)
    tuned = getattr(info, "tuned_on", None) or {}
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{name}: {bundle.name}") as run:
        mlflow.log_artifacts(str(bundle), artifact_path="bundle")
        mlflow.set_tags({"steelseg.bundle": str(bundle.resolve()), "steelseg.classes": ",".join(info.class_names)})
        if isinstance(tuned, dict) and tuned.get("dice_after") is not None:
            mlflow.log_metric("tuned_dice", float(tuned["dice_after"]))
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises its own RestException for a missing model
        client.create_registered_model(name, description="a steelseg line's model (steelseg register)")
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/bundle", run.info.run_id)
    return int(mv.version)


def _champion(client: Any, name: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, ALIAS).version)
    except Exception:  # noqa: BLE001 - no alias yet
        return None


def _history(client: Any, name: str) -> list[int]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY, "[]"))


def fetch(model_uri: str, uri: str | None = None) -> tuple[Path, int]:
    """(local bundle folder, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, downloaded once."""
    import mlflow

    client = _client(uri)
    rest = model_uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except Exception:  # noqa: BLE001
            raise DataError(f"{model_uri}: no version of {name!r} is {alias!r} in {uri or default_registry_uri()} "
                            f"(steelseg promote sets it)") from None
    else:
        name, _, version = rest.partition("/")
        try:
            mv = client.get_model_version(name, version)
        except Exception:  # noqa: BLE001
            raise DataError(f"{model_uri}: no such model version in {uri or default_registry_uri()}") from None
    dst = cache_dir("registry") / str(mv.run_id)  # a run's artifacts never change: its id is the cache key
    if not (dst / "bundle" / "bundle.json").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="bundle", dst_path=str(dst))
    return dst / "bundle", int(mv.version)


def score_gate(bundle: str | Path, gates: Sequence[str | Path]) -> dict[str, Any]:
    """Kaggle Dice over the gate sets and the defective images the bundle misses (no defect reported at all)."""
    from steelseg import metrics
    from steelseg.data.open import open_dataset
    from steelseg.inference.predictor import Predictor

    predictor = Predictor.from_bundle(bundle)
    acc, missed, defective, alarms = metrics.DiceAccumulator(), [], 0, 0
    for gate in gates:
        ds = open_dataset(gate, predictor.class_names)
        for image_id in ds.image_ids:
            true = ds.load_mask(image_id)
            pred = predictor.predict([ds.load_image(image_id, None)])[0].masks
            acc.update(pred[None], true[None])
            defective += bool(true.any())
            if true.any() and not pred.any():
                missed.append(f"{Path(gate).name}/{image_id}")
            alarms += bool(pred.any() and not true.any())
    return {"dice": float(acc.compute().mean), "missed": missed, "defective": defective, "false_alarms": alarms}


def promote(name: str, candidate: int, gates: Sequence[str | Path], tolerance: float = 0.005,
            uri: str | None = None) -> dict[str, Any]:
    """Score the candidate and the champion on ``gates``; move the alias when the candidate passes. The decision."""
    client = _client(uri)
    champ = _champion(client, name)
    cand_path, _ = fetch(f"models:/{name}/{candidate}", uri)
    cand = score_gate(cand_path, gates)
    decision: dict[str, Any] = {"candidate": candidate, "champion": champ, "tolerance": tolerance,
                                "gates": [str(g) for g in gates], "candidate_score": cand,
                                "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if champ is None:
        ok, why = True, "no champion yet: the first version passes the gate unopposed"
    elif champ == candidate:
        raise DataError(f"version {candidate} of {name} is the champion already")
    else:
        best = score_gate(fetch(f"models:/{name}/{champ}", uri)[0], gates)
        decision["champion_score"] = best
        newly = sorted(set(cand["missed"]) - set(best["missed"]))
        ok = not newly and cand["dice"] >= best["dice"] - tolerance
        why = (f"misses {len(newly)} defective image(s) the champion finds ({', '.join(newly[:5])})" if newly else
               f"Kaggle Dice {cand['dice']:.4f} vs the champion's {best['dice']:.4f}"
               + ("" if ok else f", lower by more than {tolerance}"))
    decision.update(promoted=ok, reason=why)
    client.set_model_version_tag(name, str(candidate), "steelseg.promotion", json.dumps(decision, default=_num))
    if ok:
        client.set_registered_model_alias(name, ALIAS, str(candidate))
        client.set_registered_model_tag(name, HISTORY, json.dumps(_history(client, name) + [candidate]))
    return decision


def rollback(name: str, uri: str | None = None) -> tuple[int, int]:
    """Move the alias back to the champion before the current one: (from, to)."""
    client = _client(uri)
    hist = _history(client, name)
    current = _champion(client, name)
    if current is None or len(hist) < 2:
        raise DataError(f"{name}: no earlier champion to go back to (champions so far: {hist or 'none'})")
    hist = hist[:-1]
    client.set_registered_model_alias(name, ALIAS, str(hist[-1]))
    client.set_registered_model_tag(name, HISTORY, json.dumps(hist))
    return current, hist[-1]


def _num(v: Any) -> Any:
    return float(v) if isinstance(v, np.floating) else int(v) if isinstance(v, np.integer) else str(v)
