"""Archive prediction on embedded Ray against the local engine, on the same bundle and strips (issue #41 goals):

- wall time of `predict --engine ray` (embedded instance, start-up and shutdown included) over the same job on
  `--engine local` (goal: <= 1.3 for 2,000 strips on 2 cores);
- memory: the peak resident memory of the whole process tree (driver, raylet, workers), sampled every 0.2 s,
  at N and at 10 N strips (goal: flat; run with --scale 10).

python bench/engine.py BUNDLE [--n 2000] [--scale 1] [--work /tmp/engine-bench] [--workers W]

The strips are synthetic 1600x256 images (steelseg synth), hard links to one pool, made once under --work.
Each job runs as its own `steelseg predict` process, one at a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_stream import strips


def tree_rss_mib(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2 ** 20


def job(bundle: str, images: Path, out: Path, engine: str, workers: int | None) -> dict:
    """One `steelseg predict --engine` process: wall seconds and the process tree's peak memory."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "steelseg.cli", "predict", bundle, str(images), "--out", str(out),
           "--engine", engine]
    if workers:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, samples = [0.0], []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            m = tree_rss_mib(proc.pid)
            peak[0] = max(peak[0], m)
            samples.append(m)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} job failed ({proc.returncode}): {err[-2000:]}")
    info = json.loads((out / "job.json").read_text())
    return {"engine": engine, "images": info["images"], "wall_s": round(wall, 2),
            "images_per_s": round(info["images"] / wall, 2), "peak_tree_mib": round(peak[0], 1),
            "engine_line": next((ln for ln in err.splitlines() if ln.startswith("ray:")), "")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--scale", type=int, default=1, help="also run Ray on n x scale strips (memory flat?)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/engine-bench"))
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    images = strips(args.work, args.n)
    local = job(args.bundle, images, args.work / "local", "local", None)
    print(json.dumps(local), flush=True)
    ray = job(args.bundle, images, args.work / "ray", "ray", args.workers)
    print(json.dumps(ray), flush=True)
    out = {"n": args.n, "local": local, "ray": ray, "ray_over_local_wall": round(ray["wall_s"] / local["wall_s"], 3)}
    if args.scale > 1:
        big = job(args.bundle, strips(args.work, args.n * args.scale), args.work / "ray-big", "ray", args.workers)
        print(json.dumps(big), flush=True)
        out.update(ray_big=big, memory_big_over_small=round(big["peak_tree_mib"] / ray["peak_tree_mib"], 3))
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
