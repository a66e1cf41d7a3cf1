"""steelseg pseudo-label: unlabelled images the model is sure of, as a training folder for data.extra."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from steelseg.cli.common import add_backend_args, device

EPILOG = """examples:
  steelseg pseudo-label bundles/seg data/test_images --out data/pseudo            # 1st place's rule
  steelseg pseudo-label bundles/seg data/test_images --out data/pseudo --rule confidence --max 500
  steelseg train configs/severstal_unet.yaml --set 'data.extra=[data/pseudo]'     # train on them too
"""


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from steelseg.inference.predictor import Predictor
    from steelseg.inference.pseudo import PseudoConfig, pseudo_label

    cfg = PseudoConfig(args.rule, args.hi, args.lo, args.max)
    predictor = Predictor.from_bundle(args.bundle, device=device(args.device), backend=args.backend,
                                      threads=args.threads)
    if not predictor.classifiers:
        print("note: the bundle has no classifier; each class's image-level probability is the segmenter's "
              "largest pixel probability", file=sys.stderr)
    res = pseudo_label(predictor, args.images, args.out, cfg, progress=sys.stderr.isatty(), overwrite=args.overwrite)
    print(f"kept {res['kept']} of {res['images']} images ({res['kept_with_defect']} with a defect) by the "
          f"{res['rule']} rule -> {res['out']} (train.csv, train_images/, pseudo_labels.csv)")
    if res["kept"] == 0:
        print("warning: no image was kept; see pseudo_labels.csv for why (or try --rule confidence)", file=sys.stderr)
    print(f"train on them: steelseg train CONFIG --set 'data.extra=[{res['out']}]'")
    return 0


def register(sub: Any) -> None:
    """Add this family's sub-commands to ``steelseg``'s sub-parsers."""
    p = sub.add_parser("pseudo-label", help="label unlabelled images the model is sure of, for data.extra",
                       description="Predict every image in IMAGES with BUNDLE and keep those the rule accepts, as "
                                   "a Kaggle-layout folder OUT (train_images/, train.csv, classes.txt) with every "
                                   "image's probabilities, confidence and verdict in OUT/pseudo_labels.csv. "
                                   "Rule 1st: every class's probability above --hi or below --lo and the "
                                   "segmentation agrees. Rule confidence: the --max images (default half) with "
                                   "the largest mean |p - 0.5|. Training adds OUT with data.extra and never "
                                   "validates on it.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder (steelseg tune / steelseg bundle)")
    p.add_argument("images", help="folder of unlabelled images")
    p.add_argument("--out", type=Path, required=True, help="folder to write (a Kaggle-layout dataset)")
    p.add_argument("--rule", default="1st", choices=["1st", "confidence"], help="which images to keep (default 1st)")
    p.add_argument("--max", type=int, default=None, help="keep at most this many, most confident first")
    p.add_argument("--hi", type=float, default=0.95, help="rule 1st: sure of a defect above this (default 0.95)")
    p.add_argument("--lo", type=float, default=0.05, help="rule 1st: sure of none below this (default 0.05)")
    p.add_argument("--device", default="auto", help="cpu, cuda, auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    add_backend_args(p)
    p.set_defaults(func=cmd_pseudo_label, reads={"bundle": False, "images": False})
