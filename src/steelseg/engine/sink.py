"""Where an archive job's rows go: ``OUT/rows/part-<run>-<n>.parquet`` (or ``.csv``), each shard written whole
(a temporary name, then renamed: a killed job leaves only complete shards), so ``--resume`` knows exactly which
images are done by reading the shards' ``image_id`` column; and ``submission.csv`` assembled from them."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from steelseg.errors import DataError
from steelseg.fsutil import TMP_TAG, atomic_write

__all__ = ["FORMATS", "ShardWriter", "done_ids", "read_rows", "shards", "write_submission"]

FORMATS = ("parquet", "csv")


def shards(out: Path) -> list[Path]:
    folder = out / "rows"
    return sorted(p for p in folder.glob("part-*") if p.suffix in (".parquet", ".csv")) if folder.is_dir() else []


def _read_shard(path: Path, cols: Sequence[str] | None = None) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=list(cols) if cols else None).to_pylist()
    with open(path, newline="") as fh:
        return [{k: r[k] for k in (cols or r)} for r in csv.DictReader(fh)]


def read_rows(out: Path, cols: Sequence[str] | None = None) -> Iterable[dict[str, Any]]:
    """Every row of the job, shard by shard."""
    for p in shards(out):
        yield from _read_shard(p, cols)


def done_ids(out: Path) -> set[str]:
    """Image ids already written (what ``--resume`` skips)."""
    return {r["image_id"] for r in read_rows(out, ["image_id"])}


class ShardWriter:
    """Buffers rows and writes a shard every ``rows_per_shard`` rows or ``seconds`` (whichever first)."""

    def __init__(self, out: Path, fmt: str, cols: Sequence[str], rows_per_shard: int = 1000,
                 seconds: float = 30.0) -> None:
        if fmt not in FORMATS:
            raise DataError(f"--format {fmt!r}: an archive job writes {' or '.join(FORMATS)}")
        self.folder = out / "rows"
        self.folder.mkdir(parents=True, exist_ok=True)
        for p in self.folder.glob(f".*{TMP_TAG}*"):  # a killed job's half shard: never a result
            p.unlink(missing_ok=True)
        self.fmt, self.cols, self.every, self.seconds = fmt, list(cols), rows_per_shard, seconds
        self.run = len({p.name.split("-")[1] for p in shards(out)})  # a resumed job's shards sort after
        self.buf: list[dict[str, Any]] = []
        self.n, self.written, self.t = 0, 0, time.monotonic()

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self.buf.extend(rows)
        if len(self.buf) >= self.every or time.monotonic() - self.t > self.seconds:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        path = self.folder / f"part-{self.run:04d}-{self.n:06d}.{self.fmt}"
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(self.buf).select(self.cols)
            with atomic_write(path, "wb") as fh:
                pq.write_table(table, fh)
        else:
            with atomic_write(path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=self.cols, lineterminator="\n")
                w.writeheader()
                w.writerows(self.buf)
        self.written += len(self.buf)
        self.n, self.buf, self.t = self.n + 1, [], time.monotonic()


def write_submission(out: Path, class_names: Sequence[str]) -> tuple[Path, int]:
    """``OUT/submission.csv`` (ImageId,EncodedPixels,ClassId, in shard order: streamed, memory flat) from the
    shards; error rows are left out and counted (returned), so an incomplete submission is never silent."""
    from steelseg.data import rle

    rle.allow_long_csv_fields()
    cols = ["image_id", "error"] + [f"rle_{c}" for c in class_names]
    errors = 0
    with atomic_write(out / "submission.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["ImageId", "EncodedPixels", "ClassId"])
        for r in read_rows(out, cols):
            errors += bool(r["error"])
            if not r["error"]:
                w.writerows([r["image_id"], r[f"rle_{c}"] or "", k] for k, c in enumerate(class_names, 1))
    return out / "submission.csv", errors
