"""The table of runs: every run folder under a root, one row each, from the files the run wrote
(config.yaml, metrics.csv, model/model.json), so it works offline and without a tracking server.

``steelseg runs [ROOT] [--sort KEY] [--where KEY=VALUE] [--csv F] [--md F]`` and
``steelseg runs --compare A B`` (configs side by side, only what differs, with their metrics).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from steelseg.errors import DataError
from steelseg.metrics import monitor_key
from steelseg.schema import load_yaml

__all__ = ["COLUMNS", "compare", "find_runs", "read_metrics", "read_run_config", "run_row", "to_markdown"]

COLUMNS = ["name", "data", "task", "arch", "encoder", "weights", "device", "epochs", "steps", "minutes",
           "img_per_s", "best_epoch", "dice", "miou", "auc", "ap"]


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv as written (strings); [] when there is none yet."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_run_config(run: Path) -> dict[str, Any]:
    """A run folder's config.yaml as a dict; refuses a folder that is not a run."""
    path = run / "config.yaml"
    if not path.is_file():
        raise DataError(f"{run}: not a run folder (no config.yaml)")
    return load_yaml(path.read_text(), str(path)) or {}


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def read_model_meta(run: Path) -> dict[str, Any]:
    """A run's model/model.json as a dict; {} when it has none yet (or it cannot be read)."""
    try:
        meta = json.loads((run / "model" / "model.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def trained_device(run: Path, meta: dict[str, Any] | None = None) -> str | None:
    """The machine a run trained on, as its model.json records it (None for runs trained before steelseg
    recorded it). ``meta``: the model.json when the caller has read it already."""
    meta = read_model_meta(run) if meta is None else meta
    device = meta.get("trained_on", {}).get("device")
    return str(device) if device else None


def run_row(run: Path, cfg: dict[str, Any] | None = None, metrics: list[dict[str, str]] | None = None,
            meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run folder -> its row: what was trained, on what, how long, and the best validation scores.
    ``cfg``, ``metrics``, ``meta``: its config.yaml, metrics.csv rows and model.json when the caller
    has read them already."""
    cfg = read_run_config(run) if cfg is None else cfg
    data, model, train = cfg.get("data", {}), cfg.get("model", {}), cfg.get("train", {})
    rows = read_metrics(run / "metrics.csv") if metrics is None else metrics
    monitor = train.get("monitor") or ("val/dice" if model.get("task", "segment") == "segment" else "val/auc")
    keyed = [(k, r) for r in rows if (k := monitor_key(r, monitor)) is not None]  # the run's own rule
    best = max(keyed, key=lambda kr: kr[0])[1] if keyed else None
    seconds = sum(_num(r.get("seconds")) or 0.0 for r in rows)
    steps = int(_num(rows[-1].get("step")) or 0) if rows else 0
    batch = int(data.get("batch_size") or 0) * int(train.get("accumulate") or 1)
    out: dict[str, Any] = {
        "name": run.name, "data": Path(str(data.get("path", ""))).name, "task": model.get("task"),
        "arch": (f"{model.get('arch')} per class" if model.get("per_class") else model.get("arch"))
        if model.get("task") == "segment" else "-", "encoder": model.get("encoder"),
        "weights": model.get("encoder_weights") or "scratch", "device": trained_device(run, meta),
        "epochs": len(rows), "steps": steps,
        "minutes": round(seconds / 60, 1), "img_per_s": round(steps * batch / seconds, 2) if seconds else None,
        "best_epoch": None if best is None else int(_num(best["epoch"]) or 0) + 1,
    }
    for key in ("dice", "miou", "auc", "ap"):  # ap: image-level average precision (any defect)
        out[key] = None if best is None else _num(best.get(f"val/{key}"))
    if best is not None:
        for k, v in best.items():
            if k.startswith(("val/dice_", "val/iou_")) and _num(v) is not None:
                out[k[4:]] = _num(v)
    return out


def find_runs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder of runs")
    return sorted(p.parent for p in root.glob("*/config.yaml"))


def resolve_run(name: str | Path, root: str | Path) -> Path:
    """A run folder given as a path, or by the name ``steelseg runs`` prints (a folder under ``root``);
    an unknown name is refused with the closest names under ``root``."""
    path = Path(name)
    if (path / "config.yaml").is_file():
        return path
    under = Path(root) / name
    if (under / "config.yaml").is_file():
        return under
    import difflib

    names = [p.name for p in find_runs(root)] if Path(root).is_dir() else []
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else (f" Runs there: {', '.join(names[:8])}" if names else "")
    raise DataError(f"{name}: not a run folder, nor a run under {root}.{hint}")


def filter_sort(rows: list[dict[str, Any]], where: list[str] | None, sort: str | None,
                ascending: bool = False) -> list[dict[str, Any]]:
    """Rows whose columns equal every KEY=VALUE of ``where``, sorted by ``sort`` (best first unless
    ``ascending``; runs without the value last)."""
    for cond in where or []:
        if "=" not in cond:
            raise DataError(f"--where {cond!r}: expected KEY=VALUE, e.g. encoder=resnet18")
        key, value = cond.split("=", 1)
        if rows and key not in rows[0]:
            raise DataError(f"--where {key}: unknown column; columns: {', '.join(rows[0])}")
        rows = [r for r in rows if str(r.get(key)) == value]
    if sort:
        if rows and sort not in rows[0]:
            raise DataError(f"--sort {sort}: unknown column; columns: {', '.join(rows[0])}")
        have = sorted((r for r in rows if r.get(sort) is not None), key=lambda r: r[sort], reverse=not ascending)
        rows = have + [r for r in rows if r.get(sort) is None]
    return rows


ONE_DECIMAL = {"minutes", "img_per_s"}


def _cell(v: Any, column: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if column in ONE_DECIMAL or abs(v) >= 10 else f"{v:.4f}"
    return str(v)


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    extra = sorted({k for r in rows for k in r if k not in COLUMNS})
    return COLUMNS + extra


def to_markdown(rows: list[dict[str, Any]]) -> str:
    cols = columns_of(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c), c) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    from steelseg.fsutil import atomic_write

    cols = columns_of(rows)
    with atomic_write(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows([{c: r.get(c) for c in cols} for r in rows])


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def compare(a: Path, b: Path) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(config keys that differ, metrics side by side) of two run folders."""
    raw = [read_run_config(run) for run in (a, b)]
    cfgs = [_flat(c) for c in raw]
    keys = sorted(set(cfgs[0]) | set(cfgs[1]))
    diff = [(k, cfgs[0].get(k), cfgs[1].get(k)) for k in keys if cfgs[0].get(k) != cfgs[1].get(k) and k != "name"]
    ra, rb = run_row(a, raw[0]), run_row(b, raw[1])
    metrics = [(k, ra.get(k), rb.get(k)) for k in columns_of([ra, rb])
               if k not in ("name", "data", "task", "arch", "encoder", "weights")]
    return diff, metrics
