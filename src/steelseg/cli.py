"""The ``steelseg`` command: thin subcommands over the library functions.

Each subcommand imports what it needs when it runs, so ``steelseg --help`` and the data commands
start fast without loading torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from steelseg.errors import SteelsegError

EPILOG = """examples:
  steelseg synth data/synth --images 200          # a Severstal-format synthetic dataset
  steelseg info data/synth                        # what is in it
  steelseg folds data/synth --k 5 --out data/synth/folds.csv
  steelseg convert ../shared/data/neu_seg data/neu_kaggle   # any layout -> Kaggle layout
"""


def _class_names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="dataset folder: Kaggle layout (train.csv + train_images/) "
                   "or mask-folder layout (JPEGImages/ + SegmentationClass/)")
    p.add_argument("--class-names", type=str, default=None,
                   help="comma-separated class names (default: classes.txt in the dataset, else class1..classC)")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_synth(args: argparse.Namespace) -> int:
    from steelseg.synth import SynthConfig, make_dataset

    cfg = SynthConfig(images=args.images, seed=args.seed, height=args.height, width=args.width,
                      defect_free=args.defect_free)
    out = make_dataset(args.out, cfg, progress=sys.stderr.isatty())
    print(f"wrote {cfg.images} synthetic {cfg.width}x{cfg.height} images to {out} (seed {cfg.seed})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from steelseg.datasets import open_dataset

    ds = open_dataset(args.data, _class_names(args.class_names), progress=sys.stderr.isatty())
    s = ds.summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"dataset     {s['root']} ({s['layout']} layout)")
    print(f"images      {s['images']}")
    print(f"defect-free {s['defect_free']} ({100 * s['defect_free_share']:.1f}%)")
    print(f"image size  {', '.join(s['image_sizes'])}")
    if s["splits"]:
        print("splits      " + ", ".join(f"{k}: {v}" for k, v in s["splits"].items()))
    print()
    rows = [(c["id"], c["name"], c["images"], f"{100 * c['images'] / max(s['images'], 1):.1f}%",
             f"{100 * c['pixel_share']:.3f}%") for c in s["classes"]]
    print(_table(["id", "class", "images", "image share", "pixel share"], rows))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from steelseg.datasets import convert_to_kaggle, open_dataset

    ds = open_dataset(args.data, _class_names(args.class_names), progress=sys.stderr.isatty())
    out = convert_to_kaggle(ds, args.out, progress=sys.stderr.isatty())
    print(f"wrote {len(ds.table)} images as a Kaggle layout to {out}")
    return 0


def cmd_folds(args: argparse.Namespace) -> int:
    from steelseg.datasets import open_dataset
    from steelseg.folds import make_folds, write_folds

    ds = open_dataset(args.data, _class_names(args.class_names))
    folds = make_folds(ds, k=args.k, seed=args.seed)
    out = write_folds(folds, args.out or Path(args.data) / "folds.csv")
    pres = ds.presence()
    rows = []
    for f in range(args.k):
        sel = (folds["fold"] == f).to_numpy()
        rows.append([f, int(sel.sum()), int((~pres[sel].any(1)).sum())] + [int(v) for v in pres[sel].sum(0)])
    print(_table(["fold", "images", "defect-free"] + ds.class_names, rows))
    print(f"\nwrote {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from steelseg.train import fit_from_args

    overrides = list(args.set or [])
    for flag, key in (("data", "data.path"), ("name", "name"), ("epochs", "train.epochs"),
                      ("devices", "train.devices"), ("strategy", "train.strategy"),
                      ("num_nodes", "train.num_nodes"), ("accelerator", "train.accelerator"),
                      ("out_dir", "out_dir")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    result = fit_from_args(args.config, overrides, args.resume)
    best = "n/a" if result.best is None else f"{result.best:.4f} (epoch {result.best_epoch + 1})"
    print(f"run folder: {result.run_dir}\nbest {result.monitor}: {best}")
    print(f"model: {result.run_dir / 'model'} (model.json + best/last.safetensors)")
    return 0


TRAIN_EPILOG = """examples:
  steelseg train configs/tiny.yaml --data runs/demo/data
  steelseg train configs/neu_seg.yaml --set train.epochs=30 --set data.batch_size=16
  steelseg train configs/severstal_unet.yaml --set data.folds=data/folds.csv --set data.fold=2
  steelseg train --resume runs/segment-unet-resnet18-20261125-101500
  steelseg train configs/severstal_unet.yaml --devices 4 --strategy ddp             # 4 GPUs
  steelseg train configs/severstal_unet.yaml --devices 8 --strategy ddp --num-nodes 2 --name exp1

