"""steelseg synth / info / convert / folds / eda: datasets in any layout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from steelseg.cli.common import add_data_args, class_names, layout_options, open_data, table


def cmd_synth(args: argparse.Namespace) -> int:
    from steelseg.data.synth import SynthConfig, make_dataset

    cfg = SynthConfig(images=args.images, seed=args.seed, height=args.height, width=args.width,
                      defect_free=args.defect_free)
    out = make_dataset(args.out, cfg, progress=sys.stderr.isatty())
    print(f"wrote {cfg.images} synthetic {cfg.width}x{cfg.height} images to {out} (seed {cfg.seed})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    ds = open_data(args, sys.stderr.isatty())
    s = ds.summary()
    if args.json:
        from steelseg.data.reviews import summarize

        reviews = summarize(ds.root, ds.class_names)
        print(json.dumps(s if reviews is None else {**s, "reviews": reviews}, indent=2))
        return 0
    print(f"dataset     {s['root']} ({s['layout']} layout)")
    print(f"why         {s['reason']}")
    print(f"images      {s['images']}")
    print(f"classes     {len(s['classes'])}")
    if s["groups"] is not None:
        print(f"groups      {s['groups']} (splits and folds keep each group whole)")
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
    print(table(["id", "class", "images", "image share", "pixel share"], rows))
    _print_reviews(ds.root, ds.class_names)
    return 0


def _print_reviews(root: Path, class_names: list[str]) -> None:
    """What reviewers changed, when the folder is a feedback folder of `steelseg serve` (reviews.jsonl)."""
    from steelseg.data.reviews import summarize

    r = summarize(root, class_names)
    if r is None:
        return
    print(f"\nreviews     {r['reviews']} ({r['stored']['train']} to train, {r['stored']['needs_masks']} need masks) "
          f"by {', '.join(r['reviewers'])}; bundles {', '.join(r['bundles'])}")
    rows = [(c["name"], c["right"], c["wrong"], c["corrected"], c["drawn"], c["missed"] - c["drawn"], c["absent"],
             "-" if c["dice_model_vs_final"] is None else f"{c['dice_model_vs_final']:.3f} ({c['with_defect']})")
            for c in r["classes"]]
    print(table(["class", "kept", "rejected", "corrected", "drawn", "undrawn", "absent",
                 "Dice model vs final (images)"], rows))


def cmd_convert(args: argparse.Namespace) -> int:
    from steelseg.data.convert import convert

    ds = open_data(args, sys.stderr.isatty())
    out = convert(ds, args.out, args.to, progress=sys.stderr.isatty(), overwrite=args.overwrite)
    print(f"wrote {len(ds.table)} images from the {ds.layout} layout as {args.to} to {out}")
    return 0


def cmd_folds(args: argparse.Namespace) -> int:
    from steelseg.data.folds import image_groups, make_folds, write_folds

    ds = open_data(args)
    groups = image_groups(ds, args.group_by)
    folds = make_folds(ds, k=args.k, seed=args.seed, groups=groups)
    out = write_folds(folds, args.out or Path(args.data) / "folds.csv")
    pres = ds.presence()
    rows = []
    for f in range(args.k):
        sel = (folds["fold"] == f).to_numpy()
        row = [f, int(sel.sum()), int((~pres[sel].any(1)).sum())] + [int(v) for v in pres[sel].sum(0)]
        rows.append(row + ([folds.loc[sel, "group"].nunique()] if groups is not None else []))
    print(table(["fold", "images", "defect-free"] + ds.class_names + (["groups"] if groups is not None else []), rows))
    if groups is not None:
        print(f"\ngrouped: each of the {len(set(groups))} groups lies in one fold")
    print(f"\nwrote {out}")
    return 0


def cmd_eda(args: argparse.Namespace) -> int:
    from steelseg.reports.eda import run_eda

    out = args.out or Path("runs") / ("eda-" + Path(args.data).resolve().name)
    s = run_eda(args.data, out, class_names(args.class_names), args.sample, args.seed, progress=sys.stderr.isatty(),
                layout=args.layout, free_dirs=class_names(args.free_dirs), options=layout_options(args))
    print(f"{s['images']} images, {100 * s['defect_free_share']:.1f}% defect-free, "
          f"all-empty Kaggle Dice {s['all_empty_dice']:.4f}")
    print(f"report: {Path(out) / 'index.html'}\nnumbers: {Path(out) / 'summary.json'}")
    return 0


def register(sub: Any) -> None:
    """Add this family's sub-commands to ``steelseg``'s sub-parsers."""
    p = sub.add_parser("synth", help="write a synthetic Severstal-format dataset",
                       description="Write a Kaggle-layout dataset of synthetic steel-strip images with "
                                   "four defect classes (pits, streaks, scratches, blotches).")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--images", type=int, default=100, help="number of images (default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data (default 0)")
    p.add_argument("--height", type=int, default=256, help="image height (default 256)")
    p.add_argument("--width", type=int, default=1600, help="image width (default 1600)")
    p.add_argument("--defect-free", type=float, default=0.45, help="share of defect-free images (default 0.45)")
    p.set_defaults(func=cmd_synth, reads={})

    p = sub.add_parser("info", help="print a dataset summary table",
                       description="Print images, defect-free share, per-class image counts and pixel "
                                   "shares, and image sizes of a dataset.")
    add_data_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="write any supported dataset in another layout (kaggle, masks, coco, yolo)",
                       description="Convert a dataset between layouts: kaggle (train_images/ + train.csv + "
                                   "classes.txt + splits/), masks (VOC-style JPEGImages/ + SegmentationClass/; one "
                                   "class per pixel) or coco (images/ + annotations.json with RLE masks, for labelling "
                                   "tools), all three lossless; or yolo (ultralytics segmentation: images/, labels/ "
                                   "with one polygon a component, data.yaml; a hole in a defect comes back filled).")
    add_data_args(p)
    p.add_argument("--to", default="kaggle", choices=["kaggle", "masks", "coco", "yolo", "labelme", "cvat", "labelstudio"], help="target layout (default kaggle)")
    p.add_argument("out", type=Path, help="output folder (built beside, swapped in when complete)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_convert, reads={"data": False})

    p = sub.add_parser("folds", help="write stratified multi-label K-fold assignments (grouped where images come in "
                       "groups)", description="Assign each image a fold, stratified on per-class presence with "
                       "defect-free as its own label; writes an image_id,fold CSV. Images in groups (group folders, "
                       "or --group-by folder) are kept whole: no group in two folds (a group column is added).")
    add_data_args(p)
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--group-by", default=None, choices=["folder", "none"], help="keep groups whole: folder = the "
                   "first folder of each image id; none = no groups (default: the layout's groups, if any)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--out", type=Path, default=None, help="CSV path (default DATA/folds.csv)")
    p.set_defaults(func=cmd_folds, reads={"data": True})  # DATA/folds.csv: beside the labels, never over them

    p = sub.add_parser("eda", help="write an HTML report with plots about a dataset",
                       description="Counts, class co-occurrence, mask areas and connected components, "
                                   "position heatmaps, brightness/contrast, a gallery with masks drawn, "
                                   "and the all-empty Kaggle Dice baseline: OUT/index.html + summary.json.")
    add_data_args(p)
    p.add_argument("--out", type=Path, default=None, help="report folder (default runs/eda-<dataset>)")
    p.add_argument("--sample", type=int, default=None, help="look at a random subset of N images")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample and the gallery")
    p.set_defaults(func=cmd_eda, reads={"data": False})
