"""An archive job: list the source, skip what an earlier run of the job wrote (``resume``), predict the rest on
an engine, write sharded rows, then ``submission.csv`` and ``job.json`` (counts per class, defect rate per
top-level folder, errors, images/s)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steelseg import logs
from steelseg.engine.options import EngineOptions
from steelseg.engine.rows import columns
from steelseg.engine.sink import ShardWriter, done_ids, shards, write_submission
from steelseg.engine.source import list_source, source_root
from steelseg.engine.summary import summarize
from steelseg.errors import DataError
from steelseg.fsutil import atomic_json, check_writable_dir, guard_output

__all__ = ["ENGINES", "predict_archive"]

ENGINES = ("local", "ray")


def _items_to_do(source: str, out: Path, resume: bool) -> tuple[list, int]:
    items = list_source(source)
    if not shards(out):
        return items, 0
    if not resume:
        raise DataError(f"{out}: holds the rows of an earlier job ({len(shards(out))} shard(s)); add --resume to "
                        "predict only the images it has not written, or choose another --out")
    done = done_ids(out)
    return [i for i in items if i.image_id not in done], len(done)


def _progress(total: int, say: Callable[[str], None]) -> Callable[[int, int], None]:
    t0, last = time.monotonic(), [0.0]

    def tick(done: int, errors: int) -> None:
        now = time.monotonic()
        if now - last[0] > 2 or done == total:
            last[0] = now
            rate = done / max(now - t0, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("nan")
            say(f"{done}/{total} images, {rate:.1f} images/s, {errors} error row(s), ETA {eta:.0f} s")
    return tick


def _run(engine: str, todo: list, opts: EngineOptions, bundle_id: str, writer: ShardWriter,
         tick: Callable[[int, int], None], say: Callable[[str], None]) -> None:
    if not todo:
        return
    if engine == "ray":
        from steelseg.engine.ray_pool import run_ray

        batches = run_ray(todo, opts, bundle_id, say)
    else:
        from steelseg.engine.local import run_local

        batches = run_local(todo, opts, bundle_id)
    errors = 0
    for rows in batches:
        writer.add(rows)
        errors += sum(1 for r in rows if r["error"])
        tick(writer.written + len(writer.buf), errors)


def predict_archive(source: str, out: str | Path, opts: EngineOptions, engine: str = "local", fmt: str = "parquet",
                    resume: bool = False, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predict every image of ``source`` with ``opts.bundle`` on ``engine``; see the module's text."""
    say = say or (lambda s: print(s, file=sys.stderr, flush=True))
    if engine not in ENGINES:
        raise DataError(f"--engine {engine!r}: one of {', '.join(ENGINES)}")
    root = source_root(source)
    out = Path(out)
    if root is not None:
        guard_output(out, [(root, False)], "prediction job")
    out = check_writable_dir(out)
    todo, done_before = _items_to_do(source, out, resume)
    from steelseg.inference.bundle import bundle_id as content_id
    from steelseg.inference.bundle import read_bundle

    info, bundle_id = read_bundle(opts.bundle), content_id(opts.bundle)
    writer = ShardWriter(out, fmt, columns(info.class_names), opts.shard_rows)
    tick, t0 = _progress(len(todo), say), time.monotonic()
    if done_before:
        say(f"resuming: {done_before} image(s) already written, {len(todo)} to do")
    with logs.log_to(out / "log.txt"):
        _run(engine, todo, opts, bundle_id, writer, tick, say)
    writer.flush()
    seconds = time.monotonic() - t0
    sub, sub_errors = write_submission(out, info.class_names)
    summary = {"source": source, "engine": engine, "bundle": str(opts.bundle), "format": fmt,
               "predicted_now": len(todo), "resumed_from": done_before, "seconds": round(seconds, 2),
               "images_per_s": round(len(todo) / seconds, 3) if seconds > 0 else None,
               "submission": str(sub), "complete": sub_errors == 0, **summarize(out, info.class_names)}
    atomic_json(out / "job.json", summary)
    return summary
