"""The local engine: the bundle's Predictor in this process, items in batches (today's single process)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from steelseg.engine.options import EngineOptions
from steelseg.engine.rows import predict_items, worker_id
from steelseg.engine.source import Item

__all__ = ["run_local"]


def run_local(items: Sequence[Item], opts: EngineOptions, bundle_id: str) -> Iterator[list[dict[str, Any]]]:
    """Rows for ``items``, a batch at a time, in order."""
    from steelseg.inference.predictor import Predictor

    predictor = Predictor.from_bundle(opts.bundle, device=opts.device, tta=opts.tta, backend=opts.backend,
                                      threads=opts.threads)
    worker = worker_id()
    for start in range(0, len(items), opts.batch):
        yield predict_items(predictor, items[start:start + opts.batch], bundle_id, worker)
