"""The ``steelseg`` command: thin subcommands over the library functions, one module per command
family (:mod:`steelseg.cli.data`, ``train``, ``predict``, ``runs``, ``serve``).

Each subcommand imports what it needs when it runs, so ``steelseg --help`` and the data commands
start fast without loading torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from steelseg.cli import data, predict, runs, serve, train
from steelseg.errors import SteelsegError

__all__ = ["build_parser", "main"]

# the command families, in the order --help lists their commands; each registers its own sub-commands
FAMILIES = (data, train, predict, runs, serve)

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steelseg",
        description="Find and classify defects on rolled-steel surfaces: data tools, EDA, training, "
                    "tuned prediction pipelines and Kaggle submissions.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for family in FAMILIES:
        family.register(sub)
    return parser


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
