"""The last stages of ``steelseg fit``: out-of-fold tuning, the choice between the fold ensemble and the
best single model, the bundle, the run reports and the one-page summary (``summary.md``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.fsutil import atomic_text
from steelseg.planning.plan import Plan

__all__ = ["finish", "oof_per_class"]

SPEED_IMAGES = 8  # validation images timed for the speed of each candidate pipeline


def _cross(runs: list[Path], folds: int) -> tuple[Any, list[dict[str, np.ndarray]]]:
    from steelseg.inference.crosstune import cross_tune, split_by_group
    from steelseg.inference.evaluation import load_predictions

    preds = [load_predictions(r / "eval-val") for r in runs]
    if folds == 1:  # one model: its validation images in two halves, each tuned on the other
        preds = split_by_group(preds[0], 2)
        names = [f"{runs[0].name} half {i + 1}" for i in range(2)]
    else:
        names = [r.name for r in runs]
    return cross_tune(preds, names), preds


def oof_per_class(cv: Any, preds: list[dict[str, np.ndarray]], names: list[str]) -> list[dict[str, Any]]:
    """Per class, out of fold: Dice under the setting tuned on the other folds, the all-empty Dice, and the
    defective images missed and defect-free images flagged, summed over the folds; off: folds that switched
    the class off."""
    from steelseg.inference.tune import OFF, detected_from_histograms

    rows = []
    weights = np.array([f.images for f in cv.folds], float)
    for c, name in enumerate(names):
        missed = flagged = defective = free = off = 0
        for f, p in zip(cv.folds, preds):
            true = p["hist_true"][:, c].sum(axis=1) > 0
            found = detected_from_histograms(p["hist_all"], f.chosen, p.get("gate"))[:, c]
            missed += int((true & ~found).sum())
            flagged += int((~true & found).sum())
            defective += int(true.sum())
            free += int((~true).sum())
            off += int(f.chosen.pixel_threshold[c] >= OFF)
        rows.append({"class": name, "oof_dice": float(np.average([f.oof[c] for f in cv.folds], weights=weights)),
                     "all_empty": float(np.average([f.all_empty[c] for f in cv.folds], weights=weights)),
                     "missed": missed, "defective": defective, "false_alarms": flagged, "defect_free": free,
                     "off_in_folds": off})
    return rows


def switch_off(pp: Any, classes: list[int]) -> Any:
    """``pp`` with ``classes`` predicting nothing (threshold :data:`steelseg.inference.tune.OFF`)."""
    from dataclasses import replace

    from steelseg.inference.tune import OFF

    t, a = list(pp.pixel_threshold), list(pp.min_area)
    for c in classes:
        t[c], a[c] = OFF, 0
    return replace(pp, pixel_threshold=t, min_area=a)


def _speed_paths(run: Path, data: str, names: list[str]) -> list[str]:
    """A few of ``run``'s validation images, the images both candidate pipelines are timed on."""
    import json

    ids = json.loads((run / "split.json").read_text())["val"][:SPEED_IMAGES]
    return _paths(data, names, ids)


def _paths(data: str, names: list[str], ids: list[str]) -> list[str]:
    from steelseg.data.open import open_dataset

    return open_dataset(data, names).subset(ids).table["path"].tolist()


def _speed(runs: list[Path], paths: list[str]) -> float:
    """Images per second of the pipeline of ``runs`` on ``paths``."""
    from steelseg.inference.predictor import Predictor

    predictor = Predictor.from_models(runs)
    list(predictor.predict_paths(paths[:1]))  # warm-up
    t0 = time.perf_counter()
    n = sum(1 for _ in predictor.predict_paths(paths))
    return n / max(time.perf_counter() - t0, 1e-9)


