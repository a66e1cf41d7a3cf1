"""The Ray engine: a Ray Data actor pool (each actor loads the bundle once) over the items, rows streamed back to
the driver, which writes them (:mod:`steelseg.engine.sink`). With no address it starts an embedded local instance
(no dashboard, usage stats off, its own temporary folder, a bounded object store) and stops it after, leaving no
process behind. Actors take a fraction of a CPU each, so Ray's own read and scheduling tasks always find a slot
(two whole-CPU actors on two cores leave none, and the job hangs)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from steelseg.engine.cluster import describe, ray_session
from steelseg.engine.options import EngineOptions
from steelseg.engine.rows import columns, predict_items, worker_id
from steelseg.engine.source import Item
from steelseg.errors import SteelsegError

__all__ = ["run_ray"]

WAIT_FOR_WORKERS_S = 180


class _Predict:
    """One actor: the bundle loaded once, then batch after batch."""

    def __init__(self, opts: EngineOptions, bundle_id: str, threads: int) -> None:
        from steelseg.inference.predictor import Predictor

        self.predictor = Predictor.from_bundle(opts.bundle, device=opts.device, tta=opts.tta, backend=opts.backend,
                                               threads=threads)
        import ray

        node = ray.get_runtime_context().get_node_id()[:8]
        self.bundle_id, self.worker = bundle_id, f"{worker_id()}@{node}"  # host:pid/k@node
        self.cols = columns(self.predictor.class_names)

    def __call__(self, batch: Any) -> Any:
        import pandas as pd

        items = [Item(str(i), str(u)) for i, u in zip(batch["image_id"], batch["uri"])]
        return pd.DataFrame(predict_items(self.predictor, items, self.bundle_id, self.worker), columns=self.cols)


def _plan(ray: Any, opts: EngineOptions) -> tuple[int, float, int]:
    """(workers, CPUs an actor asks for, threads an actor runs) from the cluster's CPUs."""
    cpus = float(ray.cluster_resources().get("CPU", 1))
    workers = opts.workers or max(1, int(cpus) // 2)
    share = cpus / workers
    threads = opts.threads or max(1, int(share))
    return workers, round(min(share, max(0.25, share * 0.75)), 2), threads


def run_ray(items: Sequence[Item], opts: EngineOptions, bundle_id: str,
            say: Any = None) -> Iterator[list[dict[str, Any]]]:
    """Rows for ``items`` as the pool finishes them (not in order)."""
    with ray_session(opts.address, opts.object_store_mb) as (ray, _):
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.wait_for_min_actors_s = WAIT_FOR_WORKERS_S  # the whole pool placed before work starts, or a clear error
        workers, cpus, threads = _plan(ray, opts)
        if say:
            say(f"ray: {workers} worker(s) of {cpus:g} CPU, {threads} thread(s) each, on "
                f"{describe(ray, opts.address)}")
        ds = ray.data.from_items([{"image_id": i.image_id, "uri": i.uri} for i in items],
                                 override_num_blocks=max(1, min(len(items) // opts.batch, 10_000)))
        ds = ds.map_batches(_Predict, fn_constructor_args=(opts, bundle_id, threads), batch_size=opts.batch,
                            batch_format="pandas", concurrency=workers, num_cpus=cpus,
                            max_restarts=-1, max_task_retries=-1)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
                yield batch.to_dict("records")
        except ray.exceptions.GetTimeoutError:
            raise SteelsegError(f"ray: {workers} worker(s) of {cpus:g} CPU could not all be placed in "
                                f"{WAIT_FOR_WORKERS_S} s (the cluster has {ray.cluster_resources().get('CPU', 0):g} "
                                "CPU): ask for fewer --workers, or add nodes") from None
