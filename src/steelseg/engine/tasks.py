"""Whole jobs as Ray tasks: one call of ``fn`` per argument tuple, several at once across the cluster (a fold of
``steelseg fit`` per worker, a GPU each where the cluster has them), results handed back as each task ends.
A task whose worker or node dies is run again by Ray (``retries``); the callable must make that safe (a fold
resumes from its checkpoint). Each task asks for its share of the cluster's CPUs (capped at the largest node's,
so no task waits for ever for a node that does not exist) and is told how many threads that is."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from steelseg.engine.cluster import describe, ray_session
from steelseg.errors import SteelsegError

__all__ = ["TaskOptions", "run_tasks"]


def _call(fn: Callable[..., Any], args: tuple[Any, ...], threads: int) -> tuple[str, Any]:
    """In the worker: (the node's id, what ``fn`` returned)."""
    import ray

    return ray.get_runtime_context().get_node_id()[:8], fn(*args, threads=threads)


@dataclass
class TaskOptions:
    address: str | None = None  # auto, HOST:PORT, or None for an embedded local instance
    workers: int | None = None  # tasks at once (default: one per GPU, else half the CPUs, at most the tasks)
    retries: int = 2  # runs again after a worker or node died
    every: float = 30.0  # seconds between the waiting lines


def _shares(resources: dict[str, float], biggest_node: float, n: int, workers: int | None) -> tuple[int, float, int]:
    """(tasks at once, CPUs a task asks for, GPUs a task asks for)."""
    cpus, gpus = float(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    if workers is None:
        workers = min(n, gpus) if gpus else min(n, max(1, int(cpus) // 2))
    workers = max(1, min(workers, n))
    share = round(min(cpus / workers, biggest_node), 2)
    return workers, share, 1 if gpus >= workers else 0


def run_tasks(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], opts: TaskOptions,
              say: Callable[[str], None] = print,
              status: Callable[[], str] | None = None) -> Iterator[tuple[int, str, Any]]:
    """(index into ``args``, the node it ran on, its result) as tasks end; ``fn(*a, threads=T)`` runs in a Ray
    worker. ``status`` adds the tasks' own progress to the line said every ``opts.every`` seconds."""
    with ray_session(opts.address) as (ray, _):
        nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        workers, cpus, gpus = _shares(ray.cluster_resources(), max(nodes or [1.0]), len(args), opts.workers)
        threads = max(1, int(cpus))
        say(f"ray: {len(args)} task(s), {workers} at once, {cpus:g} CPU{f' and {gpus} GPU' if gpus else ''} "
            f"and {threads} thread(s) each, on {describe(ray, opts.address)}")
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=opts.retries)(_call)
        queue = list(enumerate(args))
        running: dict[Any, int] = {}
        t0 = time.time()
        while queue or running:
            while queue and len(running) < workers:  # at most `workers` at once: each gets its share
                k, a = queue.pop(0)
                running[remote.remote(fn, a, threads)] = k
            done, _ = ray.wait(list(running), num_returns=1, timeout=opts.every)
            if not done:
                extra = f": {status()}" if status else ""
                say(f"ray: {len(running)} task(s) running, {len(queue)} waiting ({(time.time() - t0) / 60:.1f} min)"
                    f"{extra}")
                continue
            k = running.pop(done[0])
            node, value = _result(ray, done[0])
            yield k, node, value


def _result(ray: Any, ref: Any) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the task's own error, as it was raised there
        if isinstance(e.cause, SteelsegError):
            raise e.cause from None
        raise