def _choose(runs: list[Path], cv: Any, evals: list[dict[str, Any]], plan: Plan, o: Any) -> dict[str, Any]:
    """The fold ensemble or the best single model (by out-of-fold tuned Dice, ties by image AP)."""
    if len(runs) == 1:
        return {"pipeline": "single", "runs": [0], "why": "one model was trained", "speed": {}}
    ap = [((e.get("detection") or {}).get("any") or {}).get("ap") or 0.0 for e in evals]
    best = max(range(len(runs)), key=lambda k: (round(float(np.mean(cv.folds[k].oof)), 6), ap[k]))
    paths = _speed_paths(runs[0], plan.data, plan.class_names)  # the dataset opened once for both timings
    speed = {"single": _speed([runs[best]], paths), "ensemble": _speed(runs, paths)}
    ens = (f"the fold ensemble ({len(runs)} models, {speed['ensemble']:.1f} images/s; it cannot be scored out of "
           "fold, as each image trained all but one of its models: ensembles average their members' errors)")
    single = (f"fold {best}'s model alone ({speed['single']:.1f} images/s; out of fold "
              f"{np.mean(cv.folds[best].oof):.4f}, the best of the folds)")
    if o.ensemble == "no" or (o.ensemble == "auto" and o.min_speed and speed["ensemble"] < o.min_speed):
        why = f"{single}, not {ens}" + (f": the ensemble is below --min-speed {o.min_speed:g}"
                                        if o.ensemble == "auto" else ": --ensemble no")
        return {"pipeline": "single", "runs": [best], "why": why, "speed": speed}
    why = f"{ens}, not {single}" + (f", at --min-speed {o.min_speed:g}" if o.min_speed else "")
    return {"pipeline": "ensemble", "runs": list(range(len(runs))), "why": why, "speed": speed}


def finish(out: Path, plan: Plan, runs: list[Path], evals: list[dict[str, Any]], o: Any,
           seconds: float) -> dict[str, Any]:
    from steelseg.inference.bundle import write_bundle
    from steelseg.inference.tune import OFF
    from steelseg.reports.report import write_report

    names = plan.class_names
    cv, preds = _cross(runs, plan.folds)
    per_class = oof_per_class(cv, preds, names)
    # a class whose tuned setting scores below predicting nothing out of fold is switched off in the bundle
    off_c = [c for c, row in enumerate(per_class) if row["all_empty"] > row["oof_dice"] + 1e-9
             or cv.pooled.pixel_threshold[c] >= OFF]
    pooled = switch_off(cv.pooled, off_c)  # tuned on every fold pooled: the setting the bundle ships
    off = [names[c] for c in off_c]
    final = float(np.mean([row["all_empty"] if c in off_c else row["oof_dice"] for c, row in enumerate(per_class)]))
    choice = _choose(runs, cv, evals, plan, o)
    s = cv.summary()
    trained = [_trained(r) for r in runs]
    result: dict[str, Any] = {
        "data": plan.data, "out": str(out), "folds": plan.folds, "steps_per_model": plan.steps,
        "epochs": plan.get("train.epochs"), "steps_trained": [t[0] for t in trained],
        "training_minutes": round(sum(t[1] for t in trained) / 60, 1), "minutes": round(seconds / 60, 1),
        "oof_dice": s["oof_dice"], "oof_dice_final": final, "own_dice": s["own_dice"], "all_empty_dice": s["all_empty_dice"],
        "untuned_dice": [e["dice"] for e in evals], "miou": [e["miou"] for e in evals],
        "image_ap": [((e.get("detection") or {}).get("any") or {}).get("ap") for e in evals],
        "missed": s["missed"], "defective": s["defective"], "false_alarms": s["false_alarms"],
        "defect_free": s["defect_free"], "per_class": per_class, "off": off, "choice": choice,
        "postprocess": pooled.__dict__,
    }
    chosen = [runs[k] for k in choice["runs"]]
    write_bundle(out / "bundle", chosen, pp=pooled, class_names=names, overwrite=True,
                 extra={"tuned_on": {"data": plan.data, "how": "steelseg fit: out of fold", "fit": result}})
    _reference(out / "bundle", chosen, plan)
    for run in runs:
        write_report(run, run / "report")
    atomic_text(out / "summary.md", render_summary(plan, result))
    print(render_summary(plan, result), flush=True)
    print(f"fit: bundle {out / 'bundle'}; summary {out / 'summary.md'}; reports {out / 'runs'}/*/report",
          file=sys.stderr)
    return result