Config keys (sections data, model, train, track) are listed in steelseg/config.py; any of them
can be set with --set section.key=value (YAML values: 3, 1e-3, [256, 512], null, true).
Runs are tracked in MLflow (local store ./mlruns/mlflow.db: `mlflow ui --backend-store-uri
sqlite:///mlruns/mlflow.db`); --set track.tracking_uri=http://host:5000 for a server,
--set track.wandb=true for Weights & Biases (offline by default).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steelseg",
        description="Find and classify defects on rolled-steel surfaces: data tools, EDA, training, "
                    "tuned prediction pipelines and Kaggle submissions.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic Severstal-format dataset",
                       description="Write a Kaggle-layout dataset of synthetic steel-strip images with "
                                   "four defect classes (pits, streaks, scratches, blotches).")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--images", type=int, default=100, help="number of images (default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data (default 0)")
    p.add_argument("--height", type=int, default=256, help="image height (default 256)")
    p.add_argument("--width", type=int, default=1600, help="image width (default 1600)")
    p.add_argument("--defect-free", type=float, default=0.45, help="share of defect-free images (default 0.45)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("info", help="print a dataset summary table",
                       description="Print images, defect-free share, per-class image counts and pixel "
                                   "shares, and image sizes of a dataset.")
    _add_data_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="write any supported dataset as a Kaggle layout",
                       description="Copy images to OUT/train_images and write OUT/train.csv "
                                   "(ImageId,ClassId,EncodedPixels), classes.txt and splits/.")
    _add_data_args(p)
    p.add_argument("out", type=Path, help="output folder")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("folds", help="write stratified multi-label K-fold assignments",
                       description="Assign each image a fold, stratified on per-class presence with "
                                   "defect-free as its own label; writes image_id,fold CSV.")
    _add_data_args(p)
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--out", type=Path, default=None, help="CSV path (default DATA/folds.csv)")
    p.set_defaults(func=cmd_folds)

    p = sub.add_parser("train", help="train a segmenter or classifier from a YAML config",
                       description="Train one model (segment or classify) with PyTorch Lightning. Each "
                                   "run writes a folder with its resolved config, per-epoch metrics, "
                                   "safetensors weights + model.json, and a resume checkpoint.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=None, help="YAML config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, repeatable")
    p.add_argument("--data", default=None, help="dataset folder (same as --set data.path=...)")
    p.add_argument("--name", default=None, help="run name (default: task-arch-encoder-time)")
    p.add_argument("--out-dir", dest="out_dir", default=None, help="parent folder of runs (default runs/)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue an interrupted run folder")
    p.add_argument("--accelerator", default=None, help="cpu, gpu, auto (default auto)")
    p.add_argument("--devices", default=None, help="devices per node: a count, a list, or auto")
    p.add_argument("--strategy", default=None, help="Lightning strategy: auto, ddp, ddp_spawn, fsdp")
    p.add_argument("--num-nodes", dest="num_nodes", type=int, default=None, help="number of nodes for DDP")
    p.set_defaults(func=cmd_train)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("STEELSEG_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except SteelsegError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so briefly, the traceback is one flag away
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc}\n(rerun with --debug for the traceback "
              "and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
