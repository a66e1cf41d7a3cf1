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

EPILOG = """the usual path (each command has --help with more):
  steelseg synth data/synth --images 200          # a Severstal-format synthetic dataset
  steelseg info data/synth                        # what is in it
  steelseg eda data/synth --out runs/eda          # HTML report with plots
  steelseg folds data/synth --k 5 --out data/synth/folds.csv
  steelseg train configs/tiny.yaml --data data/synth --name seg --set data.folds=data/synth/folds.csv
  steelseg tune runs/seg --data data/synth --out bundles/seg   # thresholds, minimum areas, gates
  steelseg predict bundles/seg data/test_images --out out --overlays   # submission.csv
  steelseg report runs/seg                                     # curves, search, worst images
  steelseg runs --sort dice                                    # every run in one table
  steelseg export bundles/seg --out bundles/seg-int8 --quantize int8   # fast CPU inference
  steelseg serve bundles/seg-int8 --feedback data/feedback     # HTTP service + review page
  steelseg convert ../shared/data/neu_seg data/neu_kaggle      # any layout -> kaggle / masks / coco
"""


def _class_names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="dataset folder in any layout: kaggle (train.csv + train_images/), "
                   "masks (JPEGImages/ + SegmentationClass/), folders (one folder per class, masks beside "
                   "the images), mvtec (train/good, test/<defect>, ground_truth/), coco (a COCO JSON)")
    p.add_argument("--class-names", type=str, default=None,
                   help="comma-separated class names (default: classes.txt, the class folders or COCO "
                        "categories, else class1..classC)")
    p.add_argument("--layout", default=None, choices=["kaggle", "masks", "folders", "mvtec", "coco"],
                   help="force the layout when detection is ambiguous")
    p.add_argument("--free-dirs", default=None, help="folders layout: comma-separated names of the "
                   "defect-free folders (default: good, ok, free, normal, defect_free, clean, ...)")


def _open(args: argparse.Namespace, progress: bool = False) -> object:
    from steelseg.datasets import open_dataset

    return open_dataset(args.data, _class_names(args.class_names), progress=progress, layout=args.layout,
                        free_dirs=_class_names(args.free_dirs))


def _add_pipeline_args(p: argparse.ArgumentParser, nargs: str) -> None:
    p.add_argument("runs", nargs=nargs, help="segmenter run folders (several = fold ensemble)")
    p.add_argument("--data", required=True, help="labelled dataset")
    p.add_argument("--split", default="val", help="val (the run's own validation list), a dataset split, or all")
    p.add_argument("--classifier", action="append", help="gating classifier run folder, repeatable")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--device", default="auto", help="cpu, cuda, auto")


def _add_tile_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--tile", type=int, default=None,
                   help=f"predict images larger than this (pixels) in overlapping tiles, memory bounded ({default})")
    p.add_argument("--overlap", type=int, default=None, help="pixels shared by neighbouring tiles (default 128)")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None, choices=["torch", "onnx"],
                   help="force a backend (default: what the bundle's model files are)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: all cores)")


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
    ds = _open(args, sys.stderr.isatty())
    s = ds.summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"dataset     {s['root']} ({s['layout']} layout)")
    print(f"images      {s['images']}")
    print(f"defect-free {s['defect_free']} ({100 * s['defect_free_share']:.1f}%)")
    sizes = s["image_sizes"]
    if len(sizes) > 4:
        areas = sorted(sizes, key=lambda t: int(t.split("x")[0]) * int(t.split("x")[1]))
        print(f"image size  {len(sizes)} sizes, from {areas[0]} to {areas[-1]}")
    else:
        print(f"image size  {', '.join(sizes)}")
    if s["skipped"]:
        shown = ", ".join(s["skipped"][:10]) + (" ..." if len(s["skipped"]) > 10 else "")
        print(f"warning     skipped {len(s['skipped'])} file(s) that are neither images nor masks: {shown}",
              file=sys.stderr)
    if s["splits"]:
        print("splits      " + ", ".join(f"{k}: {v}" for k, v in s["splits"].items()))
    print()
    rows = [(c["id"], c["name"], c["images"], f"{100 * c['images'] / max(s['images'], 1):.1f}%",
             f"{100 * c['pixel_share']:.3f}%") for c in s["classes"]]
    print(_table(["id", "class", "images", "image share", "pixel share"], rows))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from steelseg.datasets import convert

    ds = _open(args, sys.stderr.isatty())
    out = convert(ds, args.out, args.to, progress=sys.stderr.isatty(), overwrite=args.overwrite)
    print(f"wrote {len(ds.table)} images from the {ds.layout} layout as {args.to} to {out}")
    return 0