def _reference(bundle: Path, chosen: list[Path], plan: Any) -> None:
    """The drift reference from the validation images of the first chosen model (an ensemble's other members
    trained on some of them: said in reference.json)."""
    import json

    from steelseg.inference.reference import write_reference

    val = json.loads((chosen[0] / "split.json").read_text())["val"]
    how = f"steelseg fit: validation images of {chosen[0].name}" + (
        f" (the ensemble's other {len(chosen) - 1} member(s) trained on them)" if len(chosen) > 1 else "")
    print(f"fit: the drift reference: {len(val)} validation images through the bundle ...", file=sys.stderr,
          flush=True)
    write_reference(bundle, _paths(plan.data, plan.class_names, val), how)


def _trained(run: Path) -> tuple[int, float]:
    """(optimiser steps, seconds of training) of a run, from its metrics.csv (resumed runs included)."""
    import csv

    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    steps = int(float(rows[-1]["step"])) if rows else 0
    return steps, sum(float(r.get("seconds") or 0) for r in rows)


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def render_summary(plan: Plan, r: dict[str, Any]) -> str:
    """The one-page summary, Markdown."""
    oof, empty = r["oof_dice"], r["all_empty_dice"]
    gain = r["oof_dice_final"] - empty["mean"]
    verdict = ("above" if gain > 0.005 else "NOT above") + f" predicting nothing by {gain:+.4f}"
    how = ("each fold scored with the setting tuned on the other folds" if plan.folds > 1 else
           "the validation images in two halves, each scored with the setting tuned on the other")
    lines = [f"# steelseg fit: {Path(plan.data).name}", "",
             f"**Kaggle Dice out of fold {r['oof_dice_final']:.4f}**, all-empty {empty['mean']:.4f}: {verdict} ({how}"
             + (f"; {oof['mean']:.4f} ± {oof['std']:.4f} before the classes below were switched off" if r["off"] else
                f"; ± {oof['std']:.4f} over the folds") + ").", "",
             f"- untuned (threshold 0.5) Dice per fold: {', '.join(_f(v) for v in r['untuned_dice'])}; mIoU "
             f"{', '.join(_f(v) for v in r['miou'])}",
             f"- image-level AP (any defect) per fold: {', '.join(_f(v) for v in r['image_ap'])}",
             f"- defective images missed: {r['missed']} of {r['defective']}; defect-free images flagged: "
             f"{r['false_alarms']} of {r['defect_free']} (out of fold)",
             f"- pipeline: {r['choice']['why']}",
             f"- {plan.folds} model(s) of {r['epochs']} epochs: {' / '.join(map(str, r['steps_trained']))} steps "
             f"(asked: {plan.steps}); {r['training_minutes']} min of training, {r['minutes']} min in this last "
             "command", ""]
    if r["off"]:
        lines += [f"**Switched off: {', '.join(r['off'])}.** For {'this class' if len(r['off']) == 1 else 'these classes'}"
                  " predicting nothing scored better out of fold than the tuned threshold and minimum area: the bundle "
                  "predicts nothing for them, and the score above counts them as empty. More labelled examples, or a "
                  "longer budget, may change that.", ""]
    lines += ["| class | Dice out of fold | all-empty | missed | false alarms | switched off in folds |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {c['class']} | {c['oof_dice']:.4f} | {c['all_empty']:.4f} | {c['missed']} / {c['defective']} | "
              f"{c['false_alarms']} / {c['defect_free']} | {c['off_in_folds']} of {len(r['untuned_dice']) if plan.folds > 1 else 2} |"
              for c in r["per_class"]]
    lines += ["", "## The plan and why", "", "| setting | value | because |", "|---|---|---|"]
    last = {d.key: d for d in plan.decisions}
    lines += [f"| `{k}` | `{d.value}` | {d.why} |" for k, d in last.items()]
    if plan.candidates:
        lines += ["", "Measured step times (this machine):", "", "| scale | model input | precision | s / step |",
                  "|---|---|---|---|"]
        lines += [f"| {c['scale']}{' (chosen)' if c['chosen'] else ''} | {c['model_input'][0]}x{c['model_input'][1]} "
                  f"| {c['precision']} | {c['seconds_per_step']:.3f} |" for c in plan.candidates]
    return "\n".join(lines) + "\n"
