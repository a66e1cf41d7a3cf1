"""Training one fold of a fit, here or as a Ray task. Either way a fold is a normal run folder,
``OUT/runs/foldK``: trained anew, or resumed from its checkpoint when one is there, and marked done when its
training ended, so a fit killed at any point (driver, worker or node) continues where it was."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from steelseg.errors import DataError
from steelseg.planning.plan import Plan, read_plan

__all__ = ["DONE", "fold_config", "train_fold", "train_fold_task", "train_folds_on_ray"]

DONE = ".steelseg-fit-done"  # in a fold's run folder once its training ended


def fold_config(plan: Plan, out: Path, k: int, folds_csv: Path | None) -> Any:
    from steelseg.training.config import load_config

    sets = [f"name=fold{k}", f"out_dir={out / 'runs'}", f"train.seed={42 + k}"]
    if folds_csv is not None:
        sets += [f"data.folds={folds_csv}", f"data.fold={k}"]
    return load_config(out / "plan.yaml", sets)


def train_fold(out: Path, plan: Plan, k: int, folds_csv: Path | None, callbacks: list[Any],
               where: str = "") -> Path:
    """Train (or resume) fold ``k``; returns its run folder, marked done."""
    from steelseg.training.config import load_config
    from steelseg.training.run import fit

    run = out / "runs" / f"fold{k}"
    if (run / "checkpoints" / "last.ckpt").is_file():
        print(f"fit: fold {k + 1}/{plan.folds}: resuming {run}{where}", file=sys.stderr, flush=True)
        fit(load_config(run / "config.yaml"), resume=run, progress=False, callbacks=callbacks)
    else:
        print(f"fit: fold {k + 1}/{plan.folds}: training {run}{where}", file=sys.stderr, flush=True)
        fit(fold_config(plan, out, k, folds_csv), progress=False, callbacks=callbacks)
    (run / DONE).write_text("trained\n")
    return run


def train_fold_task(out: str, k: int, folds_csv: str | None, cwd: str, *, threads: int) -> dict[str, Any]:
    """The Ray task: one fold trained and evaluated on its validation images (what out-of-fold tuning reads) in a
    worker, with ``threads`` torch threads, in the driver's working folder (the MLflow store is relative to it).
    The data and OUT must be on a file system every node sees."""
    import torch

    t0 = time.time()
    host = socket.gethostname()
    for path in (Path(out), Path(cwd)):
        if not path.is_dir():
            raise DataError(f"{host}: {path} is not there: on a cluster the data, --out and the working folder "
                            "must be on a file system every node shares")
    torch.set_num_threads(threads)
    os.chdir(cwd)
    plan = read_plan(Path(out) / "plan.yaml")
    if not Path(plan.data).exists():
        raise DataError(f"{host}: {plan.data} is not there: on a cluster the data must be on a file system "
                        "every node shares")
    resumed = (Path(out) / "runs" / f"fold{k}" / "checkpoints" / "last.ckpt").is_file()
    run = train_fold(Path(out), plan, k, None if folds_csv is None else Path(folds_csv), [], f" on {host}")
    if not (run / "eval-val" / "metrics.json").is_file():  # its validation predictions, here beside the training
        from steelseg.inference.evaluation import evaluate

        evaluate([run], plan.data, run / "eval-val", "val")
    return {"fold": k, "worker": f"{host}:{os.getpid()}", "threads": threads, "seconds": time.time() - t0,
            "resumed": resumed}


def _last_step(run: Path) -> int:
    """The optimiser step of the fold's last finished epoch (its metrics.csv), 0 before the first."""
    try:
        lines = (run / "metrics.csv").read_text().strip().splitlines()
        return int(lines[-1].split(",")[1]) if len(lines) > 1 else 0
    except (OSError, ValueError, IndexError):
        return 0


def train_folds_on_ray(out: Path, plan: Plan, folds_csv: Path | None, todo: list[int], opts: Any) -> list[dict]:
    """The folds in ``todo`` as Ray tasks (:func:`steelseg.engine.tasks.run_tasks`); what each task returned."""
    from steelseg.engine.tasks import run_tasks

    def say(line: str) -> None:
        print(f"fit: {line}", file=sys.stderr, flush=True)

    args = [(str(out), k, None if folds_csv is None else str(folds_csv), os.getcwd()) for k in todo]
    done = []

    def status() -> str:
        return " · ".join(f"fold {k + 1} step {_last_step(out / 'runs' / f'fold{k}')}/{plan.steps}" for k in todo)

    for i, node, res in run_tasks(train_fold_task, args, opts, say, status):
        res["node"] = node
        say(f"fold {todo[i] + 1}/{plan.folds} {'resumed and ' if res['resumed'] else ''}trained on {res['worker']}"
            f"@{node} in {res['seconds'] / 60:.1f} min ({res['threads']} thread(s)), evaluated on its validation "
            "images")
        done.append(res)
    return done
