"""steelseg predict --engine local|ray: an archive job (steelseg.engine), its flags and its printout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from steelseg.cli.common import device, table
from steelseg.errors import SteelsegError

__all__ = ["add_engine_args", "add_eval_engine_args", "evaluate_on_engine", "predict_archive_cmd", "register"]


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default=None, choices=["local", "ray"],
                   help="an archive job: rows per image in sharded OUT/rows/part-*.parquet (or --format csv), "
                        "resumable, bad images as error rows, then OUT/submission.csv and OUT/job.json. local: this "
                        "process; ray: a Ray actor pool (embedded here, or a cluster with --address). Without it, "
                        "today's single-process submission.csv")
    p.add_argument("--address", default=None, help="--engine ray: auto or HOST:PORT of a running cluster (default: "
                                                   "an embedded local instance, stopped after)")
    p.add_argument("--workers", type=int, default=None, help="--engine ray: actors, each loading the bundle once "
                                                              "(default: the cluster's CPUs // 2)")
    p.add_argument("--resume", action="store_true", help="--engine: predict only the images OUT has no row for")
    p.add_argument("--batch", type=int, default=8, help="--engine: images per model call (default 8)")
    p.add_argument("--shard-rows", type=int, default=1000, help="--engine: rows a shard (default 1000; one is also "
                                                                "written every 30 s): what a killed job predicts again")


def predict_archive_cmd(args: argparse.Namespace, bundle: Path, tta: bool | None) -> int:
    from steelseg.engine import predict_archive
    from steelseg.engine.options import EngineOptions

    if args.overlays or args.labels or args.recursive or args.on_error != "stop" or args.tile:
        raise SteelsegError("--engine jobs read folders recursively, write bad images as error rows and keep "
                            "the bundle's tiling: --overlays, --labels, --recursive, --on-error and --tile are for "
                            "the single-process predict")
    if min(args.batch, args.shard_rows, args.workers or 1) < 1:
        raise SteelsegError("--batch, --shard-rows and --workers must be >= 1")
    opts = EngineOptions(str(bundle), backend=args.backend, threads=args.threads, device=device(args.device), tta=tta,
                         batch=args.batch, address=args.address, workers=args.workers, shard_rows=args.shard_rows)
    res = predict_archive(args.images, args.out, opts, args.engine, args.format or "parquet", args.resume)
    rows = [(c, str(v["images"]), f"{v['rate']:.2%}") for c, v in res["per_class"].items()]
    print(table(["class", "images found", "rate"], rows))
    print(f"{res['images']} images in {args.out}/rows ({res['predicted_now']} now, {res['images_per_s']} images/s, "
          f"{res['resumed_from']} from before); wrote {res['submission']} and {args.out}/job.json")
    if res["errors"]:
        print(f"warning: {res['errors']} image(s) could not be predicted (error rows in {args.out}/rows): "
              "submission.csv has no rows for them", file=sys.stderr)
        return 3
    return 0


def evaluate_on_engine(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """steelseg evaluate --engine ray: the split predicted in parts by Ray tasks."""
    from steelseg.engine.evaluate import evaluate_on_ray
    from steelseg.engine.tasks import TaskOptions

    if args.workers is not None and args.workers < 1:
        raise SteelsegError(f"--workers {args.workers}: must be >= 1")
    spec = {"runs": [str(Path(r).resolve()) for r in args.runs], "tta": bool(args.tta), "device": device(args.device),
            "classifiers": [str(Path(c).resolve()) for c in args.classifier or []],
            "bundle": str(Path(args.bundle).resolve()) if args.bundle else None, "backend": args.backend}
    named = ([str(r) for r in args.runs], [str(c) for c in args.classifier or []])
    return evaluate_on_ray(spec, args.data, out, args.split, TaskOptions(args.address, args.workers), named=named)


def add_eval_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local (default): this process; ray: the split predicted in parts by Ray tasks (an embedded "
                        "instance, or a cluster with --address; the data on a file system every node shares), "
                        "merged into the same files")
    p.add_argument("--address", default=None, help="--engine ray: auto or HOST:PORT of a running cluster")
    p.add_argument("--workers", type=int, default=None, help="--engine ray: tasks at once (default: half the "
                   "cluster's CPUs); the split is cut into 4 parts a worker")


def cmd_job(args: argparse.Namespace) -> int:
    import json

    from steelseg.engine.summary import summarize
    from steelseg.fsutil import atomic_text

    if args.depth < 1:
        raise SteelsegError(f"--depth {args.depth}: must be >= 1")
    s = summarize(args.job, by=args.by, depth=args.depth)
    meta = args.job / "job.json"
    if meta.is_file():
        j = json.loads(meta.read_text())
        print(f"{args.job}: {j['engine']} engine, bundle {j['bundle']}, {j['images_per_s']} images/s in its last run"
              f"{'' if j.get('complete', True) else ' (incomplete: error rows)'}")
    names = list(s["per_class"])
    print(table(["class", "images found", "rate"],
                [(c, str(v["images"]), f"{v['rate']:.2%}") for c, v in s["per_class"].items()]))
    print()
    groups = s[f"per_{args.by}"]
    rows = [(g, str(v["images"]), str(v["errors"]), f"{v['defect_rate']:.2%}",
             *(f"{v['rate_per_class'][c]:.2%}" for c in names)) for g, v in groups.items()]
    print(table([args.by, "images", "errors", "any defect", *names], rows))
    print(f"{s['images']} images, {s['errors']} error row(s)")
    if args.json:
        atomic_text(args.json, json.dumps(s, indent=2))
        print(f"wrote {args.json}")
    return 0


def register(sub: Any) -> None:
    """Add ``steelseg job``."""
    p = sub.add_parser("job", help="what an archive job (predict --engine) found: per class, per folder or day",
                       description="Read an archive job's rows back (OUT/rows/*.parquet|csv, written by `steelseg "
                                   "predict ... --engine local|ray --out OUT`; only the id, error and found "
                                   "columns are read) and print the images found per class, and per folder of the "
                                   "source or per day (the first date in each image's path: 2026-03-14, "
                                   "2026_03_14 or 20260314) the images, error rows and defect rates.",
                       epilog="examples:\n  steelseg job jobs/q3                      # per top-level folder\n"
                              "  steelseg job jobs/q3 --by day --json q3-days.json\n"
                              "  steelseg job jobs/q3 --depth 2              # per line/coil folder",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", type=Path, help="the job's folder (predict's --out)")
    p.add_argument("--by", default="folder", choices=["folder", "day"], help="group per folder (default) or day")
    p.add_argument("--depth", type=int, default=1, help="--by folder: how many folder levels make a group "
                   "(default 1, the source's top-level folders)")
    p.add_argument("--json", type=Path, default=None, help="also write the counts as JSON")
    p.set_defaults(func=cmd_job, reads={})
