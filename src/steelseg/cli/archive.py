"""steelseg predict --engine local|ray: an archive job (steelseg.engine), its flags and its printout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steelseg.cli.common import device, table
from steelseg.errors import SteelsegError

__all__ = ["add_engine_args", "predict_archive_cmd"]


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
