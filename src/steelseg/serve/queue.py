"""The review queue of ``steelseg serve BUNDLE --queue DIR``: line images in a folder (dropped there by
the line, or uploaded through ``POST /v1/queue``), least certain first.

Each new image is predicted once and rated by :func:`steelseg.inference.uncertainty.image_priority`;
the queue lists the images not yet sent back through ``/v1/feedback``, most unsure first, with every
10th place drawn at random (:func:`~steelseg.inference.uncertainty.queue_order`). Scoring happens when
the page asks for the queue, for at most ``budget_s`` seconds per request (the rest is reported as
pending and scored on the next request), so a folder of thousands of images never blocks a page.

State kept in ``DIR/.steelseg-queue/``: the scores per bundle (``scores-<bundle>.json``: a restart does
not predict again) and the images already sent (``sent.json``). Images are named by clients only by
their id (the first 16 hex digits of their SHA-256), never by a path.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steelseg.fsutil import atomic_json, check_writable_dir
from steelseg.inference.uncertainty import Priority, queue_order

__all__ = ["IMAGE_SUFFIXES", "ReviewQueue", "image_id"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
STATE = ".steelseg-queue"


def image_id(data: bytes) -> str:
    """The id the queue and the feedback folder give an image: its content, not its name."""
    return hashlib.sha256(data).hexdigest()[:16]


def file_id(path: Path, chunk: int = 1 << 20) -> str:
    """:func:`image_id` of a file, hashed in chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


class ReviewQueue:
    def __init__(self, folder: Path, bundle_id: str, rate: Callable[[bytes, str], Priority],
                 random_every: int = 10, seed: int = 0, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.folder = check_writable_dir(folder)
        self.max_bytes = max_bytes  # a file larger than an upload may be is never read (stat first)
        self.state = check_writable_dir(self.folder / STATE)
        self.bundle_id = bundle_id
        self.rate = rate  # (image bytes, name) -> Priority; decodes and predicts (the service's lock inside)
        self.random_every, self.seed = random_every, seed
        self._files: dict[tuple[str, int, int], str] = {}  # (name, size, mtime_ns) -> id
        self._paths: dict[str, Path] = {}
        self.scores: dict[str, dict[str, Any]] = self._load(f"scores-{bundle_id}.json", {})
        self.sent: dict[str, str] = self._load("sent.json", {})
        self.errors: dict[str, str] = {}

    def use_bundle(self, bundle_id: str) -> None:
        """A new model serves: the queue is ordered by its own scores (rated again as they are needed; a model
        served before keeps its cache), not the old model's."""
        self.bundle_id = bundle_id
        self.scores = self._load(f"scores-{bundle_id}.json", {})
        self.errors = {k: v for k, v in self.errors.items() if k.startswith("size:")}  # a file's size stays

    def _load(self, name: str, default: Any) -> Any:
        path = self.state / name
        try:
            return json.loads(path.read_text()) if path.is_file() else default
        except (json.JSONDecodeError, OSError):
            return default  # a damaged cache is rebuilt: it only saves predictions

    def _scan(self) -> list[str]:
        ids = []
        for p in sorted(self.folder.iterdir()):
            if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
                continue
            st = p.stat()
            key = (p.name, st.st_size, st.st_mtime_ns)
            if st.st_size > self.max_bytes:  # refused from its size alone, like an upload over the limit
                self.errors[f"size:{p.name}"] = (f"{p.name}: {st.st_size / 2 ** 20:.0f} MB, over the "
                                                  f"{self.max_bytes / 2 ** 20:.0f} MB an image may be (--max-mb)")
                continue
            if key not in self._files:
                self._files[key] = file_id(p)
            self._paths[self._files[key]] = p
            ids.append(self._files[key])
        return list(dict.fromkeys(ids))

    def refresh(self, budget_s: float = 2.0) -> int:
        """Score new images for up to ``budget_s`` seconds; returns how many are still unscored."""
        t0 = time.perf_counter()
        # other workers of the service share the folder: take in what they scored and sent
        self.sent.update(self._load("sent.json", {}))
        for k, v in self._load(f"scores-{self.bundle_id}.json", {}).items():
            self.scores.setdefault(k, v)
        todo = [i for i in self._scan() if i not in self.scores and i not in self.sent and i not in self.errors]
        done = 0
        for i in todo:
            if done and time.perf_counter() - t0 > budget_s:
                break
            path = self._paths[i]
            try:
                pr = self.rate(path.read_bytes(), path.name)
            except Exception as exc:  # an unreadable file is shown as such, never silently dropped
                self.errors[i] = f"{path.name}: {exc}"
                continue
            self.scores[i] = {"name": path.name, "score": pr.score, "reason": pr.reason,
                              "signals": [{k: round(v, 4) for k, v in s.items()} for s in pr.signals]}
            done += 1
        if done:
            atomic_json(self.state / f"scores-{self.bundle_id}.json", self.scores)
        return len(todo) - done

    def items(self) -> list[dict[str, Any]]:
        """The unsent, scored images in review order, each with why it is there."""
        ids = [i for i in self.scores if i not in self.sent and i in self._paths]
        order = queue_order([self.scores[i]["score"] for i in ids], self.random_every, self.seed)
        out = []
        for pos, (k, drawn) in enumerate(order):
            s = self.scores[ids[k]]
            why = (f"drawn at random (one place in {self.random_every}), so reviewers also see confident images; "
                   f"{s['reason']}") if drawn else s["reason"]
            out.append({"id": ids[k], "position": pos + 1, "name": s["name"], "score": round(s["score"], 4),
                        "random": drawn, "reason": why, "signals": s["signals"]})
        return out

    def path(self, item_id: str) -> Path | None:
        if item_id not in self._paths:
            self._scan()
        return self._paths.get(item_id)

    def add(self, data: bytes, name: str) -> str:
        """An uploaded image, stored in the folder under its id (the original suffix kept)."""
        i = image_id(data)
        suffix = Path(name).suffix.lower()
        target = self.folder / (i + (suffix if suffix in IMAGE_SUFFIXES else ".png"))
        if i not in self._paths and not target.exists():
            tmp = self.folder / f".{target.name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(target)
        return i

    def mark_sent(self, data: bytes, stored: str) -> None:
        i = image_id(data)
        if i in self.scores or i in self._paths:
            self.sent.update(self._load("sent.json", {}))
            self.sent[i] = stored
            atomic_json(self.state / "sent.json", self.sent)

    def summary(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "sent": len(self.sent), "unreadable": sorted(self.errors.values())}

