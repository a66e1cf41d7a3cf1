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


def _drift(path: Path | None) -> Any:
    from steelseg.drift import DriftConfig
    from steelseg.schema import build, load_yaml

    if path is None:
        return DriftConfig()
    if not path.is_file():
        raise SteelsegError(f"--drift {path}: no such file (deploy/drift.yaml is an example)")
    cfg = build(DriftConfig, load_yaml(path.read_text(), str(path)) or {}, f"{path}: ")
    if cfg.window < 10 or not 0 <= cfg.warn <= cfg.alert or cfg.min_reference < 1:
        raise SteelsegError(f"{path}: window must be >= 10, 0 <= warn <= alert, min_reference >= 1")
    return cfg


def cmd_monitor(args: argparse.Namespace) -> int:
    from steelseg.drift import describe
    from steelseg.line.monitor import monitor_folder

    r = monitor_folder(args.folder, args.bundle, _drift(args.drift))
    print(f"{r['images']} image(s) against {r['reference_images']} reference images, windows of {r['window']}")
    for v in r["windows"]:
        a, b = v["images"]
        print(f"  images {a}-{b}: {describe(v['rows'])}")
    if r["latest"]:
        print(f"latest {min(r['images'], r['window'])} images: {describe(r['latest'])}")
    print(f"wrote {args.folder / 'monitor.json'}" + (f" and {args.folder / 'monitor.png'}" if r["windows"] else ""))
    return 0


def resolve_bundle(value: str, registry: str | None) -> tuple[str, str | None]:
    """(local bundle folder, the models:/ URI it came from or None): a registry URI is fetched once."""
    from steelseg.line.registry import fetch, is_model_uri

    if not is_model_uri(value):
        return value, None
    path, version = fetch(value, registry)
    print(f"{value}: version {version} ({path})", flush=True)
    return str(path), value


def cmd_register(args: argparse.Namespace) -> int:
    from steelseg.line.registry import default_registry_uri, register

    version = register(args.bundle, args.name, args.registry)
    print(f"registered {args.bundle} as version {version} of {args.name} in {args.registry or default_registry_uri()}; "
          f"make it the champion with: steelseg promote {args.name} --candidate {version} --gate DATA")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from steelseg.line.registry import promote

    if args.tolerance < 0:
        raise SteelsegError("--tolerance must be >= 0")
    d = promote(args.name, args.candidate, args.gate, args.tolerance, args.registry)
    c = d["candidate_score"]
    print(f"candidate v{d['candidate']}: Kaggle Dice {c['dice']:.4f}, missed {len(c['missed'])} of {c['defective']} "
          f"defective images, {c['false_alarms']} false alarm(s)")
    if "champion_score" in d:
        b = d["champion_score"]
        print(f"champion  v{d['champion']}: Kaggle Dice {b['dice']:.4f}, missed {len(b['missed'])} of "
              f"{b['defective']} defective images, {b['false_alarms']} false alarm(s)")
    print(("PROMOTED" if d["promoted"] else "REFUSED") + f": {d['reason']}")
    return 0 if d["promoted"] else 4


