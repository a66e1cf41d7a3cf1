"""Drift and defect-rate statistics for a line (NumPy only; ``serve``, ``watch`` and ``monitor`` share them).

Each predicted image gives **signals**: its brightness (mean gray) and contrast (gray standard deviation), its
size, and per class the image score (the largest pixel probability) and whether a defect was reported. A
**reference** (``reference.json`` in the bundle, made at tune time from the validation images) holds the
histograms of those signals; a **window** of the latest images holds the same histograms for the stream.

The drift statistic is the population stability index, PSI = sum((w - r) * ln(w / r)) over the bins of the
reference (r) and window (w) shares, each share floored at 1e-4. PSI is biased upwards by sampling alone: for
k bins and two samples of n_r and n_w images it is about (k - 1) * (1 / n_r + 1 / n_w) with nothing changed (it is
a symmetric chi-square over n). The **excess** PSI, the statistic minus that noise level, is what the thresholds
judge: above ``warn`` (0.1, "a moderate shift" in the usual reading) a warning, above ``alert`` (0.25, "a
significant shift") an alert. The defect rate of a class is judged the same way over two bins (defect, none).
Alerts are decided once per full window (``window`` images, default 500), so a stream is judged every
``window`` images, never on a handful.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steelseg.metrics import class_max

__all__ = ["LEVELS", "DriftConfig", "DriftGauges", "DriftMonitor", "Reference", "compare", "describe", "excess_psi", "image_signals", "psi",
           "psi_noise",
           "worst"]

EDGES = {
    "brightness": np.linspace(0, 256, 17),  # 16 bins of mean gray
    "contrast": np.array([0, 4, 8, 12, 16, 20, 25, 30, 40, 50, 65, 80, 256], float),
    "score": np.linspace(0, 1.000001, 11),  # 10 bins of an image's largest probability for a class
}
FLOOR = 1e-4


@dataclass
class DriftConfig:
    window: int = 500  # images per judged window
    warn: float = 0.1  # excess PSI of a warning
    alert: float = 0.25  # excess PSI of an alert
    min_reference: int = 100  # reference images a signal needs to be judged (fewer: reported, never alerted)


def image_signals(image: np.ndarray, probs: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """The signals of one image: (H, W[, 3]) uint8 input, (H, W, C) probabilities and masks."""
    gray = image if image.ndim == 2 else image.mean(axis=2)
    return {"brightness": float(gray.mean()), "contrast": float(gray.std()),
            "size": f"{image.shape[1]}x{image.shape[0]}",
            "scores": [float(v) for v in class_max(probs)],
            "found": [bool(v) for v in class_max(masks)]}


def psi(ref: np.ndarray, win: np.ndarray) -> float:
    """Population stability index of two histograms (counts over the same bins)."""
    r = np.maximum(np.asarray(ref, float) / max(float(np.sum(ref)), 1.0), FLOOR)
    w = np.maximum(np.asarray(win, float) / max(float(np.sum(win)), 1.0), FLOOR)
    return float(np.sum((w - r) * np.log(w / r)))


def psi_noise(ref: np.ndarray, win: np.ndarray) -> float:
    """The PSI that sampling alone gives for these bin and sample counts (see the module's text)."""
    n_r, n_w = float(np.sum(ref)), float(np.sum(win))
    k = int(np.count_nonzero(np.asarray(ref) + np.asarray(win)))
    return (max(k, 2) - 1) * (1 / max(n_r, 1.0) + 1 / max(n_w, 1.0))


def excess_psi(ref: np.ndarray, win: np.ndarray) -> float:
    """PSI above what sampling alone gives (:func:`psi_noise`)."""
    return psi(ref, win) - psi_noise(ref, win)


@dataclass
class _Counts:
    """Histograms of the signals over a set of images."""

    class_names: list[str]
    images: int = 0
    brightness: np.ndarray = field(default_factory=lambda: np.zeros(len(EDGES["brightness"]) - 1, np.int64))
    contrast: np.ndarray = field(default_factory=lambda: np.zeros(len(EDGES["contrast"]) - 1, np.int64))
    sizes: dict[str, int] = field(default_factory=dict)
    scores: np.ndarray | None = None  # (C, bins)
    found: np.ndarray | None = None  # (C,) images with a defect reported

    def __post_init__(self) -> None:
        k = len(self.class_names)
        self.scores = np.zeros((k, len(EDGES["score"]) - 1), np.int64) if self.scores is None else self.scores
        self.found = np.zeros(k, np.int64) if self.found is None else self.found

    def add(self, s: dict[str, Any], sign: int = 1) -> None:
        self.images += sign
        self.brightness[_bin("brightness", s["brightness"])] += sign
        self.contrast[_bin("contrast", s["contrast"])] += sign
        self.sizes[s["size"]] = self.sizes.get(s["size"], 0) + sign
        for c, (v, f) in enumerate(zip(s["scores"], s["found"])):
            self.scores[c, _bin("score", v)] += sign
            self.found[c] += sign * int(f)

    def to_dict(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "images": self.images, "brightness": self.brightness.tolist(),
                "contrast": self.contrast.tolist(), "sizes": dict(self.sizes), "scores": self.scores.tolist(),
                "found": self.found.tolist(), "edges": {k: v.tolist() for k, v in EDGES.items()}}


def _bin(kind: str, v: float) -> int:
    e = EDGES[kind]
    return int(np.clip(np.searchsorted(e, v, side="right") - 1, 0, len(e) - 2))


class Reference(_Counts):
    """The reference histograms (``reference.json`` in a bundle)."""

    @classmethod
    def from_signals(cls, class_names: list[str], signals: list[dict[str, Any]]) -> Reference:
        ref = cls(list(class_names))
        for s in signals:
            ref.add(s)
        return ref

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        if d.get("edges") != {k: v.tolist() for k, v in EDGES.items()}:
            raise ValueError("reference.json was made with other histogram bins; make it again (steelseg tune)")
        return cls(list(d["class_names"]), int(d["images"]), np.array(d["brightness"], np.int64),
                   np.array(d["contrast"], np.int64), dict(d["sizes"]), np.array(d["scores"], np.int64),
                   np.array(d["found"], np.int64))


def compare(ref: _Counts, win: _Counts, cfg: DriftConfig) -> list[dict[str, Any]]:
    """One row per signal: name, PSI, excess PSI, level (ok / warn / alert / unjudged), and the values."""
    sizes = sorted(set(ref.sizes) | set(win.sizes))
    rows = [("brightness", ref.brightness, win.brightness), ("contrast", ref.contrast, win.contrast),
            ("size", np.array([ref.sizes.get(k, 0) for k in sizes]), np.array([win.sizes.get(k, 0) for k in sizes]))]
    for c, name in enumerate(ref.class_names):
        rows.append((f"score:{name}", ref.scores[c], win.scores[c]))
        rows.append((f"rate:{name}", np.array([ref.images - ref.found[c], ref.found[c]]),
                     np.array([win.images - win.found[c], win.found[c]])))
    out = []
    for name, r, w in rows:
        p = psi(r, w)
        ex = p - psi_noise(r, w)
        level = "unjudged" if ref.images < cfg.min_reference else \
            "alert" if ex > cfg.alert else "warn" if ex > cfg.warn else "ok"
        row = {"signal": name, "psi": round(p, 4), "excess": round(ex, 4), "level": level}
        if name.startswith("rate:"):
            row.update(reference=round(r[1] / max(r.sum(), 1), 4), window=round(w[1] / max(w.sum(), 1), 4))
        out.append(row)
    return out


class DriftMonitor:
    """A sliding window over the stream (what ``/metrics`` shows now) and a verdict per full window."""

    def __init__(self, reference: Reference, cfg: DriftConfig | None = None) -> None:
        self.ref, self.cfg = reference, cfg or DriftConfig()
        self.recent: deque[dict[str, Any]] = deque()
        self.window = _Counts(list(reference.class_names))
        self.seen = 0
        self.verdicts: list[dict[str, Any]] = []  # one per full window: first / last image, rows

    def add(self, s: dict[str, Any]) -> dict[str, Any] | None:
        """Add one image's signals; the verdict when this image completes a window, else None."""
        self.recent.append(s)
        self.window.add(s)
        if len(self.recent) > self.cfg.window:
            self.window.add(self.recent.popleft(), -1)
        self.seen += 1
        if self.seen % self.cfg.window:
            return None
        v = {"images": [self.seen - self.cfg.window + 1, self.seen], "rows": self.now()}
        self.verdicts.append(v)
        return v

    def now(self) -> list[dict[str, Any]]:
        return compare(self.ref, self.window, self.cfg)


def worst(rows: list[dict[str, Any]]) -> str:
    order = {"unjudged": -1, "ok": 0, "warn": 1, "alert": 2}
    return max((r["level"] for r in rows), key=lambda lv: order[lv], default="ok")


def describe(rows: list[dict[str, Any]]) -> str:
    """The signals above ``ok``, in words."""
    bad = [r for r in rows if r["level"] in ("warn", "alert")]
    if not bad:
        return "no drift"
    return "; ".join(f"{r['level']}: {r['signal']} (excess PSI {r['excess']:.2f}"
                     + (f", rate {r['reference']:.1%} -> {r['window']:.1%}" if "window" in r else "") + ")"
                     for r in bad)



LEVELS = {"unjudged": -1, "ok": 0, "warn": 1, "alert": 2}


class DriftGauges:
    """The drift gauges that ``serve`` and ``watch`` both publish on ``/metrics`` (prometheus-client, imported
    here only when made), fed by a :class:`DriftMonitor`: refreshed every ``every`` images and at each verdict."""

    def __init__(self, registry: Any, monitor: DriftMonitor | None, every: int = 50) -> None:
        from prometheus_client import Gauge

        self.monitor, self.every = monitor, every
        self.excess = Gauge("steelseg_drift_excess_psi", "Excess PSI of a signal over the latest window",
                            ["signal"], registry=registry)
        self.level = Gauge("steelseg_drift_level", "Drift level of a signal: -1 unjudged, 0 ok, 1 warn, 2 alert",
                           ["signal"], registry=registry)
        self.rate = Gauge("steelseg_defect_rate", "Share of the latest window's images with the class found",
                          ["class_name"], registry=registry)
        self.brightness = Gauge("steelseg_input_brightness", "Mean gray of the latest image", registry=registry)

    def add(self, signals: dict[str, Any]) -> dict[str, Any] | None:
        """Feed one image; its window's verdict when it completes one (see :meth:`DriftMonitor.add`)."""
        self.brightness.set(signals["brightness"])
        if self.monitor is None:
            return None
        verdict = self.monitor.add(signals)
        if verdict is not None or self.monitor.seen % self.every == 0:
            for r in verdict["rows"] if verdict else self.monitor.now():
                self.excess.labels(r["signal"]).set(r["excess"])
                self.level.labels(r["signal"]).set(LEVELS[r["level"]])
                if "window" in r:
                    self.rate.labels(r["signal"].split(":", 1)[1]).set(r["window"])
        return verdict
