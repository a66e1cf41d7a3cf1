"""Drift alerts on generated streams (issue #40 goals): no alert on an unchanged stream of 10,000 images, and
each generated drift raising its own alert within one window.

python bench/drift.py BUNDLE [--window 500] [--stream 10000] [--pool 1000] [--work /tmp/drift-bench]

- reference: the bundle (copied, never changed) gets a reference.json from --pool/2 fresh synthetic strips;
- unchanged: --pool other fresh strips are predicted once; the stream draws --stream of them with replacement (a
  prediction is a function of its image, so drawing images or their signals is the same);
- drifts, one window each, predicted: brightness +30 gray levels, a camera gone dark (x0.05), a new defect
  look (each defect's pixels mirrored about the strip's mean: bright marks where the line made dark ones),
  and a defect-rate jump (5% defect-free strips instead of 45%).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _set(work: Path, name: str, n: int, seed: int, height: int, width: int, free: float = 0.45) -> object:
    from steelseg.data.open import open_dataset
    from steelseg.data.synth import SynthConfig, make_dataset

    folder = work / name
    if not (folder / "train.csv").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        make_dataset(folder, SynthConfig(images=n, seed=seed, height=height, width=width, defect_free=free))
    return open_dataset(folder)


def _signals(predictor: object, ds: object, change: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
             batch: int = 8) -> list[dict]:
    from steelseg.drift import image_signals

    out, ids = [], ds.image_ids
    for k in range(0, len(ids), batch):
        imgs = []
        for i in ids[k:k + batch]:
            img = ds.load_image(i, None)
            imgs.append(change(img, ds.load_mask(i).any(axis=2)) if change else img)
        for img, pred in zip(imgs, predictor.predict(imgs)):
            out.append(image_signals(img, pred.probs, pred.masks))
    return out


def _mirror_defects(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = img.astype(np.float32)
    out[mask] = 2 * out.mean() - out[mask]
    return np.clip(out, 0, 255).astype(np.uint8)


DRIFTS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], np.ndarray] | None, set[str]]] = {
    "brightness +30": (lambda im, m: np.clip(im.astype(np.int16) + 30, 0, 255).astype(np.uint8), {"brightness"}),
    "camera dark (x0.05)": (lambda im, m: (im * 0.05).astype(np.uint8), {"brightness", "contrast"}),
    "new defect look": (_mirror_defects, {"score:", "rate:"}),
    "defect rate jump": (None, {"rate:"}),
}


def main() -> None:
    from steelseg.drift import DriftConfig, DriftMonitor, describe
    from steelseg.inference.predictor import Predictor
    from steelseg.inference.reference import write_reference

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--stream", type=int, default=10_000)
    ap.add_argument("--pool", type=int, default=1000)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--min-reference", type=int, default=100, help="as in deploy/drift.yaml")
    ap.add_argument("--work", type=Path, default=Path("/tmp/drift-bench"))
    a = ap.parse_args()
    t0 = time.time()
    bundle = a.work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(a.bundle, bundle)
    ref_set = _set(a.work, "ref", a.pool // 2, 21, a.height, a.width)
    ref = write_reference(bundle, ref_set.table["path"].tolist(), "bench/drift.py: fresh synthetic strips")
    cfg = DriftConfig(window=a.window, min_reference=a.min_reference)
    predictor = Predictor.from_bundle(bundle)
    pool = _signals(predictor, _set(a.work, "pool", a.pool, 22, a.height, a.width), None)
    rng = np.random.default_rng(0)
    quiet = DriftMonitor(ref, cfg)
    for k in rng.integers(0, len(pool), a.stream):
        quiet.add(pool[k])
    alerts = [v for v in quiet.verdicts if any(r["level"] == "alert" for r in v["rows"])]
    warns = [v for v in quiet.verdicts if v not in alerts and any(r["level"] == "warn" for r in v["rows"])]
    first = (alerts or warns or [None])[0]
    print(f"reference: {ref.images} images; unchanged stream: {a.stream} images, {len(quiet.verdicts)} windows, "
          f"{len(alerts)} with an alert (the goal: none; the shipped Prometheus rules fire on alerts), {len(warns)} "
          "with a warning only" + (f" (first: {describe(first['rows'])})" if first else ""))
    ok = not alerts
    for name, (change, want) in DRIFTS.items():
        ds = _set(a.work, "jump", a.window, 23, a.height, a.width, free=0.05) if change is None else \
            _set(a.work, "window", a.window, 24, a.height, a.width)
        mon = DriftMonitor(ref, cfg)
        for s in _signals(predictor, ds, change):
            mon.add(s)
        rows = mon.verdicts[0]["rows"]
        hit = {r["signal"] for r in rows if r["level"] == "alert"}
        match = all(any(h == w or (w.endswith(":") and h.startswith(w)) for h in hit) for w in want)
        ok &= match
        print(f"{name}: {'alert on the matching signal' if match else 'MISSED'} within one window of {a.window} "
              f"-> {describe(rows)}")
    print(f"{'all goals met' if ok else 'goals NOT met'} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
