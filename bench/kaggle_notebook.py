"""The Kaggle kit's notebook runtime on this machine: images/s, projected minutes for the hidden set, and
peak memory of streaming prediction on N strips against a baseline of fewer strips (each run in a fresh
process, so its peak resident memory is its own). Memory stays flat when the ratio is near 1.

    python bench/kaggle_notebook.py --bundle runs/demo/bundle [--images 500] [--baseline 50] [--threads 2]

Runs the same functions the notebook calls (steelseg.kaggle.runtime: plan_run, predict_submission,
validate_submission) on synthetic 256x1600 strips listed in a sample_submission.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time
from pathlib import Path
from steelseg.kaggle import runtime as kr
root, n_hidden = Path(sys.argv[1]), int(sys.argv[2])
kit = {"bundle_dataset": "-", "competition": "-", "hidden_images": n_hidden, "minutes": 50}
found = kr.find_inputs(root, kit)
sample = kr.read_sample(found.competition / "sample_submission.csv")
plan = kr.plan_run(found.bundle, [found.test_images / i for i in sample.images], "cpu", kit)
res = kr.predict_submission(found, sample, plan, "cpu", root / "submission.csv", every=10 ** 9)
check = kr.validate_submission(root / "submission.csv", sample, res["sizes"], len(json.loads(
    (found.bundle / "bundle.json").read_text())["class_names"]))
print(json.dumps({"images": res["images"], "seconds": res["seconds"], "tta": plan.tta, "notes": plan.notes,
                  "projected_minutes": plan.projected_minutes, "rows": check["rows"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _inputs(root: Path, bundle: Path, n: int) -> Path:
    """``root/input`` with the bundle (as the kit ships it) and ``n`` strips + a sample submission."""
    import shutil

    from PIL import Image

    comp = root / "input" / "competition"
    (comp / "test_images").mkdir(parents=True)
    shutil.copytree(bundle, root / "input" / "bundle")
    (root / "input" / "bundle" / "steelseg-kit-bundle.json").write_text("{}")
    rng = np.random.default_rng(0)
    base = (rng.random((256, 1600)) * 60 + 90).astype(np.uint8)
    ids = []
    for i in range(n):
        img = np.roll(base, 37 * i, axis=1)
        if i % 2:  # half of the strips with a bright streak
            img = img.copy()
            img[100 + i % 50:110 + i % 50, 200:900] = 230
        name = f"{i:06d}.jpg"
        Image.fromarray(img).save(comp / "test_images" / name, quality=90)
        ids.append(name)
    with open(comp / "sample_submission.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["ImageId", "EncodedPixels", "ClassId"])
        w.writerows([i, "1 409600", 0] for i in ids)
    return root / "input"


def _run(inputs: Path, hidden: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(inputs), str(hidden)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--baseline", type=int, default=50)
    ap.add_argument("--hidden", type=int, default=5506, help="hidden test images for the projection")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.baseline, args.images):
            out[n] = _run(_inputs(Path(tmp) / str(n), args.bundle, n), args.hidden, args.threads)
    small, big = out[args.baseline], out[args.images]
    rate = big["images"] / big["seconds"]
    print(f"bundle {args.bundle}; {os.cpu_count()} CPUs, {args.threads} threads; TTA {'on' if big['tta'] else 'off'}")
    for n, r in out.items():
        print(f"  {n:>5} strips: {r['images'] / r['seconds']:.2f} img/s, peak RSS {r['peak_mb']:.0f} MB, "
              f"{r['rows']} rows valid")
    print(f"peak memory ratio {args.images} / {args.baseline} strips: {big['peak_mb'] / small['peak_mb']:.3f}")
    print(f"projected for {args.hidden} strips at {rate:.2f} img/s: {args.hidden / rate / 60:.1f} min here "
          f"(the notebook's own projection: {big['projected_minutes']:.1f} min)")


if __name__ == "__main__":
    main()
