"""`steelseg fit` beside what a line engineer tries first: ultralytics YOLO segmentation from scratch.

The peer trains on exactly the images each of the fit's models trained on (the fit folder's
``runs/*/split.json``), for the same wall-clock minutes that model trained (the sum of its
``metrics.csv`` epoch seconds, unless ``--minutes``), on the same machine, and its predicted masks on
the held-out images are scored with steelseg's own metrics: Kaggle Dice, mIoU over the defect
classes, image AP, images missed and false alarms, beside all-empty and beside the fit's numbers.

The YOLO task is ultralytics' ``semantic`` one (``yolo26n-sem``, new in 8.4): one PNG of class ids per
image, which is what per-class defect masks are (background 0, class c -> c; where classes overlap the
later class wins, said in the output). The instance ``segment`` task would need polygons per defect
and loses thin cracks at its mask resolution. Its input size is the images' long side rounded up to
32 and capped at 640 (ultralytics' default): 224 for NEU-Seg, 640 for KolektorSDD (~0.5x, as the fit).
Its image score for AP is the predicted area of the class (its predictor gives class maps, no
probabilities); it is not tuned (a line engineer takes the class map as it comes).

Offline: no weights (``yolo26n-sem.yaml``, random init), plots off (they fetch a font), no
auto-install (YOLO_AUTOINSTALL=0), YOLO_OFFLINE=1, its loggers (MLflow and the rest) off in a
settings file under WORK. ultralytics is a bench-only dependency:

    pip install --no-deps ultralytics==8.4.190 ultralytics-thop ultralytics-platform polars
    python bench/peers.py FIT_DIR [--work /tmp/peers] [--minutes M] [--out peers.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _train_minutes(run: Path) -> float:
    """Wall minutes the fit's model trained: its epochs' seconds (validation included)."""
    with open(run / "metrics.csv", newline="") as f:
        return sum(float(r["seconds"] or 0) for r in csv.DictReader(f)) / 60


def _imgsz(ds) -> int:
    side = int(max(ds.table["height"].max(), ds.table["width"].max()))
    return min(640, -(-side // 32) * 32)


def _write_split(ds, ids: list[str], root: Path, part: str) -> list[Path]:
    """images/PART/*.png (decoded pixels) and masks/PART/*.png (class ids); the image paths."""
    from PIL import Image

    (root / "images" / part).mkdir(parents=True, exist_ok=True)
    (root / "masks" / part).mkdir(parents=True, exist_ok=True)
    paths, overlaps = [], 0
    for i, image_id in enumerate(ids):
        img, mask = ds.load_image(image_id), ds.load_mask(image_id)
        label = np.zeros(mask.shape[:2], np.uint8)
        overlaps += int((mask.sum(-1) > 1).any())
        for c in range(mask.shape[-1]):
            label[mask[..., c] > 0] = c + 1
        name = f"{i:06d}.png"
        Image.fromarray(img).save(root / "images" / part / name)
        Image.fromarray(label).save(root / "masks" / part / name)
        paths.append(root / "images" / part / name)
    if overlaps:
        print(f"  {part}: {overlaps} image(s) with overlapping classes: the later class wins there")
    return paths


def _yolo_data(ds, split: dict, root: Path) -> tuple[Path, list[Path]]:
    import yaml

    if not (root / "data.yaml").exists():
        _write_split(ds, split["train"], root, "train")
        _write_split(ds, split["val"], root, "val")
        names = {0: "background", **{c + 1: n for c, n in enumerate(ds.class_names)}}
        (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images/train",
                                                        "val": "images/val", "masks_dir": "masks",
                                                        "names": names}))
    return root / "data.yaml", sorted((root / "images" / "val").glob("*.png"))


def _train(data_yaml: Path, imgsz: int, minutes: float, batch: int, work: Path, seed: int) -> Path:
    """Train yolo26n-sem from scratch for ``minutes``; the best checkpoint (ultralytics' own choice)."""
    from ultralytics import YOLO

    best = work / "train" / "weights" / "best.pt"
    if best.exists():
        return best
    model = YOLO("yolo26n-sem.yaml", task="semantic")
    model.train(data=str(data_yaml), imgsz=imgsz, time=minutes / 60, epochs=1000, batch=batch, device="cpu",
                workers=0, plots=False, amp=False, pretrained=False, project=str(work), name="train",
                exist_ok=True, seed=seed, verbose=False, cache=False)
    return best


def _predict(weights: Path, images: list[Path], imgsz: int, num_classes: int) -> list[np.ndarray]:
    """(H, W, C) bool masks from YOLO's class maps, one per image (sizes may differ)."""
    from ultralytics import YOLO

    model = YOLO(str(weights), task="semantic")
    out = []
    for r in model.predict([str(p) for p in images], imgsz=imgsz, device="cpu", verbose=False, stream=True):
        cmap = r.semantic_mask.data.cpu().numpy()
        out.append(np.stack([cmap == c + 1 for c in range(num_classes)], -1))
    return out


def _score(preds: list[np.ndarray], trues: list[np.ndarray]) -> dict:
    """steelseg's metrics over images of any sizes: Kaggle Dice (and all-empty), mIoU, image AP, misses."""
    from steelseg import metrics as M

    k = trues[0].shape[-1]
    counts = [M.pair_counts(p, t) for p, t in zip(preds, trues)]
    inter, parea, tarea = (np.concatenate([c[j] for c in counts]) for j in range(3))
    dice = float(M.dice_from_counts(inter, parea, tarea).mean())
    empty = float(M.dice_from_counts(np.zeros_like(inter), np.zeros_like(parea), tarea).mean())
    cm = sum(M.confusion_matrix(M.labels_from_masks(p), M.labels_from_masks(t), k + 1) for p, t in zip(preds, trues))
    area, has = parea, tarea > 0
    ap = [M.average_precision(area[:, c], has[:, c]) for c in range(k)]
    det = [M.detection_counts(area[:, c] > 0, has[:, c]) for c in range(k)]
    return {"dice": float(dice), "all_empty": float(empty), "miou": M.mean_iou(cm),
            "image_ap": float(np.nanmean(ap)) if np.isfinite(ap).any() else None,
            "missed": sum(d.missed for d in det), "false_alarms": sum(d.false_alarms for d in det),
            "defective": sum(d.defective for d in det), "defect_free": sum(d.defect_free for d in det),
            "n": len(trues)}


def _fit_numbers(fit: dict, k: int) -> dict:
    """The fit's held-out numbers for its model k (untuned Dice, mIoU, image AP)."""
    return {key: fit[key][k] for key in ("untuned_dice", "miou", "image_ap")
            if isinstance(fit.get(key), list) and len(fit[key]) > k}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fit", type=Path, help="a finished `steelseg fit` folder")
    ap.add_argument("--work", type=Path, default=Path("/tmp/peers"), help="YOLO datasets and runs go here")
    ap.add_argument("--minutes", type=float, default=None, help="per model (default: what each fit model took)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON of the results (default WORK/peers.json)")
    args = ap.parse_args(argv)
    threads = len(os.sched_getaffinity(0))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # ultralytics would set 1 (a CPU run on one core)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_VERBOSE", "0")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.work / "config"))  # its settings stay out of ~/.config
    from ultralytics import settings

    settings.update({k: False for k, v in settings.items() if v is True})  # loggers, sync, hub: all off
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # the cores steelseg trains with

    from steelseg.data.open import open_dataset
    from steelseg.planning.plan import read_plan

    fit = json.loads((args.fit / "fit.json").read_text())
    plan = read_plan(args.fit / "plan.json")
    ds = open_dataset(plan.data, plan.class_names, layout=plan.layout, options=plan.layout_options)
    runs = sorted(p.parent for p in (args.fit / "runs").glob("*/split.json"))
    imgsz, rows, preds, trues = _imgsz(ds), [], [], []
    print(f"{ds.root}: {len(ds.table)} images, {len(runs)} model(s); YOLO yolo26n-sem from scratch at imgsz {imgsz}, "
          f"{torch.get_num_threads()} threads")
    for k, run in enumerate(runs):
        split = json.loads((run / "split.json").read_text())
        minutes = args.minutes or _train_minutes(run)
        work = args.work / run.name
        data_yaml, images = _yolo_data(ds, split, work / "data")
        t0 = time.time()
        best = _train(data_yaml, imgsz, minutes, args.batch, work, args.seed)
        trained = (time.time() - t0) / 60
        pred = _predict(best, images, imgsz, ds.num_classes)
        true = [ds.load_mask(i) > 0 for i in split["val"]]
        preds.append(pred)
        trues.append(true)
        row = {"run": run.name, "train_images": len(split["train"]), "val_images": len(split["val"]),
               "minutes": round(minutes, 2), "yolo_wall_minutes": round(trained, 2),
               "yolo": _score(pred, true), "fit": _fit_numbers(fit, k)}
        rows.append(row)
        print(f"{run.name}: {minutes:.1f} min a model; YOLO " + json.dumps(row["yolo"]) + "; fit "
              + json.dumps(row["fit"]), flush=True)
    pooled = _score([p for ps in preds for p in ps], [t for ts in trues for t in ts])
    result = {"data": str(ds.root), "imgsz": imgsz, "rows": rows, "yolo_pooled": pooled,
              "fit": {k: fit.get(k) for k in ("oof_dice", "oof_dice_final", "all_empty_dice", "image_ap",
                                                 "missed", "false_alarms", "steps_per_model")},
              "machine": plan.machine.get("cpu"), "ultralytics": __import__("ultralytics").__version__}
    out = args.out or args.work / "peers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    f = result["fit"]
    print(f"pooled over {len(runs)} held-out set(s): YOLO Kaggle Dice {pooled['dice']:.4f} (all-empty "
          f"{pooled['all_empty']:.4f}), mIoU {pooled['miou']:.4f}, image AP {pooled['image_ap']}, missed "
          f"{pooled['missed']}/{pooled['defective']}, false alarms {pooled['false_alarms']}/{pooled['defect_free']}")
    print(f"steelseg fit: tuned Dice {f['oof_dice']}, AP {f['image_ap']}, missed {f['missed']}, "
          f"false alarms {f['false_alarms']}  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
