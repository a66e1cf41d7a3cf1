"""steelseg plan / fit: from a labelled folder to a tuned, honestly scored bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steelseg.cli.common import add_data_args, class_names, layout_options

FIT_EPILOG = """examples:
  steelseg plan data/line3 --minutes 30 --out plan.yaml     # what fit would do, and why
  steelseg fit data/line3 --out fits/line3 --minutes 30     # plan, train 3 folds, tune out of fold, bundle
  steelseg fit ../shared/data/kolektor_sdd --out fits/kolektor --steps 640   # a budget in steps a model
  steelseg fit data/line3 --out fits/line3 --minutes 30     # again after a kill: continues where it stopped
  steelseg fit /nfs/line3 --out /nfs/fits/line3 --steps 2000 --engine ray --address auto   # folds on a cluster
  steelseg predict fits/line3/bundle data/new_images --out out

The budget: --minutes for the whole fit (turned into steps with the step time measured on this machine and
recorded in the plan, so the same plan trains the same steps on any machine) or --steps a model. The
summary (OUT/summary.md) gives the out-of-fold Kaggle Dice beside predicting nothing, image-level AP, the
images missed and flagged per class, and every planned value with the fact that chose it.
"""


def _budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--minutes", type=float, default=None, help="wall-clock budget for the whole fit (all folds)")
    g.add_argument("--steps", type=int, default=None, help="optimiser steps a model (reproducible on any machine)")
    p.add_argument("--folds", type=int, default=None, help="number of folds (default: 3 on a CPU, 5 on a GPU; the "
                   "dataset's own train / val lists when it has them; 1 = one model)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="pin a config value (train.lr=0.002); the "
                   "rules after it take it into account; repeatable")
    p.add_argument("--no-probe", action="store_true", help="do not time training steps (needs --steps; precision "
                   "from the CPU flags)")


def _options(args: argparse.Namespace) -> Any:
    from steelseg.errors import ConfigError
    from steelseg.planning.fit import FitOptions
    from steelseg.planning.plan import parse_pins

    if args.no_probe and args.minutes is not None:
        raise ConfigError("--no-probe needs --steps: minutes become steps through a measured step time")
    if args.folds is not None and args.folds < 1:
        raise ConfigError(f"--folds {args.folds}: must be >= 1")
    return FitOptions(minutes=args.minutes, steps=args.steps, folds=args.folds, pins=parse_pins(args.set or []),
                      class_names=class_names(args.class_names), layout=args.layout, layout_options=layout_options(args),
                      probe=not args.no_probe,
                      ensemble=getattr(args, "ensemble", "auto"), min_speed=getattr(args, "min_speed", None),
                      **_engine(args))


def _engine(args: argparse.Namespace) -> dict[str, Any]:
    from steelseg.errors import ConfigError

    engine = getattr(args, "engine", "local")
    if engine != "ray" and (getattr(args, "address", None) or getattr(args, "workers", None)):
        raise ConfigError("--address and --workers are for --engine ray")
    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be >= 1")
    return {"engine": engine, "address": getattr(args, "address", None), "workers": getattr(args, "workers", None)}


def cmd_plan(args: argparse.Namespace) -> int:
    from steelseg.cli.common import open_data
    from steelseg.fsutil import refuse_existing
    from steelseg.planning.plan import make_plan, write_plan

    o = _options(args)
    if args.out is not None:
        refuse_existing(args.out, args.overwrite, "plan")
    plan = make_plan(open_data(args), o.minutes, o.steps, o.folds, o.pins, probe=o.probe)
    for d in {d.key: d for d in plan.decisions}.values():
        print(f"{d.key:<32} {str(d.value):<28} {d.why}")
    if args.out is not None:
        print(f"\nwrote {write_plan(plan, args.out)} and {args.out.with_suffix('.json')} "
              f"(train it: steelseg train {args.out})")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from steelseg.planning.fit import fit_folder

    fit_folder(args.data, args.out, _options(args))
    return 0


def register(sub: Any) -> None:
    """Add this family's sub-commands to ``steelseg``'s sub-parsers."""
    p = sub.add_parser("plan", help="fingerprint a dataset and this machine; write the config fit would train",
                       description="Measure the dataset (sizes, channels, defect-free share, per class the images, "
                                   "pixel share and component areas and widths) and this machine (cores, GPU, native "
                                   "bf16, a few timed training steps), and turn them into a steelseg config with "
                                   "the reason for each value.", epilog=FIT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    _budget_args(p)

    p.add_argument("--out", type=Path, default=None, help="write the plan here (plan.yaml, and plan.json beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plan file")
    p.set_defaults(func=cmd_plan, reads={"data": True})

    p = sub.add_parser("fit", help="one command: plan, train the folds, tune out of fold, bundle, summary",
                       description="From a labelled folder to a tuned bundle: plan from the data and the machine, "
                                   "train every fold, evaluate, tune thresholds and minimum areas out of fold (a "
                                   "class that scores better predicting nothing is switched off), choose the fold "
                                   "ensemble or the best single model, bundle, and write the run reports and a "
                                   "one-page summary. Killed at any point, the same command continues.",
                       epilog=FIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    _budget_args(p)
    p.add_argument("--out", type=Path, required=True, help="the fit's folder (plan, folds, runs, bundle, summary)")
    p.add_argument("--ensemble", default="auto", choices=["auto", "yes", "no"],
                   help="ship the fold ensemble (yes), the best single model (no), or the ensemble unless it is "
                        "below --min-speed (auto)")
    p.add_argument("--min-speed", type=float, default=None, metavar="IMG_PER_S",
                   help="auto: the images/s the pipeline must reach on this machine")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local (default): the folds one after another in this process; ray: each fold trained and "
                        "evaluated as a Ray task, several at once (an embedded instance here, or a cluster with "
                        "--address; the data and --out on a file system every node shares)")
    p.add_argument("--address", default=None, help="--engine ray: auto or HOST:PORT of a running cluster")
    p.add_argument("--workers", type=int, default=None, help="--engine ray: folds trained at once (default: one per "
                   "GPU where the cluster has them, else half its CPUs); each gets its share of the CPUs")
    p.set_defaults(func=cmd_fit, reads={"data": False})
