"""``steelseg watch``: predict every image that appears in a folder (and the backlog already there, oldest first).

A file is read once it is complete: closed after writing or moved in (inotify, through the ``watchdog``
library), or, where no such event comes (``--poll`` on a network share, the backlog), once its size and
modification time stayed unchanged for ``settle`` seconds. Each result is one row of the append-only
:class:`~steelseg.line.results.ResultLog`, made durable before the image is archived (``archive``) or left in
place. A file that cannot be read as an image is moved to ``OUT/quarantine`` with its reason once it has stopped
changing for ``grace`` seconds (earlier, it may still be being written); it never stops the watcher. ``stop`` (set
by SIGTERM in the CLI) ends the watcher after the images in hand.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data.images import IMAGE_EXTS, read_image
from steelseg.drift import DriftConfig, DriftMonitor, describe, image_signals, worst
from steelseg.errors import DataError
from steelseg.fsutil import atomic_json
from steelseg.inference.found import per_class
from steelseg.line.results import ResultLog, file_key

__all__ = ["WatchConfig", "WatchStats", "watch"]

PARTIAL = (".part", ".tmp", ".crdownload", ".partial", "~")  # names writers use until a file is complete


@dataclass
class WatchConfig:
    bundle: str
    in_dir: Path
    out: Path
    archive: Path | None = None  # move each processed image here (same path below it); None: leave in place
    overlays: bool = False  # OUT/overlays/<id>.png
    recursive: bool = False
    settle: float = 0.5  # seconds unchanged that make a file complete when no close / move event says so
    grace: float = 10.0  # seconds unchanged before an unreadable file is quarantined
    poll: bool = False  # poll the folder instead of inotify (network shares, some container mounts)
    once: bool = False  # the backlog only, then exit
    batch: int = 4  # images predicted together when several are ready (never waits to fill a batch)
    rescan: float = 30.0  # seconds between full listings (events can be lost when the kernel's queue overflows)
    max_images: int | None = None  # stop after this many new rows (benchmarks, tests)
    backend: str | None = None
    threads: int | None = None
    tta: bool | None = None
    device: str = "cpu"
    progress_every: float = 10.0  # seconds between progress lines on stderr
    drift: DriftConfig = field(default_factory=DriftConfig)  # judged against the bundle's reference.json
    metrics_port: int | None = None  # Prometheus /metrics on 127.0.0.1:PORT (steelseg.line.metrics)
    follow: str | None = None  # models:/LINE@champion: switch to a newly promoted version between two batches
    registry: str | None = None  # its MLflow registry URI (None: the local default)
    check_every: float = 30.0  # seconds between looks at the registry


@dataclass
class WatchStats:
    images: int = 0  # new rows written
    already: int = 0  # files whose row a previous run wrote (archived now when archiving)
    quarantined: int = 0
    started: float = field(default_factory=time.time)
    predict_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds from complete to row written, per image

    def line(self, waiting: int) -> str:
        dt = max(time.time() - self.started, 1e-9)
        return (f"watch: {self.images} image(s) ({self.images / dt:.2f}/s), {waiting} waiting, "
                f"{self.quarantined} quarantined")


class _Inbox:
    """Candidate files and when each became complete (None: not yet); fed by events and listings."""

    def __init__(self, cfg: WatchConfig, skip: list[Path]) -> None:
        self.cfg, self.skip = cfg, [p.resolve() for p in skip]
        self.lock = threading.Lock()
        self.seen: dict[Path, tuple[int, int, float, float | None]] = {}  # size, mtime_ns, since, complete at

    def wanted(self, path: Path) -> bool:
        name = path.name
        if name.startswith(".") or name.endswith(PARTIAL) or path.suffix.lower() not in IMAGE_EXTS:
            return False
        rp = path.resolve()
        if any(rp == s or s in rp.parents for s in self.skip):
            return False
        return self.cfg.recursive or path.parent.resolve() == self.cfg.in_dir.resolve()

    def touch(self, path: Path, complete: bool = False) -> None:
        if not self.wanted(path):
            return
        with self.lock:
            old = self.seen.get(path)
            at = time.monotonic() if complete else (old[3] if old else None)
            self.seen[path] = (old[0], old[1], old[2], at) if old else (-1, -1, time.monotonic(), at)

    def drop(self, path: Path) -> None:
        with self.lock:
            self.seen.pop(path, None)

    def list_folder(self, done: Callable[[Path], bool] = lambda p: False) -> None:
        """Add the folder's files; ``done`` leaves out those already in the log (left in place)."""
        it = self.cfg.in_dir.rglob("*") if self.cfg.recursive else self.cfg.in_dir.iterdir()
        for p in it:
            if p not in self.seen and self.wanted(p) and p.is_file() and not done(p):
                self.touch(p)

    def ready(self) -> list[tuple[Path, float]]:
        """(path, when it became complete), oldest file first."""
        now, out = time.monotonic(), []
        with self.lock:
            for path, (size, mtime, since, at) in list(self.seen.items()):
                try:
                    st = path.stat()
                except OSError:  # gone (moved away, deleted)
                    del self.seen[path]
                    continue
                if (st.st_size, st.st_mtime_ns) != (size, mtime):
                    first = size < 0  # first look: a backlog file counts as unchanged since its mtime
                    since = now - max(0.0, time.time() - st.st_mtime) if first else now
                    at = at if first else None  # written again after a close: wait again
                    self.seen[path] = (st.st_size, st.st_mtime_ns, since, at)
                if at is not None or now - since >= self.cfg.settle:
                    out.append((st.st_mtime_ns, path, at if at is not None else now))
        return [(p, at) for _, p, at in sorted(out)]

    def retry(self, path: Path) -> None:
        with self.lock:
            if path in self.seen:
                size, mtime, _, _ = self.seen[path]
                self.seen[path] = (size, mtime, time.monotonic(), None)


