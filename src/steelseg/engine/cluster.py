"""A Ray session for one job: attached to a running cluster (``address``: ``auto`` or ``HOST:PORT``), or an
embedded local instance started for the job (no dashboard, usage stats off, its own temporary folder, a bounded
object store) and stopped after, its folder removed, leaving no process behind. Ray's own log lines go where the
other libraries' go (the job's log) unless ``-v``. Ray is imported here and nowhere above the engine."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from steelseg import logs
from steelseg.errors import SteelsegError

__all__ = ["ray_session", "describe"]


def _import_ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError:
        raise SteelsegError("--engine ray needs Ray: pip install 'steelseg[ray]'") from None
    return ray


@contextmanager
def ray_session(address: str | None, object_store_mb: int = 256) -> Iterator[tuple[Any, str | None]]:
    """(the ray module, the embedded instance's temporary folder or None when attached to a cluster)."""
    ray = _import_ray()
    quiet = logs.active()  # steelseg -v: Ray says what it says
    kw: dict[str, Any] = {"log_to_driver": not quiet, "logging_level": logging.ERROR if quiet else logging.INFO}
    tmp = None
    if address:
        ray.init(address=address, **kw)
    else:
        tmp = tempfile.mkdtemp(prefix="steelseg-ray-")  # short: Ray's socket paths must fit in 107 characters
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, _temp_dir=tmp,
                 object_store_memory=object_store_mb * 2 ** 20, **kw)
    if quiet:  # Ray adds its own console handlers at init: route them to the job's log like the others
        logs.install()
    try:
        yield ray, tmp
    finally:
        ray.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def describe(ray: Any, address: str | None) -> str:
    """``2 node(s) (embedded)`` / ``2 node(s) (127.0.0.1:6379)``."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return f"{len(alive)} node(s) ({address or 'embedded'})"
