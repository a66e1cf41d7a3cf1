"""What an archive job found, read back from its rows: per class the images with a defect and their share, and
per group (a folder of the source, or a day) the images, error rows and the defect rate, overall and per class.
It reads only the id, error and found columns (with Parquet, no RLE is read)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from steelseg.engine.sink import read_rows, shards
from steelseg.errors import DataError

__all__ = ["GROUPINGS", "class_names_of", "group_of", "summarize"]

GROUPINGS = ("folder", "day")
NO_DATE = "(no date)"
# a date in the image's path: 2026-03-14, 2026_03_14, 20260314 (not inside a longer number)
_DATE = re.compile(r"(?<!\d)(20\d\d)[-_.]?(0[1-9]|1[0-2])[-_.]?(0[1-9]|[12]\d|3[01])(?!\d)")


def class_names_of(out: Path) -> list[str]:
    """The classes a job's rows hold (their ``found_*`` columns), in order."""
    parts = shards(out)
    if not parts:
        raise DataError(f"{out}: no rows (OUT/rows/part-*.parquet|csv): not an archive job's folder, or it wrote "
                        "nothing yet")
    if parts[0].suffix == ".parquet":
        import pyarrow.parquet as pq

        cols = pq.read_schema(parts[0]).names
    else:
        with open(parts[0]) as fh:
            cols = fh.readline().strip().split(",")
    return [c[len("found_"):] for c in cols if c.startswith("found_")]


def group_of(image_id: str, by: str, depth: int = 1) -> str:
    """The group of an image: its first ``depth`` folders (``.`` at the top), or the first date in its path."""
    if by == "day":
        m = _DATE.search(image_id)
        return f"{m[1]}-{m[2]}-{m[3]}" if m else NO_DATE
    parts = image_id.split("/")[:-1]
    return "/".join(parts[:depth]) if parts else "."


def _true(v: Any) -> bool:
    return str(v) in ("True", "true", "1")


def summarize(out: Path, class_names: list[str] | None = None, by: str = "folder", depth: int = 1) -> dict[str, Any]:
    """Counts over every row of the job: per class, and per group (``by``: folder or day)."""
    if by not in GROUPINGS:
        raise DataError(f"--by {by!r}: one of {', '.join(GROUPINGS)}")
    names = class_names if class_names is not None else class_names_of(out)
    n, errors, found = 0, 0, dict.fromkeys(names, 0)
    groups: dict[str, list[int]] = defaultdict(lambda: [0] * (3 + len(names)))  # images, errors, any, per class
    for r in read_rows(out, ["image_id", "error"] + [f"found_{c}" for c in names]):
        n += 1
        g = groups[group_of(r["image_id"], by, depth)]
        g[0] += 1
        if r["error"]:
            errors += 1
            g[1] += 1
            continue
        hit = [_true(r[f"found_{c}"]) for c in names]
        g[2] += any(hit)
        for j, (c, h) in enumerate(zip(names, hit)):
            found[c] += h
            g[3 + j] += h
    ok = max(n - errors, 1)
    return {"images": n, "errors": errors,
            "per_class": {c: {"images": k, "rate": round(k / ok, 6)} for c, k in found.items()},
            f"per_{by}": {k: _group(v, names) for k, v in sorted(groups.items())}}


def _group(v: list[int], names: list[str]) -> dict[str, Any]:
    ok = max(v[0] - v[1], 1)
    return {"images": v[0], "errors": v[1], "defect_rate": round(v[2] / ok, 6),
            "rate_per_class": {c: round(k / ok, 6) for c, k in zip(names, v[3:])}}