def _observer(inbox: _Inbox, cfg: WatchConfig) -> Any:
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver
    except ImportError as exc:
        raise DataError(f"steelseg watch needs the watchdog library: pip install 'steelseg[line]' ({exc})") from None

    class Handler(FileSystemEventHandler):
        def on_created(self, event: Any) -> None:
            if not event.is_directory:
                inbox.touch(Path(event.src_path))

        def on_modified(self, event: Any) -> None:
            if not event.is_directory:
                inbox.touch(Path(event.src_path))

        def on_closed(self, event: Any) -> None:  # closed after writing: complete
            inbox.touch(Path(event.src_path), complete=True)

        def on_moved(self, event: Any) -> None:  # renamed into place: complete (writers' .part -> .png)
            if not event.is_directory:
                inbox.drop(Path(event.src_path))
                inbox.touch(Path(event.dest_path), complete=True)

    obs = (PollingObserver(timeout=max(cfg.settle / 2, 0.1)) if cfg.poll else Observer())
    obs.schedule(Handler(), str(cfg.in_dir), recursive=cfg.recursive)
    obs.start()
    return obs


def _move(src: Path, root: Path, rel: str) -> Path:
    """``src`` moved to ``root/rel`` (a free name beside it when taken: the camera reused a name)."""
    dst = root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    k = 1
    while dst.exists():
        dst = root / Path(rel).with_name(f"{Path(rel).stem}-{k}{Path(rel).suffix}")
        k += 1
    shutil.move(str(src), str(dst))
    return dst


def _row(key: str, rel: str, pred: Any, names: list[str], latency: float, signals: dict[str, Any],
         bundle: str) -> dict[str, Any]:
    classes = {name: {"score" if k == "gate" else k: v for k, v in f.items()}  # the log calls the gate "score"
               for name, f in per_class(pred, names).items()}
    h, w = pred.masks.shape[:2]
    return {"key": key, "id": rel, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "width": w, "height": h, "skipped_by_gate": bool(pred.skipped), "classes": classes,
            "input": {"brightness": round(signals["brightness"], 3), "contrast": round(signals["contrast"], 3)},
            "latency_ms": round(latency * 1000, 1), "bundle": bundle}