def cmd_folds(args: argparse.Namespace) -> int:
    from steelseg.folds import make_folds, write_folds

    ds = _open(args)
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


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _print_eval(res: dict) -> None:
    names = list(res["dice_per_class"])
    rows = [(n, f"{res['dice_per_class'][n]:.4f}", f"{res['all_empty_dice_per_class'][n]:.4f}",
             "-" if res["iou_per_class"][n] is None else f"{res['iou_per_class'][n]:.4f}") for n in names]
    rows.append(("mean", f"{res['dice']:.4f}", f"{res['all_empty_dice']:.4f}", f"{res['miou']:.4f}"))
    print(_table(["class", "kaggle dice", "all-empty dice", "IoU"], rows))
    for name, s in (res.get("classifier") or {}).items():
        print(f"classifier {name}: precision {s['precision']:.3f} recall {s['recall']:.3f} (support {s['support']})")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from steelseg.evaluate import evaluate
    from steelseg.pipeline import Predictor

    predictor = None
    if args.bundle:
        predictor = Predictor.from_bundle(args.bundle, device=_device(args.device), tta=args.tta or None,
                                          backend=args.backend, threads=args.threads)
    elif not args.runs:
        raise SteelsegError("give run folders (RUN...) or --bundle")
    out = args.out or (Path(args.runs[0] if args.runs else args.bundle) / f"eval-{args.split}")
    res = evaluate(args.runs, args.data, out, args.split, args.classifier or [], args.tta, None, predictor,
                   progress=sys.stderr.isatty(), device=_device(args.device))
    _print_eval(res)
    print(f"\nwrote {out}/metrics.json, per_image.csv, predictions.npz")
    return 0


def _saved_matches(prev: dict, args: argparse.Namespace) -> bool:
    """Whether saved predictions came from these models, data, split and TTA, with raw probabilities
    (a bundle whose gate skipped segmentation of some images leaves zeros instead)."""
    return (prev["data"] == str(args.data) and prev["split"] == args.split and prev["tta"] == args.tta
            and prev["segmenters"] == [str(r) for r in args.runs]
            and prev["classifiers"] == [str(c) for c in args.classifier or []]
            and (prev.get("postprocess") or {}).get("gate_any") is None)


