"""steelseg watch: the hot folder on the line."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from steelseg.cli.common import add_backend_args, device
from steelseg.errors import SteelsegError

WATCH_EPILOG = """results (OUT/results.jsonl, one JSON line per image, appended and made durable before the
image is archived): key (path|size|mtime_ns), id (path under IN_DIR), time (UTC), width, height,
skipped_by_gate, latency_ms (from the file being complete to its row), and per class: found, area,
score (the gate's probability, null without a gate), max_probability, rle (Kaggle RLE, "" when empty).

kill -9 and restart: no row lost, none written twice (a row cut short by the kill is dropped and its
image predicted again). SIGTERM or Ctrl-C: the images in hand are finished, then it exits 0.

examples:
  steelseg watch bundles/line2 /mnt/camera2 --out runs/line2 --archive /mnt/camera2-done
  steelseg watch bundles/line2 /mnt/share/cam --out runs/cam --poll --settle 2   # a network share
  steelseg watch bundles/line2 data/backlog --out runs/backlog --once            # the backlog, then exit
"""


def cmd_watch(args: argparse.Namespace) -> int:
    from steelseg.line.watch import WatchConfig, watch

    if args.settle < 0 or args.grace < 0 or args.batch < 1:
        raise SteelsegError("--settle and --grace must be >= 0 and --batch >= 1")
    if args.archive is not None and args.recursive and args.in_dir.resolve() in args.archive.resolve().parents:
        raise SteelsegError(f"--archive {args.archive}: inside IN_DIR, which --recursive watches; put it elsewhere")
    cfg = WatchConfig(str(args.bundle), args.in_dir, args.out, archive=args.archive, overlays=args.overlays,
                      recursive=args.recursive, settle=args.settle, grace=args.grace, poll=args.poll,
                      once=args.once, batch=args.batch, max_images=args.max_images, backend=args.backend,
                      threads=args.threads, device=device(args.device), progress_every=args.progress_every)
    stop = threading.Event()
    said: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        said.append(signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    print(f"watching {args.in_dir} with {args.bundle}: results in {args.out / 'results.jsonl'}"
          + ("" if args.once else " (SIGTERM or Ctrl-C to stop)"), flush=True)
    stats = watch(cfg, stop)
    why = f"stopped by {said[0]}" if said else "done"
    print(f"{why}: {stats.images} image(s) predicted, {stats.already} done before, {stats.quarantined} "
          f"quarantined (in {args.out / 'quarantine'})", flush=True)
    return 0


def register(sub: Any) -> None:
    """Add this family's sub-commands to ``steelseg``'s sub-parsers."""
    p = sub.add_parser("watch", help="predict every image that appears in a folder (a hot folder on the line)",
                       description="Predict the images already in IN_DIR (oldest first), then each one that "
                                   "appears, once it is complete (closed after writing or moved in; else unchanged "
                                   "for --settle seconds). Unreadable files go to OUT/quarantine with the reason.",
                       epilog=WATCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder (steelseg tune / bundle / export)")
    p.add_argument("in_dir", type=Path, help="folder the camera writes images into")
    p.add_argument("--out", type=Path, required=True, help="output folder: results.jsonl, overlays/, quarantine/")
    p.add_argument("--archive", type=Path, default=None,
                   help="move each processed image here (its path below IN_DIR kept); default: leave it in place")
    p.add_argument("--overlays", action="store_true", help="write OUT/overlays/<id>.png for each image")
    p.add_argument("--recursive", action="store_true", help="watch subfolders too (the id is the path below IN_DIR)")
    p.add_argument("--settle", type=float, default=0.5, metavar="S",
                   help="seconds a file's size and time must stay unchanged when no close / move event says it "
                        "is complete (the backlog, --poll); default 0.5")
    p.add_argument("--grace", type=float, default=10.0, metavar="S",
                   help="seconds an unreadable file may still change before it is quarantined (default 10)")
    p.add_argument("--poll", action="store_true",
                   help="poll the folder instead of kernel events (network shares, some container mounts)")
    p.add_argument("--once", action="store_true", help="predict what is there, then exit")
    p.add_argument("--batch", type=int, default=4, help="images predicted together when several are ready (default 4)")
    p.add_argument("--max-images", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--progress-every", type=float, default=10.0, metavar="S",
                   help="seconds between progress lines on stderr (default 10)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    add_backend_args(p)
    p.set_defaults(func=cmd_watch, reads={"bundle": False, "in_dir": False})