class _Watcher:
    def __init__(self, cfg: WatchConfig, stop: threading.Event, say: Callable[[str], None]) -> None:
        from steelseg.inference.predictor import Predictor

        self.cfg, self.stop, self.say = cfg, stop, say
        self.predictor = Predictor.from_bundle(cfg.bundle, device=cfg.device, tta=cfg.tta, backend=cfg.backend,
                                               threads=cfg.threads)
        self.log = ResultLog(cfg.out / "results.jsonl")
        if self.log.dropped_tail:
            say(f"{self.log.path}: its last row was cut short (the watcher was killed while writing it); "
                "dropped, that image is predicted again")
        self.stats = WatchStats()
        self.monitor = _monitor(cfg, say)
        self.metrics = None
        if cfg.metrics_port is not None:
            from steelseg.line.metrics import WatchMetrics

            self.metrics = WatchMetrics(cfg.metrics_port, self.monitor)
        if cfg.overlays:
            (cfg.out / "overlays").mkdir(parents=True, exist_ok=True)
        skip = [cfg.out] + ([cfg.archive] if cfg.archive else [])
        self.inbox = _Inbox(cfg, skip)
        from concurrent.futures import ThreadPoolExecutor

        self.reader = ThreadPoolExecutor(1, thread_name_prefix="steelseg-watch-read")

    def rel(self, path: Path) -> str:
        return path.relative_to(self.cfg.in_dir).as_posix()

    def done_in_place(self, path: Path) -> bool:
        """Already in the log and staying where it is (no archive): not looked at again on a listing. With an
        archive a logged file still there (killed before it moved) is listed, and moved."""
        if self.cfg.archive is not None:
            return False
        try:
            return file_key(self.rel(path), path.stat()) in self.log.done
        except OSError:
            return True

    def finish(self, path: Path) -> None:
        self.inbox.drop(path)
        if self.cfg.archive is not None:
            _move(path, self.cfg.archive, self.rel(path))

    def quarantine(self, path: Path, reason: str) -> None:
        self.inbox.drop(path)
        dst = _move(path, self.cfg.out / "quarantine", self.rel(path))
        dst.with_name(dst.name + ".reason.txt").write_text(reason + "\n")
        self.stats.quarantined += 1
        if self.metrics is not None:
            self.metrics.quarantined.inc()
        self.say(f"quarantined {self.rel(path)}: {reason}")

    def load(self, ready: list[tuple[Path, float]]) -> list[tuple[Path, str, np.ndarray, float]]:
        """Read the ready files not yet in the log; unreadable ones wait for ``grace``, then go to quarantine."""
        out = []
        for path, at in ready:
            try:
                st = path.stat()
            except OSError:
                self.inbox.drop(path)
                continue
            key = file_key(self.rel(path), st)
            if key in self.log.done:  # written before a restart: not again
                self.stats.already += 1
                self.finish(path)
                continue
            try:
                out.append((path, key, read_image(path, None), at))
            except DataError as exc:
                if time.time() - st.st_mtime < self.cfg.grace:
                    self.inbox.retry(path)  # may still be being written
                else:
                    self.quarantine(path, str(exc))
        return out

    def run_batch(self, items: list[tuple[Path, str, np.ndarray, float]]) -> None:
        from steelseg.inference.predict import write_overlay

        t0 = time.perf_counter()
        preds = self.predictor.predict([img for _, _, img, _ in items])
        self.stats.predict_seconds += time.perf_counter() - t0
        done = []
        for (path, key, img, at), pred in zip(items, preds):
            latency = time.monotonic() - at
            signals = image_signals(img, pred.probs, pred.masks)
            done.append((path, pred, signals, latency,
                         _row(key, self.rel(path), pred, self.predictor.class_names, latency, signals,
                              self.cfg.bundle)))
        self.log.append_all([row for *_, row in done])  # durable, one fsync a batch, before any image moves
        for path, pred, signals, latency, row in done:
            if self.metrics is not None:
                self.metrics.image({n: c["found"] for n, c in row["classes"].items()}, latency)
            self.judge(signals)
            if self.cfg.overlays:
                write_overlay(self.cfg.out / "overlays", self.rel(path), path, pred.masks, None)
            self.finish(path)
            self.stats.images += 1
            self.stats.latencies.append(latency)

    def follow(self) -> None:
        """A newly promoted champion takes over: loaded and checked first, so the old one serves until then."""
        from steelseg.inference.predictor import Predictor
        from steelseg.line.registry import fetch

        path, version = fetch(self.cfg.follow, self.cfg.registry)
        if str(path) == str(self.cfg.bundle):
            return
        try:
            new = Predictor.from_bundle(path, device=self.cfg.device, tta=self.cfg.tta, backend=self.cfg.backend,
                                        threads=self.cfg.threads)
            new.predict([np.zeros((64, 64), np.uint8)])  # it runs before it takes over
        except Exception as exc:  # noqa: BLE001 - a broken version must not stop the line
            self.say(f"{self.cfg.follow}: version {version} did not load ({exc}); staying on {self.cfg.bundle}")
            return
        if new.class_names != self.predictor.class_names:
            self.say(f"{self.cfg.follow}: version {version} has classes {new.class_names}, not "
                     f"{self.predictor.class_names}; staying on {self.cfg.bundle}")
            return
        self.predictor, self.cfg.bundle = new, str(path)
        self.monitor = _monitor(self.cfg, self.say)
        if self.metrics is not None:
            self.metrics.drift.monitor = self.monitor
        self.say(f"{self.cfg.follow}: switched to version {version} ({path})")

    def judge(self, signals: dict[str, Any]) -> None:
        """Feed the drift monitor; at the end of each window, say and store its verdict (OUT/drift.json)."""
        if self.metrics is not None:
            verdict = self.metrics.drift.add(signals)  # the gauges show the latest window, sliding
        elif self.monitor is not None:
            verdict = self.monitor.add(signals)
        else:
            return
        if verdict is None:
            return
        level = worst(verdict["rows"])
        a, b = verdict["images"]
        if level in ("warn", "alert"):
            self.say(f"drift {level} over images {a}-{b}: {describe(verdict['rows'])}")
        atomic_json(self.cfg.out / "drift.json", {"window": self.cfg.drift.window, "verdicts": self.monitor.verdicts})

    def step(self) -> bool:
        """One pass: the ready files in batches; False when nothing was ready."""
        ready = self.inbox.ready()
        if not ready:
            return False
        chunks = [ready[k:k + self.cfg.batch] for k in range(0, len(ready), self.cfg.batch)]
        nxt = self.reader.submit(self.load, chunks[0])
        for k in range(len(chunks)):
            items = nxt.result()
            if k + 1 < len(chunks):  # the next batch is read while this one is predicted (a backlog's pace)
                nxt = self.reader.submit(self.load, chunks[k + 1])
            if items:
                self.run_batch(items)
            if self.stop.is_set() or self.full():
                nxt.result()  # read but not predicted: still in the inbox, predicted on the next pass or run
                break
        return True

    def full(self) -> bool:
        return self.cfg.max_images is not None and self.stats.images >= self.cfg.max_images


