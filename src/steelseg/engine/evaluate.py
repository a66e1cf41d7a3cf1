"""``steelseg evaluate --engine ray``: a labelled split predicted in parts by Ray tasks (each loads the models
once and predicts its part), the parts merged in order into the same metrics.json, per_image.csv and
predictions.npz as one process writes; cv-tune and tune read them as they are. The data must be on a file system
every node sees."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from steelseg.engine.tasks import TaskOptions, run_tasks

__all__ = ["evaluate_on_ray", "eval_part_task"]

PARTS_PER_WORKER = 4  # small parts: a slow or restarted worker holds up less


def _predictor(spec: dict[str, Any], threads: int) -> Any:
    from steelseg.inference.predictor import Predictor

    if spec.get("bundle"):
        return Predictor.from_bundle(spec["bundle"], device=spec["device"], tta=spec["tta"] or None,
                                     backend=spec.get("backend"), threads=threads)
    import torch

    torch.set_num_threads(threads)
    return Predictor.from_models(spec["runs"], spec["classifiers"], None, spec["tta"], spec["device"])


def eval_part_task(spec: dict[str, Any], data: str, ids: list[str], save_probs: bool, *, threads: int) -> Any:
    """The Ray task: one part of the split predicted (an :class:`~steelseg.inference.evaluation.EvalPart`)."""
    from steelseg.data.open import open_dataset
    from steelseg.inference.evaluation import predict_part

    predictor = _predictor(spec, threads)
    ds = open_dataset(data, predictor.class_names)
    return predict_part(predictor, ds.subset(ids), ids, save_probs)


def evaluate_on_ray(spec: dict[str, Any], data: str | Path, out: str | Path, split: str, opts: TaskOptions,
                    save_probs: bool = True, named: tuple[list[str], list[str]] | None = None) -> dict[str, Any]:
    """:func:`steelseg.inference.evaluation.evaluate` with the split's parts predicted by Ray tasks. ``spec``: what a
    task needs to load the same predictor (``runs``, ``classifiers``, ``tta``, ``device``; or ``bundle`` and
    ``backend``), with absolute paths; ``named``: the runs and classifiers as the user gave them, which metrics.json
    records (``tune`` reuses saved predictions only when they name the same models and data)."""
    from steelseg.inference.evaluation import evaluate

    where = str(Path(data).resolve())  # the workers' working folders are not the driver's

    def say(line: str) -> None:
        print(f"evaluate: {line}", file=sys.stderr, flush=True)

    def runner(parts: list[list[str]]) -> list[Any]:
        got: dict[int, Any] = {}
        for k, _, part in run_tasks(eval_part_task, [(spec, where, ids, save_probs) for ids in parts], opts, say):
            got[k] = part
            say(f"{len(got)}/{len(parts)} part(s) predicted")
        return [got[k] for k in range(len(parts))]

    predictor = _predictor(spec, 1)  # here only for the class names, TTA and post-processing the metrics name
    runs, classifiers = named or (spec.get("runs", []), spec.get("classifiers", []))
    workers = opts.workers or 2
    return evaluate(runs, data, out, split, classifiers, spec["tta"], None, predictor, save_probs,
                    parts=(workers * PARTS_PER_WORKER, runner))
