"""``make demo``: the main job end to end on synthetic data.

python -m steelseg.demo OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from steelseg.cli import main as cli


def run(out: Path) -> None:
    data = out / "data"
    steps = [
        ["synth", str(data), "--images", "120", "--seed", "0"],
        ["info", str(data)],
        ["folds", str(data), "--k", "4", "--out", str(data / "folds.csv")],
    ]
    for step in steps:
        print(f"\n$ steelseg {' '.join(step)}", flush=True)
        rc = cli(step)
        if rc:
            raise SystemExit(rc)


if __name__ == "__main__":
    run(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