def cmd_rollback(args: argparse.Namespace) -> int:
    from steelseg.line.registry import rollback

    old, new = rollback(args.name, args.registry)
    print(f"{args.name}: champion moved back from version {old} to version {new}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from steelseg.line.watch import WatchConfig, watch

    if args.settle < 0 or args.grace < 0 or args.batch < 1:
        raise SteelsegError("--settle and --grace must be >= 0 and --batch >= 1")
    if args.archive is not None and args.recursive and args.in_dir.resolve() in args.archive.resolve().parents:
        raise SteelsegError(f"--archive {args.archive}: inside IN_DIR, which --recursive watches; put it elsewhere")
    bundle, follow = resolve_bundle(args.bundle, args.registry)
    cfg = WatchConfig(bundle, args.in_dir, args.out, archive=args.archive, overlays=args.overlays,
                      recursive=args.recursive, settle=args.settle, grace=args.grace, poll=args.poll,
                      once=args.once, batch=args.batch, max_images=args.max_images, backend=args.backend,
                      threads=args.threads, device=device(args.device), progress_every=args.progress_every,
                      drift=_drift(args.drift), metrics_port=args.metrics_port, follow=follow,
                      registry=args.registry, check_every=args.check_every)
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
    p.add_argument("bundle", help="bundle folder (steelseg tune / bundle / export), or models:/LINE@champion: the "
                   "registry's champion, followed: a newly promoted version takes over between two images")
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
    p.add_argument("--drift", type=Path, default=None, metavar="YAML",
                   help="drift thresholds (window, warn, alert, min_reference; deploy/drift.yaml): judged against "
                        "the bundle's reference.json every window of images, said on stderr, kept in OUT/drift.json")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (images, latency, defect rate, "
                        "drift per signal; deploy/prometheus/steelseg-alerts.yml alerts on them)")
    p.add_argument("--registry", default=None, metavar="URI",
                   help="MLflow registry of models:/ bundles (default: sqlite ./mlruns/mlflow.db)")
    p.add_argument("--check-every", type=float, default=30.0, metavar="S",
                   help="seconds between looks at the registry for a new champion (models:/...@champion)")
    add_backend_args(p)
    p.set_defaults(func=cmd_watch, reads={"bundle": False, "in_dir": False})

    p = sub.add_parser("monitor", help="drift of a watched line, window by window, against the bundle's reference",
                       description="Read FOLDER/results.jsonl (steelseg watch --out FOLDER) and judge each window of "
                                   "images against the bundle's reference.json: brightness, contrast, size, and per "
                                   "class the image score and the defect rate, as excess PSI (steelseg/drift.py). "
                                   "Writes FOLDER/monitor.json and FOLDER/monitor.png.")
    p.add_argument("folder", type=Path, help="a steelseg watch --out folder")
    p.add_argument("--bundle", default=None, help="the bundle whose reference to use (default: the one watched)")
    p.add_argument("--drift", type=Path, default=None, metavar="YAML", help="thresholds, as for watch")
    p.set_defaults(func=cmd_monitor)
    _register_registry(sub)


def _register_registry(sub: Any) -> None:
    reg = "MLflow registry URI (default: the local sqlite store ./mlruns/mlflow.db, as training's tracking)"
    p = sub.add_parser("register", help="record a bundle as a new version of a line's model (MLflow registry)",
                       description="Log BUNDLE with its tuned scores and register it as a new version of the "
                                   "line's model NAME. It serves only once promoted (steelseg promote).")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--name", required=True, help="the line's model name, e.g. line2")
    p.add_argument("--registry", default=None, metavar="URI", help=reg)
    p.set_defaults(func=cmd_register)
    p = sub.add_parser("promote", help="make a version the champion, only if it passes the gate",
                       description="Score the candidate version and the champion on the gate sets (labelled images, "
                                   "reviewed corrections) and move the champion alias only when the candidate "
                                   "misses no defective image the champion finds and its Kaggle Dice is not lower "
                                   "by more than --tolerance. The decision and both scores are kept with the "
                                   "version. Exit 0 when promoted, 4 when refused.")
    p.add_argument("name", help="the line's model name")
    p.add_argument("--candidate", type=int, required=True, help="the version to promote")
    p.add_argument("--gate", action="append", required=True, type=Path,
                   help="labelled dataset to score on (any layout); repeat for several (e.g. --gate data/feedback)")
    p.add_argument("--tolerance", type=float, default=0.005, help="Kaggle Dice the candidate may lose (default 0.005)")
    p.add_argument("--registry", default=None, metavar="URI", help=reg)
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rollback", help="move the champion back to the version before",
                       description="Move the champion alias of NAME back to the champion before the current one.")
    p.add_argument("name", help="the line's model name")
    p.add_argument("--registry", default=None, metavar="URI", help=reg)
    p.set_defaults(func=cmd_rollback)
