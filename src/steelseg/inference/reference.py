"""A bundle's drift reference (``reference.json``): the signals of :mod:`steelseg.drift` over images the models
did not train on (the tuned split), predicted by the bundle itself, post-processing included, so the stream on
the line is compared with what the same pipeline gave on known-good data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from steelseg.data.images import read_image
from steelseg.drift import Reference, image_signals
from steelseg.fsutil import atomic_json

__all__ = ["REFERENCE_JSON", "read_reference", "write_reference"]

REFERENCE_JSON = "reference.json"


def write_reference(bundle: str | Path, images: Sequence[str | Path], how: str, threads: int | None = None,
                    batch: int = 8) -> Reference:
    """Predict ``images`` with the bundle and store their signals' histograms in ``bundle/reference.json``."""
    from steelseg.inference.predictor import Predictor

    predictor = Predictor.from_bundle(bundle, threads=threads)
    signals = []
    for k in range(0, len(images), batch):
        imgs = [read_image(p, None) for p in images[k:k + batch]]
        for img, pred in zip(imgs, predictor.predict(imgs)):
            signals.append(image_signals(img, pred.probs, pred.masks))
    ref = Reference.from_signals(predictor.class_names, signals)
    atomic_json(Path(bundle) / REFERENCE_JSON, {**ref.to_dict(), "how": how})
    return ref


def read_reference(bundle: str | Path) -> Reference | None:
    """The bundle's reference, or None when it has none (made before references, or by ``steelseg bundle``)."""
    import json

    f = Path(bundle) / REFERENCE_JSON
    if not f.is_file():
        return None
    return Reference.from_dict(json.loads(f.read_text()))
