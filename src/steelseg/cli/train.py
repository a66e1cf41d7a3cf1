"""steelseg train: one run from a YAML config (Lightning; DDP across GPUs and nodes)."""

from __future__ import annotations

import argparse
from typing import Any

TRAIN_EPILOG = """examples:
  steelseg train configs/tiny.yaml --data runs/demo/data
  steelseg train configs/neu_seg.yaml --set train.max_minutes=120     # a longer budget: the schedule follows
  steelseg train configs/severstal_unet.yaml --set data.folds=data/folds.csv --set data.fold=2
  steelseg train --resume runs/segment-unet-resnet18-20261125-101500
  steelseg train configs/severstal_unet.yaml --devices 4 --strategy ddp             # 4 GPUs
  steelseg train configs/severstal_unet.yaml --devices 8 --strategy ddp --num-nodes 2 --name exp1

Config keys (sections data, model, train, track) are listed in steelseg/training/config.py; any of them
can be set with --set section.key=value (YAML values: 3, 1e-3, [256, 512], null, true).
Runs are tracked in MLflow (local store ./mlruns/mlflow.db: `mlflow ui --backend-store-uri
sqlite:///mlruns/mlflow.db`); --set track.tracking_uri=http://host:5000 for a server,
--set track.wandb=true for Weights & Biases (offline by default).
"""


def cmd_train(args: argparse.Namespace) -> int:
    from steelseg.training.run import fit_from_args

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


def register(sub: Any) -> None:
    """Add this family's sub-commands to ``steelseg``'s sub-parsers."""
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
