"""The watcher's result log: one JSON line per image, appended and fsync'ed before the image is archived, so a
crash (kill -9, power) loses no row and a restart writes none twice.

A file is known by its key, its path under the watched folder with its size and modification time: the same name
written again later by the camera is a new image, the same file seen again after a restart is not. A last line
cut short by a crash is dropped when the log is opened (its image is predicted again).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from steelseg.errors import DataError

__all__ = ["ResultLog", "file_key"]


def file_key(rel: str, st: os.stat_result) -> str:
    """The identity of one written image: path under the watched folder, size, mtime in ns."""
    return f"{rel}|{st.st_size}|{st.st_mtime_ns}"


class ResultLog:
    """Append-only JSON lines (``results.jsonl``); :attr:`done` holds the keys already written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        self.dropped_tail = False
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._load()
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the watcher's life

    def _load(self) -> None:
        raw = self.path.read_bytes()
        keep = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
        if len(keep) != len(raw):  # a line cut by a crash: drop it, its image is predicted again
            with open(self.path, "r+b") as fh:
                fh.truncate(len(keep))
                fh.flush()
                os.fsync(fh.fileno())
            self.dropped_tail = True
        for n, line in enumerate(keep.decode("utf-8").splitlines(), 1):
            try:
                self.done.add(json.loads(line)["key"])
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{self.path}:{n}: not a result row written by steelseg watch; move the file "
                                "away or give another --out") from None

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and make it durable before returning (the caller archives the image only then)."""
        self.append_all([row])

    def append_all(self, rows: list[dict[str, Any]]) -> None:
        """Write rows and make them durable, with one fsync, before returning (a kill part way leaves whole rows
        and at most one cut-short last line, which the next start drops)."""
        self._fh.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.update(r["key"] for r in rows)

    def close(self) -> None:
        self._fh.close()