def _monitor(cfg: WatchConfig, say: Callable[[str], None]) -> DriftMonitor | None:
    from steelseg.inference.reference import read_reference

    ref = read_reference(cfg.bundle)
    if ref is None:
        say(f"{cfg.bundle}: no reference.json, so drift is not judged (steelseg tune or fit writes one)")
        return None
    if ref.images < cfg.drift.min_reference:
        say(f"{cfg.bundle}/reference.json: {ref.images} reference images, fewer than {cfg.drift.min_reference}: "
            "drift is reported but never alerted (tune on more validation images)")
    return DriftMonitor(ref, cfg.drift)


def watch(cfg: WatchConfig, stop: threading.Event | None = None,
          say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> WatchStats:
    """Predict the backlog, then every image that arrives, until ``stop`` is set (or the backlog is done with
    ``once``, or ``max_images`` rows are written)."""
    if not cfg.in_dir.is_dir():
        raise DataError(f"{cfg.in_dir}: no such folder to watch")
    stop = stop or threading.Event()
    w = _Watcher(cfg, stop, say)
    obs = None if cfg.once else _observer(w.inbox, cfg)
    atomic_json(cfg.out / "watch.json", {"bundle": str(Path(cfg.bundle).resolve()), "in_dir": str(cfg.in_dir.resolve()),
                                         "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    w.inbox.list_folder(w.done_in_place)
    last_scan = last_line = last_look = time.monotonic()
    try:
        while not stop.is_set() and not w.full():
            busy = w.step()
            now = time.monotonic()
            if cfg.follow and now - last_look >= cfg.check_every:
                w.follow()
                last_look = now
            if cfg.once and not busy and not w.inbox.seen:
                break
            if now - last_scan >= cfg.rescan:
                w.inbox.list_folder(w.done_in_place)
                last_scan = now
            if now - last_line >= cfg.progress_every:
                say(w.stats.line(len(w.inbox.seen)))
                last_line = now
            if not busy:
                stop.wait(0.02)
    finally:
        if obs is not None:
            obs.stop()
            obs.join(timeout=5)
        if w.metrics is not None:
            w.metrics.close()
        w.reader.shutdown(wait=True)
        w.log.close()
    say(w.stats.line(len(w.inbox.seen)))
    return w.stats
