"""What the command families share: the dataset and pipeline arguments, opening a dataset, tables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_backend_args", "add_data_args", "add_pipeline_args", "add_tile_args", "class_names", "device",
           "layout_options", "open_data", "table"]


def class_names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="dataset folder in any layout: kaggle (train.csv + train_images/), "
                   "masks (JPEGImages/ + SegmentationClass/), folders (one folder per class, masks beside "
                   "the images), groups (one folder per part or coil, one class, empty mask = defect-free), "
                   "mvtec (train/good, test/<defect>, ground_truth/), coco (a COCO JSON), yolo (an ultralytics "
                   "segmentation data.yaml with images/ and labels/)")
    p.add_argument("--class-names", type=str, default=None,
                   help="comma-separated class names (default: classes.txt, the class folders or COCO "
                        "categories, 'defect' for group folders, else class1..classC)")
    p.add_argument("--layout", default=None, choices=["kaggle", "masks", "folders", "groups", "mvtec", "coco", "yolo", "labelme", "cvat", "labelstudio"],
                   help="force the layout when detection is ambiguous (folders or groups: when the masks do "
                        "not tell class folders from group folders)")
    p.add_argument("--free-dirs", default=None, help="folders layout: comma-separated names or glob patterns of "
                   "the defect-free folders (default: good, ok, ok_*, *_ok, free, *_free, normal, defect_free, "
                   "clean, no_defect*, ...)")
    p.add_argument("--line-width", type=int, default=None, metavar="PX",
                   help="labelme, cvat: pixels a line, polyline or point shape is drawn wide (they have no area; "
                        "default 5; `info` counts the shapes drawn)")
    p.add_argument("--boxes", action="store_true",
                   help="yolo: read box-only label lines (5 columns) as filled boxes instead of refusing them")


def layout_options(args: argparse.Namespace) -> dict[str, Any]:
    """--line-width / --boxes as open_dataset's options (data.layout_options in a config)."""
    out: dict[str, Any] = {}
    if getattr(args, "line_width", None) is not None:
        out["line_width"] = args.line_width
    if getattr(args, "boxes", False):
        out["boxes"] = True
    return out


def open_data(args: argparse.Namespace, progress: bool = False) -> Any:
    from steelseg.data.open import open_dataset

    return open_dataset(args.data, class_names(args.class_names), progress=progress, layout=args.layout,
                        free_dirs=class_names(args.free_dirs), options=layout_options(args))


def add_pipeline_args(p: argparse.ArgumentParser, nargs: str) -> None:
    p.add_argument("runs", nargs=nargs, help="segmenter run folders (several = fold ensemble)")
    p.add_argument("--data", required=True, help="labelled dataset")
    p.add_argument("--split", default="val", help="val (the run's own validation list), a dataset split, or all")
    p.add_argument("--classifier", action="append", help="gating classifier run folder, repeatable")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--device", default="auto", help="cpu, cuda, auto")


def add_tile_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--tile", type=int, default=None,
                   help=f"predict images larger than this (pixels) in overlapping tiles, memory bounded ({default})")
    p.add_argument("--overlap", type=int, default=None, help="pixels shared by neighbouring tiles (default 128)")


def add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None, choices=["torch", "onnx", "openvino"],
                   help="force a backend (default: what the bundle's model files are)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: all cores)")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def device(name: str) -> str:
    """``auto``: CUDA where PyTorch sees a GPU, else the CPU (also where PyTorch is not installed: an ONNX Runtime /
    OpenVINO install, such as the container image, predicts without it)."""
    if name != "auto":
        return name
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
