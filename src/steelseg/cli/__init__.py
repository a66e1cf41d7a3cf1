"""The ``steelseg`` command: thin subcommands over the library functions, one module per command
family (:mod:`steelseg.cli.data`, ``train``, ``predict``, ``runs``, ``serve``).

Each subcommand imports what it needs when it runs, so ``steelseg --help`` and the data commands
start fast without loading torch.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from steelseg.cli import archive, data, fit, kaggle, line, predict, pseudo, runs, serve, train
from steelseg.errors import SteelsegError

__all__ = ["build_parser", "main"]

# the command families, in the order --help lists their commands; each registers its own sub-commands
FAMILIES = (data, fit, train, predict, archive, pseudo, runs, serve, line, kaggle)

EPILOG = """the usual path (each command has --help with more):
  steelseg synth data/synth --images 200          # a Severstal-format synthetic dataset
  steelseg info data/synth                        # what is in it
  steelseg fit data/synth --out fits/synth --minutes 20   # plan, train folds, tune out of fold, bundle
  steelseg eda data/synth --out runs/eda          # HTML report with plots
  steelseg folds data/synth --k 5 --out data/synth/folds.csv
  steelseg train configs/tiny.yaml --data data/synth --name seg --set data.folds=data/synth/folds.csv
  steelseg tune runs/seg --data data/synth --out bundles/seg   # thresholds, minimum areas, gates
  steelseg predict bundles/seg data/test_images --out out --overlays   # submission.csv
  steelseg report runs/seg                                     # curves, search, worst images
  steelseg runs --sort dice                                    # every run in one table
  steelseg export bundles/seg --out bundles/seg-int8 --quantize int8   # fast CPU inference
  steelseg serve bundles/seg-int8 --feedback data/feedback     # HTTP service + review page
  steelseg watch bundles/seg-int8 line/camera --out runs/line  # a hot folder: every new image predicted
  steelseg pseudo-label bundles/seg data/test_images --out data/pseudo   # then data.extra=[data/pseudo]
  steelseg convert ../shared/data/neu_seg data/neu_kaggle      # any layout -> kaggle / masks / coco
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steelseg",
        description="Find and classify defects on rolled-steel surfaces: data tools, EDA, training, "
                    "tuned prediction pipelines and Kaggle submissions.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="let the libraries (Lightning, MLflow, ...) "
                        "print what they print; by default it goes to log.txt in the folder being written")
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
    if not (args.verbose or os.environ.get("STEELSEG_VERBOSE") == "1"):
        from steelseg import logs

        logs.install()
    try:
        _guard_output(args)
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe is answered here, not at interpreter exit
        return rc
    except SteelsegError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `steelseg info DATA | head`: the reader had enough
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, as a shell tool ended by the closed pipe
    except Exception as exc:
        if debug:
            raise
        known = _resource_error(exc)
        if known:
            print(f"error: {known}", file=sys.stderr)
            return 2
        # a bug: say so briefly, the traceback is one flag away
        print(f"error: unexpected {type(exc).__name__}: {exc}\n(rerun with --debug for the traceback "
              "and report it)", file=sys.stderr)
        return 1


def _guard_output(args: argparse.Namespace) -> None:
    """Every command with an output path declares what it reads (``reads``: argument -> whether outputs may live
    inside it); the one guard (:func:`steelseg.fsutil.guard_output`) refuses an output that is, holds or lies in
    an input, before any work. ``tests/test_reliability_round4.py`` walks the parser so no command skips it."""
    out = getattr(args, "out", None)
    if out is None:
        return
    reads = getattr(args, "reads", None)
    if reads is None:  # a command added without declaring its inputs: refused, not guessed
        raise SteelsegError(f"steelseg {args.command}: declares no inputs for its --out (a steelseg bug)")
    from steelseg.fsutil import guard_output

    inputs = []
    for dest, inside_ok in reads.items():
        value = getattr(args, dest, None)
        for v in value if isinstance(value, list) else [value]:
            if v:
                inputs.append((v, inside_ok))
    guard_output(out, inputs, f"{args.command} output")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise into the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _resource_error(exc: BaseException) -> str | None:
    """One line for the machine's limits (a full disk, no memory), which are not bugs: they name the
    path or the size and what to do."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = exc.filename or "the output folder"
        return f"{where}: no space left on the device ({exc.strerror}); free some space or write elsewhere"
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return f"{exc.filename}: file name too long for the file system; choose a shorter name or folder"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return (f"out of memory{': ' + first if first else ''}; use smaller batches (data.batch_size, "
                "--max-batch), smaller images or tiles (--tile), or a machine with more memory")
    return None

if __name__ == "__main__":
    sys.exit(main())
