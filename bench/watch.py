"""`steelseg watch` against `steelseg predict` on the same bundle and images, in one process (issue #40 goals):

- throughput on a backlog: watch --once images/s over predict images/s (goal: >= 0.9);
- latency on a live folder: median time from a file being complete (moved in) to its result row, over the
  median time of predicting one image (goal: < 2);
- memory on the backlog: resident memory at the end over resident memory after the first tenth (goal: flat).

python bench/watch.py BUNDLE [--n 2000] [--live 20] [--work /tmp/watch-bench]

The images are synthetic 1600x256 strips (steelseg synth), hard links to one pool, made once under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_stream import strips


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class _Rows:
    """Rows in OUT/results.jsonl so far, counting only the bytes added since the last look: reading the whole log
    every 0.2 s (as this bench did) costs more as it grows (25 MB at 10,000 rows) and slowed the watcher it
    measured, beside it on the same cores."""

    def __init__(self, out: Path) -> None:
        self.path, self.pos, self.n = out / "results.jsonl", 0, 0

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                chunk = fh.read()
        except FileNotFoundError:
            return 0
        self.pos += len(chunk)
        self.n += chunk.count(b"\n")
        return self.n


def backlog(bundle: str, images: Path, work: Path, threads: int | None) -> dict:
    from steelseg.inference.predict import predict_folder
    from steelseg.line.watch import WatchConfig, watch

    n = len(list(images.iterdir()))
    t0 = time.perf_counter()
    predict_folder(bundle, images, work / "predict", threads=threads)
    t_predict = time.perf_counter() - t0
    samples: list[tuple[int, float]] = []
    out = work / "watch-backlog"
    shutil.rmtree(out, ignore_errors=True)
    done = threading.Event()

    rows = _Rows(out)

    def sample() -> None:
        while not done.wait(0.2):
            samples.append((rows(), rss_mib()))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    stats = watch(WatchConfig(bundle, images, out, once=True, threads=threads, progress_every=1e9), say=lambda s: None)
    t_watch = time.perf_counter() - t0
    done.set()
    t.join()
    assert stats.images == n, (stats.images, n)
    early = [m for rows, m in samples if rows >= n // 10] or [rss_mib()]
    return {"images": n, "predict_ips": n / t_predict, "watch_ips": n / t_watch,
            "throughput_ratio": t_predict / t_watch, "rss_after_tenth_mib": early[0],
            "rss_peak_mib": max([m for _, m in samples] + [early[0]]),
            "memory_ratio": max([m for _, m in samples] + [early[0]]) / early[0]}


def live(bundle: str, pool: Path, work: Path, count: int, threads: int | None) -> dict:
    from steelseg.data.images import read_image
    from steelseg.inference.predictor import Predictor
    from steelseg.line.watch import WatchConfig, watch

    files = sorted(pool.iterdir())[:count]
    pred = Predictor.from_bundle(bundle, threads=threads)
    one = []
    for f in files[: min(5, count)] * 2:
        img = read_image(f, None)
        t0 = time.perf_counter()
        pred.predict([img])
        one.append(time.perf_counter() - t0)
    cam, out = work / "cam", work / "watch-live"
    for d in (cam, out):
        shutil.rmtree(d, ignore_errors=True)
    cam.mkdir(parents=True)
    rows = _Rows(out)
    stop = threading.Event()
    t = threading.Thread(target=lambda: watch(WatchConfig(bundle, cam, out, threads=threads, progress_every=1e9),
                                              stop, lambda s: None))
    t.start()
    try:
        time.sleep(1.0)
        for k, f in enumerate(files):
            tmp = cam / f".{k}.part"
            shutil.copyfile(f, tmp)
            os.replace(tmp, cam / f"{k:05d}{f.suffix}")  # complete at once, as a camera's rename
            deadline = time.time() + 60
            while rows() <= k:
                assert time.time() < deadline, "no row"
                time.sleep(0.005)
    finally:
        stop.set()
        t.join()
    lat = [json.loads(x)["latency_ms"] / 1000 for x in (out / "results.jsonl").read_text().splitlines()]
    return {"live_images": len(lat), "latency_median_s": statistics.median(lat),
            "predict_one_median_s": statistics.median(one),
            "latency_ratio": statistics.median(lat) / statistics.median(one)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--n", type=int, default=2000, help="backlog images (default 2000)")
    ap.add_argument("--live", type=int, default=20, help="images dropped one by one into a live folder")
    ap.add_argument("--pool", type=int, default=200, help="distinct synthetic strips the backlog links to")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/watch-bench"))
    a = ap.parse_args()
    images = strips(a.work, a.n, a.pool)
    res = {**backlog(a.bundle, images, a.work, a.threads),
           **live(a.bundle, a.work / "pool" / "train_images", a.work, a.live, a.threads)}
    for k, v in res.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    print(f"throughput watch/predict {res['throughput_ratio']:.2f} (goal >= 0.9); latency / one predict "
          f"{res['latency_ratio']:.2f} (goal < 2); memory end / after a tenth {res['memory_ratio']:.2f} (flat)")


if __name__ == "__main__":
    main()
