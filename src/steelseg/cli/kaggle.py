"""steelseg kaggle: the offline kit for Kaggle's code competitions, and its local rehearsal."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steelseg.errors import SteelsegError

EPILOG = """examples:
  steelseg kaggle bundles/seg --out kit --user jane                      # Python 3.12, GPU if usable
  steelseg kaggle bundles/seg-int8 --out kit-cpu --user jane --no-gpu     # an ONNX bundle, CPU only
  steelseg kaggle bundles/seg --out kit311 --python 3.11                  # for a rehearsal on this machine
  steelseg kaggle --rehearse kit311 --input data/severstal --out rehearsal
then follow KIT/PUSH.md (kaggle datasets create / kernels push / competitions submit).
"""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_kaggle(args: argparse.Namespace) -> int:
    if args.rehearse:
        from steelseg.kaggle.rehearsal import rehearse

        if args.input is None or args.out is None:
            raise SteelsegError("--rehearse KIT needs --input DIR (test_images/, sample_submission.csv) and --out OUT")
        rep = rehearse(args.rehearse, args.input, args.out, timeout=args.timeout)
        res, check = rep["result"], rep["check"]
        print(f"rehearsal passed in {rep['seconds']:.0f} s: {res['images']} images at "
              f"{res['images'] / res['seconds']:.2f} img/s on {rep['device']} ({rep['why']}), TTA "
              f"{'on' if rep['plan']['tta'] else 'off'}; {check['rows']} rows, {check['non_empty']} masks, "
              f"equal to steelseg predict on {rep['compare']['rows_compared']} rows")
        print("\n".join(rep["plan"]["notes"]))
        print(f"wrote {args.out}/submission.csv, {args.out}/rehearsal.json and the executed notebook")
        return 0
    if args.bundle is None or args.out is None:
        raise SteelsegError("give BUNDLE and --out KIT (or --rehearse KIT --input DIR --out OUT)")
    from steelseg.kaggle.kit import KitConfig, build_kit

    cfg = KitConfig(competition=args.competition, user=args.user, python=args.python, gpu=args.gpu,
                    hidden_images=args.hidden_images, minutes=args.minutes, find_links=args.find_links)
    res = build_kit(args.bundle, args.out, cfg, overwrite=args.overwrite)
    for w in res["wheels"]:
        print(f"  {w['file']}  ({w['why']})")
    print(f"kit written to {res['kit']} ({_mb(res['bytes'])}, {res['backend']} bundle): datasets "
          f"{res['deps_dataset']} and {res['bundle_dataset']}, notebook {res['kernel']}; push it with "
          f"{res['kit']}/PUSH.md")
    return 0


def register(sub: Any) -> None:
    """Add ``steelseg kaggle`` to ``steelseg``'s sub-parsers."""
    p = sub.add_parser("kaggle", help="an offline Kaggle submission kit for a bundle (and its local rehearsal)",
                       description="Write KIT/deps (the steelseg wheel and every wheel the predict path needs "
                                   "that Kaggle's image lacks, for the target Python; a manifest with sha256), "
                                   "KIT/bundle, KIT/kernel (a notebook that installs with --no-index, finds its "
                                   "inputs under /kaggle/input, falls back to the CPU when the GPU is "
                                   "unsupported, projects the hidden set's time and drops TTA when it would "
                                   "not fit, predicts streaming and validates submission.csv; internet off) "
                                   "and KIT/PUSH.md. --rehearse runs the notebook here offline in a fresh "
                                   "virtual environment.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?", help="bundle folder (steelseg tune / bundle / export)")
    p.add_argument("--out", type=Path, default=None, help="kit folder to write (with --rehearse: output folder)")
    p.add_argument("--competition", default="severstal-steel-defect-detection", help="competition slug")
    p.add_argument("--user", default="your-kaggle-username", help="your Kaggle user name (dataset and kernel slugs)")
    p.add_argument("--python", default="3.12", help="Python of the target image (Kaggle: 3.12)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True,
                   help="ask for a GPU (the notebook still falls back to the CPU when torch cannot use it)")
    p.add_argument("--hidden-images", type=int, default=5506,
                   help="test images of the hidden re-run, for the time projection (default 5506)")
    p.add_argument("--minutes", type=float, default=50.0,
                   help="minutes prediction may take of Kaggle's 60 (default 50): beyond it TTA is dropped")
    p.add_argument("--find-links", type=Path, default=None, metavar="DIR",
                   help="take the wheels from this local wheelhouse only, not the package index (offline builds)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing kit")
    p.add_argument("--rehearse", type=Path, default=None, metavar="KIT", help="rehearse this kit offline")
    p.add_argument("--input", type=Path, default=None, help="with --rehearse: folder with test_images/ and "
                   "sample_submission.csv")
    p.add_argument("--timeout", type=int, default=3600, help="with --rehearse: seconds a notebook cell may take")
    p.set_defaults(func=cmd_kaggle, reads={"bundle": False, "rehearse": False, "input": False, "find_links": False})
