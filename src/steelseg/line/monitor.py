"""``steelseg monitor OUT``: the drift of a watched line, recomputed from its result log against the bundle's
reference, window by window (:mod:`steelseg.drift`), with a plot of each signal's excess PSI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steelseg.drift import DriftConfig, DriftMonitor, worst
from steelseg.errors import DataError
from steelseg.fsutil import atomic_json, atomic_text
from steelseg.pages import render

__all__ = ["monitor_folder", "row_signals"]


def row_signals(row: dict[str, Any]) -> dict[str, Any]:
    """The drift signals of one result row of ``results.jsonl``."""
    classes = list(row["classes"].values())
    return {"brightness": row["input"]["brightness"], "contrast": row["input"]["contrast"],
            "size": f"{row['width']}x{row['height']}", "scores": [c["max_probability"] for c in classes],
            "found": [bool(c["found"]) for c in classes]}


def _rows(log: Path) -> list[dict[str, Any]]:
    if not log.is_file():
        raise DataError(f"{log}: no result log (steelseg watch writes it into its --out folder)")
    lines = log.read_text(encoding="utf-8").splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append(json.loads(line))
        except ValueError:
            if n < len(lines):
                raise DataError(f"{log}:{n}: not a result row") from None  # the last may be cut short
    return out


def monitor_folder(out: str | Path, bundle: str | Path | None = None, cfg: DriftConfig | None = None) -> dict[str, Any]:
    """Judge every full window of ``out/results.jsonl``; write ``monitor.json``, ``monitor.png`` and ``monitor.html``."""
    from steelseg.inference.reference import read_reference

    out, cfg = Path(out), cfg or DriftConfig()
    if bundle is None:
        if not (out / "watch.json").is_file():
            raise DataError(f"{out}: no watch.json; give the bundle with --bundle")
        bundle = json.loads((out / "watch.json").read_text())["bundle"]
    ref = read_reference(bundle)
    if ref is None:
        raise DataError(f"{bundle}: no reference.json to judge drift against (steelseg tune or fit writes one)")
    rows = _rows(out / "results.jsonl")
    if rows and list(rows[0]["classes"]) != ref.class_names:
        raise DataError(f"{out}: classes {list(rows[0]['classes'])} differ from the reference's {ref.class_names}")
    mon = DriftMonitor(ref, cfg)
    for row in rows:
        mon.add(row_signals(row))
    result = {"bundle": str(bundle), "images": len(rows), "reference_images": ref.images, "window": cfg.window,
              "thresholds": {"warn": cfg.warn, "alert": cfg.alert}, "windows": mon.verdicts,
              "latest": mon.now() if rows else [], "level": worst(mon.now()) if rows else "ok"}
    atomic_json(out / "monitor.json", result)
    if mon.verdicts:
        _plot(mon.verdicts, cfg, out / "monitor.png")
    windows = [{**v, "level": worst(v["rows"])} for v in mon.verdicts]
    atomic_text(out / "monitor.html", render("monitor.html", out=str(out), m={**result, "windows": windows},
                                             plot="monitor.png" if mon.verdicts else None))
    return result


def _plot(verdicts: list[dict[str, Any]], cfg: DriftConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [v["images"][1] for v in verdicts]
    fig, ax = plt.subplots(figsize=(9, 4))
    for name in [r["signal"] for r in verdicts[0]["rows"]]:
        ax.plot(x, [next(r["excess"] for r in v["rows"] if r["signal"] == name) for v in verdicts], marker="o",
                label=name)
    ax.axhline(cfg.warn, color="orange", ls="--", lw=1, label="warn")
    ax.axhline(cfg.alert, color="red", ls="--", lw=1, label="alert")
    ax.set_xlabel("images seen (end of window)")
    ax.set_ylabel("excess PSI")
    ax.set_title(f"drift per window of {cfg.window} images against the bundle's reference")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
