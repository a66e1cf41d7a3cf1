"""How unsure a prediction is, for the review queue (``steelseg serve --queue DIR``): which images a
person should look at first.

Four signals per image and class, each in 0..1 (1 = most unsure):

* ``band``: of the pixels that are, or nearly are, above the class's pixel threshold t (p > t - b), the
  share within the uncertain band |p - t| < b;
* ``gate``: how close the classifier's probability s is to its gate g: 1 - |s - g| / (the largest
  distance possible on that side of g);
* ``flip``: disagreement of the masks predicted on the image and on its mirror image (1 - Dice; 0
  when both are empty);
* ``area``: a mask whose area a sits near the class's minimum area m: min(a, m) / max(a, m) (masks
  just below m were removed by it; just above, kept by it).

An image's priority is its largest signal; the reason names that class and signal. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from steelseg.inference import postprocess
from steelseg.inference.postprocess import PostProcess

__all__ = ["BAND", "Priority", "band_signal", "class_signals", "flip_signal", "gate_signal", "image_priority",
           "priority", "queue_order"]

BAND = 0.1
SIGNALS = ("band", "gate", "flip", "area")


@dataclass
class Priority:
    score: float
    reason: str
    signals: list[dict[str, float]]  # per class: signal name -> value


def band_signal(p: np.ndarray, t: float, band: float = BAND) -> float:
    if t >= 1.0:  # a class switched off (nothing can pass the threshold): nothing to be unsure of
        return 0.0
    cand = p > t - band
    n = int(cand.sum())
    return 0.0 if n == 0 else float((cand & (np.abs(p - t) < band)).sum()) / n


def gate_signal(s: float | None, g: float | None) -> float:
    if s is None or g is None:
        return 0.0
    room = (1.0 - g) if s >= g else g
    return 0.0 if room <= 0 else float(max(0.0, 1.0 - abs(s - g) / room))


def flip_signal(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 0.0 if total == 0 else 1.0 - 2.0 * float((a & b).sum()) / total


def area_signal(area: int, min_area: int) -> float:
    return 0.0 if min_area <= 0 or area <= 0 else min(area, min_area) / max(area, min_area)


def class_signals(probs: np.ndarray, flipped: np.ndarray | None, pp: PostProcess, gate: np.ndarray | None,
                  band: float = BAND) -> list[dict[str, float]]:
    """The four signals of every class of one image: ``probs`` (H, W, C), ``flipped`` the probabilities
    predicted on the mirrored image, mirrored back (or None), ``gate`` the classifier's (C,) or None."""
    out = []
    for c in range(probs.shape[-1]):
        s = None if gate is None else float(gate[c])
        t = float(postprocess.pixel_thresholds(pp, c, s))
        raw = probs[..., c] > t
        g = None if pp.gate_threshold is None else pp.gate_threshold[c]
        out.append({"band": band_signal(probs[..., c], t, band), "gate": gate_signal(s, g),
                    "flip": 0.0 if flipped is None else flip_signal(raw, flipped[..., c] > t),
                    "area": area_signal(int(raw.sum()), pp.min_area[c]), "threshold": t})
    return out


def _reason(sig: dict[str, float], name: str, band: float) -> str:
    key = max(SIGNALS, key=lambda k: sig[k])
    v, t = sig[key], sig["threshold"]
    return {"band": f"{name}: {100 * v:.0f}% of its candidate pixels lie within ±{band:g} of the threshold {t:.2f}",
            "gate": f"{name}: the classifier's score is near its gate ({100 * v:.0f}% of the way to it)",
            "flip": f"{name}: the mask changes when the image is mirrored (1 - Dice = {v:.2f})",
            "area": f"{name}: the mask's area is near the minimum area ({100 * v:.0f}% of one another)"}[key]


def priority(signals: list[dict[str, float]], class_names: list[str], band: float = BAND) -> Priority:
    """An image's priority (its largest signal) and why, from :func:`class_signals`."""
    best = max(range(len(signals)), key=lambda c: max(signals[c][k] for k in SIGNALS))
    score = max(signals[best][k] for k in SIGNALS)
    reason = _reason(signals[best], class_names[best], band) if score > 0 else "every class is clear-cut"
    return Priority(float(score), reason, signals)


def image_priority(predictor: Any, image: np.ndarray, band: float = BAND) -> Priority:
    """Predict ``image`` and its mirror image (without TTA, which would hide the disagreement) and rate it."""
    plain = replace(predictor, tta=False)
    pp = predictor.pp or PostProcess.default(predictor.num_classes)
    pred, mirrored = plain.predict([image, np.ascontiguousarray(image[:, ::-1])])
    return priority(class_signals(pred.probs, mirrored.probs[:, ::-1], pp, pred.gate, band),
                    predictor.class_names, band)


def queue_order(scores: list[float], random_every: int = 10, seed: int = 0) -> list[tuple[int, bool]]:
    """Indices of ``scores``, most unsure first, with every ``random_every``-th place (the 10th, 20th, ...)
    taken by an image drawn at random from the rest, so reviewers also see confident ones. Returns
    (index, drawn at random) pairs; ties keep the given order."""
    rest = sorted(range(len(scores)), key=lambda i: -scores[i])
    rng = np.random.default_rng(seed)
    out: list[tuple[int, bool]] = []
    while rest:
        if random_every > 0 and len(out) % random_every == random_every - 1 and len(rest) > 1:
            out.append((rest.pop(int(rng.integers(len(rest)))), True))
        else:
            out.append((rest.pop(0), False))
    return out