def cmd_tune(args: argparse.Namespace) -> int:
    import numpy as np

    from steelseg.evaluate import evaluate, load_predictions
    from steelseg.pipeline import write_bundle
    from steelseg.tune import tune_min_component, tune_postprocess

    from steelseg.fsutil import refuse_existing

    refuse_existing(args.out, args.overwrite, "bundle")  # before minutes of prediction, not after
    eval_dir = Path(args.eval_dir or Path(args.runs[0]) / f"eval-{args.split}")
    meta_path = eval_dir / "metrics.json"
    same = meta_path.is_file() and _saved_matches(json.loads(meta_path.read_text()), args)
    if not same:
        print(f"predicting {args.split} once (saved to {eval_dir}) ...", flush=True)
        evaluate(args.runs, args.data, eval_dir, args.split, args.classifier or [], args.tta,
                 progress=sys.stderr.isatty(), device=_device(args.device))
    else:
        print(f"reusing saved predictions in {eval_dir}")
    pred = load_predictions(eval_dir)
    pixels = int(np.median(pred["image_pixels"]))
    report = tune_postprocess(pred["hist_all"], pred["hist_true"], pixels, pred.get("gate"))
    if "probs" in pred and "true" in pred:  # refine with a minimum connected-component size
        report.chosen, report.after = tune_min_component(pred["probs"], pred["true"], report.chosen,
                                                         pred.get("gate"))
    names = list(json.loads(meta_path.read_text())["dice_per_class"])
    print(report.table(names))
    extra = {"tuned_on": {"data": str(args.data), "split": args.split, "images": int(len(pred["image_ids"])),
                          "dice_before": report.mean_before, "dice_after": report.mean_after,
                          "per_class_before": report.before, "per_class_after": report.after}}
    out = write_bundle(args.out, args.runs, args.classifier or [], report.chosen, names, args.tta,
                       extra=extra, overwrite=args.overwrite, tile=args.tile,
                       overlap=128 if args.overlap is None else args.overlap)
    print(f"\nbundle written to {out} (predict with: steelseg predict {out} IMAGES --out DIR)")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from steelseg.pipeline import write_bundle

    if args.empty:
        names = _class_names(args.class_names)
        if not names:
            raise SteelsegError("--empty needs --class-names (e.g. class1,class2,class3,class4)")
        out = write_bundle(args.out, [], [], None, names, kind="all-empty", overwrite=args.overwrite)
    else:
        if not args.runs:
            raise SteelsegError("give run folders, or --empty for the all-empty baseline")
        out = write_bundle(args.out, args.runs, args.classifier or [], None, None, args.tta, kind="plain",
                           overwrite=args.overwrite, tile=args.tile,
                           overlap=128 if args.overlap is None else args.overlap)
    print(f"bundle written to {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from steelseg.pipeline import predict_folder

    tta = True if args.tta else (False if args.no_tta else None)
    res = predict_folder(args.bundle, args.images, args.out, args.overlays, args.labels, tta,
                         _device(args.device), progress=sys.stderr.isatty(), backend=args.backend,
                         threads=args.threads, recursive=args.recursive, tile=args.tile, overlap=args.overlap)
    if res["skipped_files"]:
        print(f"skipped {len(res['skipped_files'])} file(s) or folder(s) that are not images "
              f"(all listed in predict.json): {', '.join(res['skipped_files'][:20])}"
              + (" ..." if len(res["skipped_files"]) > 20 else ""))
    print(f"wrote {res['submission']} ({res['images']} images x {len(res['class_names'])} classes)")
    if "dice" in res:
        print(f"kaggle dice against --labels: {res['dice']:.4f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from steelseg.export import export_bundle, load_export_data

    if args.samples < 1 or args.calib < 1 or args.val < 1:
        raise SteelsegError("--samples, --calib and --val must be >= 1")
    from steelseg.fsutil import refuse_existing

    refuse_existing(args.out, args.overwrite, "bundle")
    data = load_export_data(args.bundle, args.data, args.calib, args.val)
    samples = data["val"][:args.samples]
    quant = bool(args.quantize)
    rep = export_bundle(args.bundle, args.out, samples, args.quantize, data["calib"] if quant else (),
                        data["val"] if quant else (), data["val_masks"] if quant else (), args.max_dice_drop,
                        args.opset, args.overwrite, args.threads)
    for m in rep.models:
        print(f"{m['model']}: model.onnx (opset {m['opset']}, dynamic size: {'yes' if m['dynamic_hw'] else 'no'})")
    same = "masks identical" if rep.masks_identical else \
        f"masks identical but for {rep.threshold_pixels} pixel(s) whose probability is within 1e-3 of the threshold"
    print(f"parity on {len(samples)} images: max |p_onnx - p_torch| = {rep.parity_max_abs:.2e}, {same}")
    if rep.quantize:
        print(f"int8: Kaggle Dice {rep.dice_before:.4f} -> {rep.dice_after:.4f} on {len(data['val'])} validation "
              f"images; {rep.speed_fp32:.2f} -> {rep.speed_int8:.2f} images/s "
              f"({rep.speed_int8 / rep.speed_fp32:.2f}x)")
    print(f"wrote {rep.out} in {rep.seconds:.1f}s (predict with: steelseg predict {rep.out} IMAGES --out DIR)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from steelseg.serve.app import ServeConfig, run
    except ImportError as exc:
        raise SteelsegError(f"the service needs the serve extra: pip install 'steelseg[serve]' ({exc})") from None
    if args.workers < 1 or args.max_batch < 1:
        raise SteelsegError("--workers and --max-batch must be >= 1")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who reaches it can use it",
              file=sys.stderr)
    cfg = ServeConfig(str(args.bundle), args.api_key or os.environ.get("STEELSEG_API_KEY"),
                      str(args.feedback) if args.feedback else None, args.max_batch, args.max_mb * 1024 * 1024,
                      backend=args.backend, threads=args.threads)
    print(f"serving {args.bundle} on http://{args.host}:{args.port} (review page /, API docs /docs)", flush=True)
    run(cfg, args.host, args.port, args.workers)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from steelseg import runs

    if args.compare:
        a, b = (Path(x) for x in args.compare)
        diff, metrics = runs.compare(a, b)
        print(f"config: what differs between {a.name} and {b.name}")
        print(_table(["key", a.name, b.name], [(k, x, y) for k, x, y in diff] or [("(nothing)", "", "")]))
        print()
        print(_table(["metric", a.name, b.name], [(k, runs._cell(x, k), runs._cell(y, k)) for k, x, y in metrics]))
        return 0
    rows = runs.filter_sort([runs.run_row(r) for r in runs.find_runs(args.root)], args.where, args.sort,
                            args.ascending)
    if args.csv:
        runs.write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.md:
        from steelseg.fsutil import atomic_text

        atomic_text(args.md, runs.to_markdown(rows))
        print(f"wrote {args.md}")
    if not rows:
        print(f"no runs under {args.root}")
        return 0
    cols = runs.columns_of(rows) if args.all else runs.COLUMNS
    print(_table(cols, [[runs._cell(r.get(c), c) for c in cols] for r in rows]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from steelseg.report import write_report

    if args.worst < 0:
        raise SteelsegError("--worst must be >= 0")
    out = args.out or Path(args.run) / "report"
    rep = write_report(args.run, out, args.worst)
    s = rep["summary"]
    print(f"{s['name']}: {s['epochs']} epochs, {s['minutes']} min, best epoch {s['best_epoch']}, "
          f"val Dice {s['dice'] if s['dice'] is not None else '-'}, mIoU {s['miou'] if s['miou'] is not None else '-'}")
    print(f"report: {Path(out) / 'index.html'}")
    return 0


def cmd_eda(args: argparse.Namespace) -> int:
    from steelseg.eda import run_eda

    out = args.out or Path("runs") / ("eda-" + Path(args.data).resolve().name)
    s = run_eda(args.data, out, _class_names(args.class_names), args.sample, args.seed, progress=sys.stderr.isatty(),
                layout=args.layout, free_dirs=_class_names(args.free_dirs))
    print(f"{s['images']} images, {100 * s['defect_free_share']:.1f}% defect-free, "
          f"all-empty Kaggle Dice {s['all_empty_dice']:.4f}")
    print(f"report: {Path(out) / 'index.html'}\nnumbers: {Path(out) / 'summary.json'}")
    return 0


EXPORT_EPILOG = """examples:
  steelseg export bundles/seg --out bundles/seg-onnx                      # fp32, parity-checked
  steelseg export bundles/seg --out bundles/seg-int8 --quantize int8     # + Dice before/after
  steelseg predict bundles/seg-int8 data/test_images --out out --threads 2
"""

TRAIN_EPILOG = """examples:
  steelseg train configs/tiny.yaml --data runs/demo/data
  steelseg train configs/neu_seg.yaml --set train.max_minutes=120     # a longer budget: the schedule follows
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

    p = sub.add_parser("convert", help="write any supported dataset in another layout (kaggle, masks, coco)",
                       description="Convert a dataset between layouts, masks carried losslessly: kaggle "
                                   "(train_images/ + train.csv + classes.txt + splits/), masks (VOC-style "
                                   "JPEGImages/ + SegmentationClass/; one class per pixel) or coco (images/ + "
                                   "annotations.json with RLE masks, for labelling tools).")
    _add_data_args(p)
    p.add_argument("--to", default="kaggle", choices=["kaggle", "masks", "coco"], help="target layout (default kaggle)")
    p.add_argument("out", type=Path, help="output folder (built beside, swapped in when complete)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("folds", help="write stratified multi-label K-fold assignments",
                       description="Assign each image a fold, stratified on per-class presence with "
                                   "defect-free as its own label; writes image_id,fold CSV.")
    _add_data_args(p)
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--out", type=Path, default=None, help="CSV path (default DATA/folds.csv)")
    p.set_defaults(func=cmd_folds)

    p = sub.add_parser("eda", help="write an HTML report with plots about a dataset",
                       description="Counts, class co-occurrence, mask areas and connected components, "
                                   "position heatmaps, brightness/contrast, a gallery with masks drawn, "
                                   "and the all-empty Kaggle Dice baseline: OUT/index.html + summary.json.")
    _add_data_args(p)
    p.add_argument("--out", type=Path, default=None, help="report folder (default runs/eda-<dataset>)")
    p.add_argument("--sample", type=int, default=None, help="look at a random subset of N images")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample and the gallery")
    p.set_defaults(func=cmd_eda)

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

    p = sub.add_parser("evaluate", help="score models or a bundle on a labelled split",
                       description="Predict a split once, report Kaggle mean Dice (overall, per class, "
                                   "vs the all-empty baseline), IoU per class, classifier precision/recall; "
                                   "save metrics.json, per_image.csv and predictions.npz for tuning.")
    _add_pipeline_args(p, "*")
    p.add_argument("--bundle", default=None, help="evaluate a bundle (with its post-processing) instead")
    _add_backend_args(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/eval-SPLIT)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("tune", help="tune thresholds / minimum areas / gates and write a bundle",
                       description="Search per-class pixel thresholds, minimum mask areas and classifier "
                                   "gates on validation predictions to maximise Kaggle mean Dice; write a "
                                   "bundle for `steelseg predict`.")
    _add_pipeline_args(p, "+")
    p.add_argument("--eval-dir", default=None, help="saved predictions (default RUN/eval-SPLIT)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle (swapped in when complete)")
    _add_tile_args(p, "saved in the bundle; default: whole images")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("bundle", help="pack models without tuning (plain baseline) or the all-empty baseline",
                       description="Write a bundle with threshold 0.5 and no minimum area (the plain "
                                   "single-model baseline), or --empty for the all-empty baseline.")
    p.add_argument("runs", nargs="*", help="segmenter run folders")
    p.add_argument("--classifier", action="append", help="gating classifier run folder")
    p.add_argument("--empty", action="store_true", help="the all-empty baseline bundle")
    p.add_argument("--class-names", default=None, help="class names for --empty")
    p.add_argument("--tta", action="store_true", help="use flip TTA when predicting")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle (swapped in when complete)")
    _add_tile_args(p, "saved in the bundle; default: whole images")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("predict", help="predict a folder of images to submission.csv (+ overlays)",
                       description="Run a bundle over every image in IMAGES and write OUT/submission.csv "
                                   "(ImageId,EncodedPixels,ClassId; written atomically) and optional overlays.")
    p.add_argument("bundle", help="bundle folder (steelseg tune / steelseg bundle)")
    p.add_argument("images", help="folder of images")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overlays", action="store_true", help="save PNG overlays of the predicted masks")
    p.add_argument("--labels", default=None, help="labelled dataset: ground truth beside overlays, and Dice")
    p.add_argument("--tta", action="store_true", help="force flip TTA on")
    p.add_argument("--no-tta", action="store_true", help="force flip TTA off")
    p.add_argument("--device", default="auto", help="cpu, cuda, auto")
    p.add_argument("--recursive", action="store_true",
                   help="read subfolders too (ImageId is then the path under IMAGES, e.g. line2/a.jpg)")
    _add_tile_args(p, "default: the bundle's setting, else whole images")
    _add_backend_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a bundle as ONNX (optionally int8) for fast CPU inference",
                       description="Export every model of BUNDLE to ONNX (probabilities out, dynamic batch "
                                   "and image size where the architecture allows) into a new bundle. Parity "
                                   "with PyTorch is checked on sample images first: any difference in "
                                   "probabilities beyond 1e-3 or in the final masks fails and writes nothing. "
                                   "--quantize int8 calibrates on the training images, scores Kaggle Dice "
                                   "on validation images before and after, and refuses a larger drop than "
                                   "--max-dice-drop.", epilog=EXPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder with PyTorch models (steelseg tune / steelseg bundle)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    p.add_argument("--quantize", default=None, choices=["int8"], help="static int8 quantisation (QDQ, per-channel)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--data", default=None, help="labelled dataset for samples, calibration and validation "
                   "(default: the data the models were trained on)")
    p.add_argument("--samples", type=int, default=4, help="images for the parity check (default 4)")
    p.add_argument("--calib", type=int, default=32, help="calibration images for int8 (default 32)")
    p.add_argument("--val", type=int, default=64, help="validation images scored before/after int8 (default 64)")
    p.add_argument("--max-dice-drop", type=float, default=0.005, help="largest Dice drop int8 may cost (default 0.005)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bundle")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="an HTML report of one run: curves, per-class scores, search, worst images",
                       description="Write OUT/index.html for a run folder: loss and metric curves (metrics.csv), "
                                   "per-class Dice and IoU of the best epoch, and, once the run was evaluated "
                                   "(steelseg evaluate / tune), Dice against threshold and minimum area per "
                                   "class and the worst validation images with prediction and truth.")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", type=Path, default=None, help="report folder (default RUN/report)")
    p.add_argument("--worst", type=int, default=6, help="how many worst validation images to show (default 6)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("runs", help="table of training runs (sort, filter, CSV / Markdown), or compare two",
                       description="One row per run folder under ROOT, read from the files each run wrote "
                                   "(config.yaml, metrics.csv): data, task, arch, encoder, weights, epochs, "
                                   "steps, minutes, images/s, best epoch and its validation Dice / mIoU / AUC "
                                   "(--all adds per-class scores). --compare A B shows what differs between two "
                                   "runs' configs and their metrics side by side.",
                       epilog="examples:\n  steelseg runs --sort miou --where encoder=resnet18\n"
                              "  steelseg runs runs/ --md docs/neu_table.md --all\n"
                              "  steelseg runs --compare runs/neu-scratch runs/neu-lite0",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default="runs", help="folder holding run folders (default runs/)")
    p.add_argument("--sort", default=None, help="column to sort by, highest first (e.g. miou, dice, minutes)")
    p.add_argument("--ascending", action="store_true", help="sort lowest first")
    p.add_argument("--where", action="append", metavar="KEY=VALUE", help="keep rows whose column equals VALUE")
    p.add_argument("--all", action="store_true", help="show per-class columns too")
    p.add_argument("--csv", default=None, help="also write the table as CSV")
    p.add_argument("--md", default=None, help="also write the table as Markdown")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two run folders")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("serve", help="run the HTTP service with a review page (FastAPI)",
                       description="Serve BUNDLE over HTTP: POST /v1/predict (one image), /v1/predict/batch, "
                                   "/v1/feedback; GET /health, /ready, /v1/model, /metrics (Prometheus), /docs "
                                   "(OpenAPI) and the review page at /. Binds to 127.0.0.1 unless told otherwise.",
                       epilog="examples:\n  steelseg serve bundles/seg-int8 --feedback data/feedback\n"
                              "  STEELSEG_API_KEY=secret steelseg serve bundles/seg --host 0.0.0.0 --workers 2\n"
                              "  curl -F file=@strip.jpg -H 'X-API-Key: secret' http://127.0.0.1:8000/v1/predict",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="bundle folder (PyTorch or ONNX)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each loads the bundle once")
    p.add_argument("--api-key", default=None, help="require this key (X-API-Key header) on /v1/*; "
                   "or set $STEELSEG_API_KEY")
    p.add_argument("--feedback", type=Path, default=None, help="append reviewed images to this Kaggle-layout folder")
    p.add_argument("--max-batch", type=int, default=16, help="most images in one batch request (default 16)")
    p.add_argument("--max-mb", type=int, default=32, help="largest request body in MB (default 32)")
    _add_backend_args(p)
    p.set_defaults(func=cmd_serve)

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
