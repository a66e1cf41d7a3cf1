"""steelseg report / runs: a run's report, and the table that compares runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steelseg.cli.common import table
from steelseg.errors import SteelsegError


def cmd_report(args: argparse.Namespace) -> int:
    from steelseg.reports.report import write_report

    if args.worst < 0:
        raise SteelsegError("--worst must be >= 0")
    out = args.out or Path(args.run) / "report"
    rep = write_report(args.run, out, args.worst)
    s = rep["summary"]
    print(f"{s['name']}: {s['epochs']} epochs, {s['minutes']} min, best epoch {s['best_epoch']}, "
          f"val Dice {s['dice'] if s['dice'] is not None else '-'}, mIoU {s['miou'] if s['miou'] is not None else '-'}")
    print(f"report: {Path(out) / 'index.html'}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from steelseg.reports import runs

    if args.compare:
        a, b = (runs.resolve_run(x, args.root) for x in args.compare)
        diff, metrics = runs.compare(a, b)
        print(f"config: what differs between {a.name} and {b.name}")
        print(table(["key", a.name, b.name], [(k, x, y) for k, x, y in diff] or [("(nothing)", "", "")]))
        print()
        print(table(["metric", a.name, b.name], [(k, runs._cell(x, k), runs._cell(y, k)) for k, x, y in metrics]))
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
    print(table(cols, [[runs._cell(r.get(c), c) for c in cols] for r in rows]))
    return 0


def register(sub: Any) -> None:
    """Add this family's sub-commands to ``steelseg``'s sub-parsers."""
    p = sub.add_parser("report", help="an HTML report of one run: curves, per-class scores, search, worst images",
                       description="Write OUT/index.html for a run folder: loss and metric curves (metrics.csv), "
                                   "per-class Dice and IoU of the best epoch, and, once the run was evaluated "
                                   "(steelseg evaluate / tune), Dice against threshold and minimum area per "
                                   "class and the worst validation images with prediction and truth.")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", type=Path, default=None, help="report folder (default RUN/report)")
    p.add_argument("--worst", type=int, default=6, help="how many worst validation images to show (default 6)")
    p.set_defaults(func=cmd_report, reads={"run": True})  # RUN/report: a run holds its own report

    p = sub.add_parser("runs", help="table of training runs (sort, filter, CSV / Markdown), or compare two",
                       description="One row per run folder under ROOT, read from the files each run wrote "
                                   "(config.yaml, metrics.csv): data, task, arch, encoder, weights, epochs, "
                                   "steps, minutes, images/s, best epoch and its validation Dice / mIoU / AUC "
                                   "(--all adds per-class scores). --compare A B shows what differs between two "
                                   "runs' configs and their metrics side by side.",
                       epilog="examples:\n  steelseg runs --sort miou --where encoder=resnet18\n"
                              "  steelseg runs runs/ --md docs/neu_table.md --all\n"
                              "  steelseg runs --compare runs/neu-scratch runs/neu-lite0\n"
                              "  steelseg runs --compare neu-scratch neu-lite0      # names under ROOT (runs/)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default="runs", help="folder holding run folders (default runs/)")
    p.add_argument("--sort", default=None, help="column to sort by, highest first (e.g. miou, dice, minutes)")
    p.add_argument("--ascending", action="store_true", help="sort lowest first")
    p.add_argument("--where", action="append", metavar="KEY=VALUE", help="keep rows whose column equals VALUE")
    p.add_argument("--all", action="store_true", help="show per-class columns too")
    p.add_argument("--csv", default=None, help="also write the table as CSV")
    p.add_argument("--md", default=None, help="also write the table as Markdown")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="compare two runs: folders, or the names `steelseg runs` prints (under ROOT)")
    p.set_defaults(func=cmd_runs)
