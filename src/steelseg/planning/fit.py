"""``steelseg fit``: one command from a labelled folder to a tuned, honestly scored bundle.

plan (fingerprint, machine probe, rules) -> train the folds (grouped when the data has groups, stratified
otherwise; the dataset's own train / val lists when it has them) -> evaluate each fold on its validation
images -> tune out of fold (each fold scored with the setting tuned on the others; one model: its
validation images in two halves) -> choose the fold ensemble or the best single model -> bundle -> the run
reports and a one-page summary (score beside all-empty, image AP, missed and false-alarm images, the plan
and why).

Everything lives in OUT; killed at any point, the same command continues: the plan is read back (never made
anew, so the budget in steps stays what it was), finished folds are kept, a fold that was training resumes
from its checkpoint, and the cheap last stages run again.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steelseg import logs
from steelseg.errors import ConfigError, DataError
from steelseg.fsutil import atomic_json, check_writable_dir
from steelseg.planning.plan import Plan, make_plan, read_plan, write_plan

__all__ = ["FitOptions", "fit_folder"]

MARKER = ".steelseg-fit"


@dataclass
class FitOptions:
    minutes: float | None = None
    steps: int | None = None
    folds: int | None = None
    pins: dict[str, Any] = field(default_factory=dict)  # --set
    class_names: list[str] | None = None
    layout: str | None = None
    layout_options: dict[str, Any] = field(default_factory=dict)  # --line-width, --boxes
    ensemble: str = "auto"  # auto | yes | no
    min_speed: float | None = None  # images/s the pipeline must reach (auto: the ensemble only if it does)
    probe: bool = True
    seed: int = 42
    engine: str = "local"  # local: the folds one after another here; ray: as Ray tasks (embedded or --address)
    address: str | None = None  # ray: auto or HOST:PORT of a running cluster
    workers: int | None = None  # ray: folds trained at once (default: one per GPU, else half the CPUs)


def _claim(out: Path) -> bool:
    """Create or take back OUT; True when a fit was already under way there."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file; give a folder for the fit")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise DataError(f"{out}: exists and holds files a fit did not make; give a new folder (a fit in progress "
                        f"there would hold {MARKER})")
    resumed = (out / MARKER).is_file()
    check_writable_dir(out)
    (out / MARKER).write_text("made by steelseg fit; run the same command again to continue\n")
    return resumed


def _plan(out: Path, ds: Any, o: FitOptions, resumed: bool) -> Plan:
    path = out / "plan.yaml"
    if resumed and path.with_suffix(".json").is_file():
        plan = read_plan(path)
        asked = {"minutes": o.minutes, "steps": o.steps, "folds": o.folds}
        if plan.data != str(Path(ds.root).resolve()):
            raise ConfigError(f"{out}: holds a fit of {plan.data}, not {ds.root}; give another --out")
        print(f"fit: continuing in {out} with its plan ({plan.folds} fold(s), {plan.steps} steps a model; "
              f"asked now: {', '.join(f'{k} {v}' for k, v in asked.items() if v is not None)})", file=sys.stderr)
        return plan
    print("fit: planning (dataset fingerprint, machine probe, rules) ...", file=sys.stderr, flush=True)
    plan = make_plan(ds, o.minutes, o.steps, o.folds, o.pins, probe=o.probe, progress=sys.stderr.isatty())
    write_plan(plan, path)
    print(f"fit: plan written to {path}", file=sys.stderr)
    return plan


def _folds_csv(out: Path, ds: Any, plan: Plan, seed: int) -> Path | None:
    if plan.folds < 2:
        return None
    path = out / "folds.csv"
    if not path.is_file():
        from steelseg.data.folds import image_groups, make_folds, write_folds

        write_folds(make_folds(ds, plan.folds, seed, image_groups(ds)), path)
    return path


def _train_folds(out: Path, plan: Plan, folds_csv: Path | None, progress: Any,
                 o: FitOptions) -> tuple[list[Path], list[dict[str, Any]]]:
    """The folds' run folders, and what each Ray task said (worker, node, minutes) under --engine ray."""
    from steelseg.planning.fold_runs import DONE, train_fold, train_folds_on_ray

    runs = [out / "runs" / f"fold{k}" for k in range(plan.folds)]
    todo = [k for k, run in enumerate(runs) if not (run / DONE).is_file()]
    if o.engine == "ray" and todo:
        from steelseg.engine.tasks import TaskOptions

        return runs, train_folds_on_ray(out, plan, folds_csv, todo, TaskOptions(o.address, o.workers))
    for k in range(plan.folds):
        if k in todo:
            progress.start_fold(k)
            train_fold(out, plan, k, folds_csv, [progress])
        progress.fold_done(k)
    return runs, []


def _evaluate(runs: list[Path], data: str, names: list[str]) -> list[dict[str, Any]]:
    from steelseg.inference.evaluation import evaluate

    out = []
    for run in runs:
        metrics = run / "eval-val" / "metrics.json"
        if not metrics.is_file():
            print(f"fit: evaluating {run.name} on its validation images ...", file=sys.stderr, flush=True)
            evaluate([run], data, run / "eval-val", "val")
        out.append(json.loads(metrics.read_text()))
    return out


def fit_folder(data: str | Path, out: str | Path, o: FitOptions) -> dict[str, Any]:
    """Plan, train, evaluate, tune out of fold, choose and bundle; returns the summary's numbers."""
    from steelseg.data.open import open_dataset

    out = Path(out).resolve()
    ds = open_dataset(data, o.class_names, layout=o.layout, options=o.layout_options)
    t0 = time.time()
    resumed = _claim(out)
    with logs.log_to(out / "log.txt"):  # the libraries' chatter outside the folds' own run folders
        return _fit(out, ds, o, resumed, t0)


def _fit(out: Path, ds: Any, o: FitOptions, resumed: bool, t0: float) -> dict[str, Any]:
    from steelseg.planning.progress import FitProgress
    from steelseg.planning.summary import finish

    plan = _plan(out, ds, o, resumed)
    folds_csv = _folds_csv(out, ds, plan, o.seed)
    progress = FitProgress(plan.folds, int(plan.get("train.epochs", 1)) * _steps_per_epoch(plan, ds))
    runs, tasks = _train_folds(out, plan, folds_csv, progress, o)
    evals = _evaluate(runs, plan.data, plan.class_names)
    result = finish(out, plan, runs, evals, o, time.time() - t0)
    result["engine"] = {"name": o.engine, "address": o.address, "tasks": tasks}
    atomic_json(out / "fit.json", result)
    return result


def _steps_per_epoch(plan: Plan, ds: Any) -> int:
    k = plan.folds
    if k == 1:
        n = len(ds.splits["train"]) if "train" in ds.splits else int(len(ds.table) * 0.8)
    else:
        n = int(len(ds.table) * (k - 1) / k)
    return max(1, n // int(plan.get("data.batch_size", 8)))
