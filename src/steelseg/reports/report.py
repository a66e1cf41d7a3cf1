"""A report per run: ``steelseg report RUN --out DIR`` writes DIR/index.html (PNG plots beside it).

Sections: the run (config, data, timing), loss and metric curves from metrics.csv, per-class Dice
and IoU of the best epoch, the post-processing search when the run was evaluated (Dice against
threshold and against minimum area per class, from the saved histograms), and the worst
validation images with prediction and truth side by side.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.errors import DataError
from steelseg.fsutil import atomic_json, atomic_text, check_writable_dir
from steelseg.pages import render
from steelseg.reports.figures import pyplot, save_figure  # one way to save a figure, shared with the EDA report

__all__ = ["write_report"]


def _metrics(run: Path) -> list[dict[str, str]]:
    from steelseg.reports.runs import read_metrics

    path = run / "metrics.csv"
    if not path.is_file():
        raise DataError(f"{path}: missing; a report needs a run that finished at least one epoch")
    return read_metrics(path)


def _curves(rows: list[dict[str, float]], img: Path) -> dict[str, str]:
    plt = pyplot()
    epochs = [int(r["epoch"]) + 1 for r in rows]
    out = {}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("train/loss_epoch", "train loss"), ("val/loss", "validation loss")):
        if any(key in r for r in rows):
            ax.plot(epochs, [r.get(key, np.nan) for r in rows], marker="o", label=label)
    tuned = [e for e, r in zip(epochs, rows) if r.get("train/finetune", 0) > 0]
    if tuned:  # train.finetune_loss: the train loss changes scale there; validation keeps train.loss
        ax.axvspan(tuned[0] - 0.5, epochs[-1] + 0.5, color="tab:gray", alpha=0.15, label="train.finetune_loss")
    ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax.legend(), ax.grid(alpha=0.3)
    out["loss"] = save_figure(img / "loss.png", fig)
    keys = [k for k in ("val/dice", "val/miou", "val/auc", "val/f1") if any(k in r for r in rows)]
    per_class = sorted({k for r in rows for k in r if k.startswith(("val/dice_", "val/iou_", "val/auc_"))})
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        ax.plot(epochs, [r.get(k, np.nan) for r in rows], marker="o", linewidth=2.5, label=k[4:])
    for k in per_class:
        ax.plot(epochs, [r.get(k, np.nan) for r in rows], linestyle="--", alpha=0.7, label=k[4:])
    scales = [r.get("train/input_scale") for r in rows]
    # train.low_res_scale: epochs trained (and validated) wholly at it, not eligible as the best model.
    # The logged value is an epoch mean in float32, so compare with a tolerance; the epoch of the switch
    # validates at the final scale.
    low = [e for e, v in zip(epochs, scales) if v is not None and scales[0] is not None
           and abs(v - scales[0]) < 1e-3 and abs(v - scales[-1]) > 1e-3]
    if low:
        ax.axvspan(epochs[0] - 0.5, low[-1] + 0.5, color="tab:gray", alpha=0.15,
                   label=f"train.low_res_scale ({scales[0]:g}; not eligible as best)")
    ax.set_xlabel("epoch"), ax.set_ylabel("validation score"), ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    out["scores"] = save_figure(img / "scores.png", fig)
    return out


def _search(eval_dir: Path, names: list[str], img: Path) -> tuple[str | None, list[dict[str, Any]]]:
    """Dice against threshold (no minimum area) and against minimum area (best threshold) per class."""
    from steelseg.inference.evaluation import load_predictions
    from steelseg.inference.tune import THRESHOLDS, dice_grid

    plt = pyplot()

    pred = load_predictions(eval_dir)
    pixels = int(np.median(pred["image_pixels"]))
    areas = np.unique(np.round(np.array([0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016]) * pixels).astype(int))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    table = []
    for c, name in enumerate(names):
        grid = dice_grid(pred["hist_all"][:, c], pred["hist_true"][:, c], THRESHOLDS, areas).mean(0)  # (T, A)
        t_best, a_best = np.unravel_index(int(np.argmax(grid)), grid.shape)
        axes[0].plot(THRESHOLDS, grid[:, 0], marker=".", label=name)
        axes[1].plot(areas, grid[t_best], marker=".", label=f"{name} (threshold {THRESHOLDS[t_best]:.2f})")
        table.append({"class": name, "dice_at_0.5": float(grid[np.argmin(np.abs(THRESHOLDS - 0.5)), 0]),
                      "best_threshold": float(THRESHOLDS[t_best]), "best_min_area": int(areas[a_best]),
                      "best_dice": float(grid[t_best, a_best])})
    axes[0].set_xlabel("pixel threshold"), axes[0].set_ylabel("Kaggle Dice (no minimum area)")
    axes[1].set_xlabel("minimum area (pixels)"), axes[1].set_ylabel("Kaggle Dice at the best threshold")
    for ax in axes:
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
    return save_figure(img / "search.png", fig), table


def _worst(run: Path, eval_dir: Path, img: Path, count: int) -> list[tuple[str, str, float]]:
    """The ``count`` validation images with the lowest mean Dice: prediction above truth."""

    from steelseg import viz
    from steelseg.data.open import open_dataset
    from steelseg.inference.predictor import Predictor

    meta = json.loads((eval_dir / "metrics.json").read_text())
    with open(eval_dir / "per_image.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: float(r["dice_mean"]))[:count]
    predictor = Predictor.from_models([run])
    ds = open_dataset(meta["data"], predictor.class_names)
    out = []
    for i, r in enumerate(rows):
        image_id = r["image_id"]
        image = ds.load_image(image_id, None)  # as stored: the overlay shows what the camera saw
        pred = predictor.predict([image])[0]
        truth = ds.load_mask(image_id)
        pic = viz.side_by_side(viz.caption(viz.overlay(image, pred.masks), f"{image_id}: prediction"),
                               viz.caption(viz.overlay(image, truth), f"truth (Dice {float(r['dice_mean']):.3f})"))
        name = f"worst_{i}.png"
        viz.write_rgb(img / name, pic)
        out.append((name, image_id, float(r["dice_mean"])))
    return out


def write_report(run: str | Path, out: str | Path, worst: int = 6) -> dict[str, Any]:
    """Write the run's report; returns the numbers shown (also saved as DIR/report.json)."""
    from steelseg.reports.runs import read_model_meta, read_run_config, run_row

    run = Path(run)
    cfg = read_run_config(run)  # refuses a folder that is not a run, before anything is written
    raw, meta = _metrics(run), read_model_meta(run)
    summary = run_row(run, cfg, raw, meta)
    rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in raw]
    out = check_writable_dir(out)
    img = check_writable_dir(out / "img")
    figs = _curves(rows, img)
    names = list(meta.get("class_names", []))
    eval_dir = next((d for d in (run / "eval-val", run / "eval-all") if (d / "predictions.npz").is_file()), None)
    search, search_rows, worst_pics = None, [], []
    if eval_dir is not None and summary["task"] == "segment":
        search, search_rows = _search(eval_dir, names, img)
        worst_pics = _worst(run, eval_dir, img, worst)
    # the epoch the run kept (its train.monitor), as `steelseg runs` shows it
    best = next((r for r in rows if summary["best_epoch"] is not None and int(r["epoch"]) + 1 == summary["best_epoch"]),
                rows[-1])
    per_class = [(n, best.get(f"val/dice_{n}"), best.get(f"val/iou_{n}")) for n in names]
    detection = _detection(eval_dir)
    report = {"run": str(run), "summary": summary, "best_epoch_metrics": best, "per_class": per_class,
              "search": search_rows, "worst": [{"image": i, "dice": d} for _, i, d in worst_pics],
              "detection": detection}
    atomic_json(out / "report.json", report)
    det_rows = [*detection["per_class"].items(), ("any defect", detection["any"])] if detection else []
    head = [(k, v) for k, v in summary.items() if not k.startswith(("dice_", "iou_"))]
    atomic_text(out / "index.html", render("run.html", name=run.name, run=str(run), head=head, figs=figs,
                                           per_class=per_class, detection=detection, detection_rows=det_rows,
                                           search=search, search_rows=search_rows, eval_dir=str(eval_dir),
                                           worst=[(n, str(i), d) for n, i, d in worst_pics]))
    return report


def _detection(eval_dir: Path | None) -> dict[str, Any] | None:
    """The image-level detection that ``steelseg evaluate`` saved in its metrics.json, if any."""
    path = None if eval_dir is None else eval_dir / "metrics.json"
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text()).get("detection")
