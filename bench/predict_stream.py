"""Streaming `steelseg predict` at scale: peak memory on 5,000 strips against 500 (goal: within 1.2x), the
progress lines a log sees, and decoding the next images in a thread while the model runs (on / off).

python bench/predict_stream.py [--bundle runs/demo/bundle] [--n 5000] [--small 500] [--work /tmp/stream]

Each `steelseg predict` runs in its own process; its peak resident memory is the child's ru_maxrss.
The strips are synthetic 1600x256 JPEGs (steelseg synth), made once under --work.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def strips(work: Path, n: int, pool_size: int = 200) -> Path:
    """``n`` strips in ``work/strips-n`` (hard links to one pool of distinct images, made once)."""
    pool = work / "pool"
    if not (pool / "train_images").is_dir():
        subprocess.run([sys.executable, "-m", "steelseg.cli", "synth", str(pool), "--images", str(pool_size),
                        "--seed", "5"], check=True, stdout=subprocess.DEVNULL)
    src = sorted((pool / "train_images").iterdir())
    out = work / f"strips-{n}"
    if out.is_dir() and len(list(out.iterdir())) == n:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i in range(n):
        p = src[i % len(src)]
        (out / f"{i:05d}{p.suffix}").hardlink_to(p)
    return out


# Runs the CLI in this child and reports the child's own peak (RUSAGE_SELF) on stderr, even when it exits
_CHILD = ("import resource, runpy, sys\n"
          "sys.argv = ['steelseg'] + sys.argv[1:]\n"
          "try:\n    runpy.run_module('steelseg.cli', run_name='__main__')\n"
          "finally:\n    print(f'peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n")


def run(bundle: str, images: Path, out: Path, prefetch: str) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, stderr) of one `steelseg predict` in a fresh process (its own peak)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, "predict", bundle, str(images), "--out", str(out),
                           "--prefetch", prefetch], capture_output=True, text=True, check=False)
    secs = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"steelseg predict failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak = next(int(ln.split("=")[1]) for ln in reversed(proc.stderr.splitlines()) if ln.startswith("peak_rss_kib="))
    return secs, peak / 1024, proc.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "runs" / "demo" / "bundle"))
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--work", type=Path, default=Path("/tmp/stream"))
    ap.add_argument("--pool", type=int, default=200, help="distinct synthetic strips the folders link to")
    args = ap.parse_args()
    small, large = strips(args.work, args.small, args.pool), strips(args.work, args.n, args.pool)
    t_off, rss_small, _ = run(args.bundle, small, args.work / "out-small-off", "off")
    t_on, _, _ = run(args.bundle, small, args.work / "out-small-on", "on")
    t_large, rss_large, log = run(args.bundle, large, args.work / "out-large", "off")
    lines = [ln for ln in log.splitlines() if ln.startswith("predicted ")]
    print(f"peak memory: {args.small} strips {rss_small:.0f} MiB, {args.n} strips {rss_large:.0f} MiB, "
          f"ratio {rss_large / rss_small:.3f} (goal <= 1.2; each its own process's peak RSS)")
    print(f"decode in a thread on {args.small} strips: off {args.small / t_off:.2f} img/s, on {args.small / t_on:.2f} "
          f"img/s, ratio {t_off / t_on:.3f} (wall time of the whole command, model load included)")
    print(f"{args.n} strips: {t_large:.0f} s, {args.n / t_large:.2f} img/s; {len(lines)} progress lines, e.g.")
    for ln in lines[:2] + lines[-1:]:
        print("   ", ln)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
