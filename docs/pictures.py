"""Make the documentation's pictures (docs/img/) with steelseg itself, so they never drift from the code:

- layouts.jpg: one synthetic strip written in five layouts (kaggle, masks, coco, labelme, yolo) by `steelseg
  convert` and read back by `open_dataset`: the same masks from each (data.md);
- eda-counts.png, eda-areas.png: plots of `steelseg eda` on the synthetic set (data.md);
- prediction.jpg: the demo bundle's prediction above the truth (the overlays of `steelseg predict --overlays`),
  on the defective synthetic strip it scores best on and the one it scores worst on (quickstart.md);
- review-page.png: the review page of `steelseg serve --queue` in headless Chromium (line.md).

python docs/pictures.py [--bundle runs/demo/bundle] [--out docs/img] [--only layouts,eda]

The last two need a bundle (`make demo` makes runs/demo/bundle); the screenshot needs `chromium`. What cannot be
made is said and left as it is; the script exits 1 when it made nothing.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PICTURES = {"layouts": ["layouts.jpg"], "eda": ["eda-counts.png", "eda-areas.png"],
            "prediction": ["prediction.jpg"], "review": ["review-page.png"]}
LAYOUTS = ["kaggle", "masks", "coco", "labelme", "yolo"]


def _jpeg(path: Path, rgb: np.ndarray) -> None:
    """Strips are noise to PNG: a JPEG of quality 85 keeps the picture at a tenth of the bytes."""
    import cv2

    from steelseg import viz

    viz.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "steelseg.cli", *args], check=True, stdout=subprocess.DEVNULL)


def layouts(synth: Path, work: Path, out: Path) -> None:
    from steelseg import viz
    from steelseg.data.open import open_dataset

    first = open_dataset(synth)
    image_id = max(first.image_ids, key=lambda i: int(first.load_mask(i).any(axis=(0, 1)).sum()))  # most classes
    rows = []
    for name in LAYOUTS:
        root = synth if name == "kaggle" else work / f"as-{name}"
        if name != "kaggle":
            _cli("convert", str(synth), str(root), "--to", name)
        ds = open_dataset(root, first.class_names)
        match = next(i for i in ds.image_ids if Path(i).stem == Path(image_id).stem)
        pic = viz.overlay(ds.load_image(match, None), ds.load_mask(match))
        how = "steelseg synth" if name == "kaggle" else f"steelseg convert --to {name}"
        rows.append(viz.caption(pic, f"{how}, read back: layout {ds.layout}, {image_id}"))
    pic = rows[0]
    for r in rows[1:]:
        pic = viz.side_by_side(pic, r)
    _jpeg(out / "layouts.jpg", pic)


def eda(synth: Path, work: Path, out: Path) -> None:
    _cli("eda", str(synth), "--out", str(work / "eda"))
    shutil.copyfile(work / "eda" / "img" / "counts.png", out / "eda-counts.png")
    shutil.copyfile(work / "eda" / "img" / "areas.png", out / "eda-areas.png")


def prediction(synth: Path, work: Path, out: Path, bundle: Path) -> None:
    """The bundle's prediction above the truth, on the defective strip of the set it scores best on and the one
    it scores worst on (Kaggle Dice over the classes): what an overlay looks like, at both ends."""
    from steelseg import metrics, viz
    from steelseg.data.open import open_dataset
    from steelseg.inference.predictor import Predictor

    ds = open_dataset(synth)
    predictor = Predictor.from_bundle(bundle)
    scored = []
    for image_id in ds.image_ids:
        truth = ds.load_mask(image_id)
        if not truth.any():
            continue
        image = ds.load_image(image_id, None)
        pred = predictor.predict([image])[0].masks
        dice = metrics.kaggle_dice(pred[None], truth[None]).mean
        scored.append((dice, image_id, image, pred, truth))
    scored.sort(key=lambda t: t[0])
    pic = None
    for dice, image_id, image, pred, truth in (scored[-1], scored[0]):
        pair = viz.side_by_side(viz.caption(viz.overlay(image, pred), f"{image_id}: predicted (Dice {dice:.2f})"),
                                viz.caption(viz.overlay(image, truth), f"{image_id}: truth"))
        pic = pair if pic is None else viz.side_by_side(pic, np.pad(pair, ((8, 0), (0, 0), (0, 0)),
                                                                    constant_values=255))
    _jpeg(out / "prediction.jpg", pic)


def review(synth: Path, work: Path, out: Path, bundle: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise RuntimeError("chromium is not installed")
    import httpx

    queue = work / "queue"
    queue.mkdir()
    for p in sorted((synth / "train_images").iterdir())[:12]:
        shutil.copyfile(p, queue / p.name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "steelseg.cli", "serve", str(bundle), "--queue", str(queue),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/queue", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--virtual-time-budget=8000", "--window-size=1400,900", f"--screenshot={out / 'review-page.png'}",
                        f"http://127.0.0.1:{port}/"], check=True, capture_output=True, timeout=120)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("runs/demo/bundle"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "img")
    ap.add_argument("--only", default=",".join(PICTURES), help=f"some of {','.join(PICTURES)}")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    made = 0
    with tempfile.TemporaryDirectory(prefix="steelseg-pictures-") as tmp:
        work = Path(tmp)
        synth = work / "synth"
        _cli("synth", str(synth), "--images", "24", "--seed", "3")
        for what in args.only.split(","):
            needs_bundle = what in ("prediction", "review")
            if needs_bundle and not (args.bundle / "bundle.json").is_file():
                print(f"{what}: skipped, no bundle at {args.bundle} (make demo makes it)", file=sys.stderr)
                continue
            try:
                fn = globals()[what]
                fn(synth, work, args.out, args.bundle) if needs_bundle else fn(synth, work, args.out)
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                print(f"{what}: not made ({exc})", file=sys.stderr)
                continue
            made += 1
            print(f"{what}: {', '.join(str(args.out / p) for p in PICTURES[what])}")
    return 0 if made else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
