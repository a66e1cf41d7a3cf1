"""One model, every backend and precision: images/s and Kaggle Dice of bundles on the same labelled images.

python bench/backends.py --data DATA --split BUNDLE/segmenters/0/split.json BUNDLE [BUNDLE ...] [--images 32]

Every bundle (torch, onnx, onnx int8, openvino fp32 / bf16 / int8, as `steelseg export` wrote them) predicts
the validation images of ``--split`` (its "val" list), one process, ``--threads`` threads each. Speed is timed
on the first ``--images`` of them after a warm-up, end to end from decoded image to masks; Dice, the all-empty
score and the image-level misses / false alarms use all of them. The first bundle is the baseline of the
ratio column. GFLOP/s: the first PyTorch bundle's segmenter's FLOPs per image (torch's FlopCounterMode)
times images/s. The peaks it is compared with are derived from /proc/cpuinfo and printed: cores x GHz x
2 FMA units x 16 fp32 lanes x 2 (fp32); AVX-512 BF16 doubles that; AMX tiles reach far more, so the bf16
line's ratio to the fp32 peak is what says whether OpenVINO used them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def peaks() -> tuple[float, float, str]:
    """(fp32 peak, bf16 peak) in GFLOP/s from the machine's facts (steelseg.machine: the fp32 lanes of the
    widest vector unit the libraries use, 16 with AVX-512 and 8 with AVX2, and native bf16), and how."""
    from steelseg.machine import machine_facts

    m = machine_facts()
    mhz = 0.0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            mhz = float(line.split(":")[1])
            break
    fp32 = m.cores * mhz / 1000 * 2 * m.fp32_lanes * 2
    bf16 = fp32 * 2 if m.native_bf16 and m.avx512 else fp32
    how = (f"{m.cores} cores x {mhz / 1000:.2f} GHz x 2 FMA units x {m.fp32_lanes} fp32 lanes ({m.isa()}) x 2 flops = "
           f"{fp32:.0f} GFLOP/s fp32; native bf16 x2 = {bf16:.0f}; amx: {'yes' if m.amx else 'no'}")
    return fp32, bf16, how


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", required=True, type=Path, help="split.json whose val list is predicted")
    ap.add_argument("--images", type=int, default=32, help="images timed (Dice uses every val image)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eager", action="store_true", help="first, the notebook loop (eager PyTorch, batch 1) on "
                    "the first PyTorch bundle's segmenter, as the ratio's baseline")
    ap.add_argument("--streams", type=int, default=None, help="OpenVINO streams (default: the Predictor's, 2 "
                    "with 2+ threads; 1 = one request on every thread)")
    args = ap.parse_args()

    import torch

    from steelseg.data.open import open_dataset
    from steelseg.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    first = Predictor.from_bundle(args.bundles[0], threads=args.threads)
    ds = open_dataset(args.data, first.class_names)
    val = json.loads(args.split.read_text())["val"]
    images = [ds.load_image(i, None) for i in val]
    truth = [ds.load_mask(i) for i in val]
    flops = next((f for f in (_flops(b, images[0]) for b in args.bundles) if f), 0.0)
    fp32, bf16, how = peaks()
    print(f"{len(val)} validation images ({images[0].shape[1]}x{images[0].shape[0]}); timing on {args.images}; "
          f"{args.threads} threads; OpenVINO streams {args.streams or 'auto'}; batch "
          f"{first.batch_for(images[0].shape[:2])}; {flops:.1f} GFLOPs/image\npeaks: {how}")
    print(f"{'bundle':<28}{'backend':>10}{'precision':>10}{'img/s':>8}{'ratio':>7}{'GFLOP/s':>9}{'of fp32':>8}"
          f"{'of bf16':>8}{'Dice':>8}{'empty':>8}{'missed':>8}{'flagged':>8}")
    n = min(args.images, len(images))
    base = None
    if args.eager:  # the notebook loop on the first PyTorch bundle's segmenter: the ratio's baseline
        folder = next(b for b in args.bundles if (b / "segmenters" / "0" / "best.safetensors").is_file())
        loop = _eager_loop(folder, Predictor.from_bundle(folder).pp)
        loop(images[:1])
        t0 = time.perf_counter()
        loop(images[:n])
        base = n / (time.perf_counter() - t0)
        _row("eager loop (notebook)", "torch", "fp32", base, base, flops, (fp32, bf16), loop(images), truth)
    for b in args.bundles:
        pred = Predictor.from_bundle(b, threads=args.threads, streams=args.streams)
        pred.predict(images[:pred.batch_for(images[0].shape[:2])])
        t0 = time.perf_counter()
        pred.predict(images[:n])
        ips = n / (time.perf_counter() - t0)
        base = base or ips
        _row(b.name, pred.backend, _precision(b), ips, base, flops, (fp32, bf16), [p.masks for p in pred.predict(images)],
             truth)
    return 0


def _row(name: str, backend: str, prec: str, ips: float, base: float, flops: float, peak: tuple[float, float],
         masks: list[np.ndarray], truth: list[np.ndarray]) -> None:
    from steelseg import metrics

    acc, empty = metrics.DiceAccumulator(), metrics.DiceAccumulator()
    missed = flagged = 0
    for m, t in zip(masks, truth):
        acc.update(m[None], t[None])
        empty.update(np.zeros_like(t)[None], t[None])
        missed += int(t.any() and not m.any())
        flagged += int(m.any() and not t.any())
    print(f"{name:<28}{backend:>10}{prec:>10}{ips:>8.2f}{ips / base:>7.2f}{flops * ips:>9.1f}"
          f"{flops * ips / peak[0]:>8.2f}{flops * ips / peak[1]:>8.2f}{acc.compute().mean:>8.4f}"
          f"{empty.compute().mean:>8.4f}{missed:>4}/{sum(bool(t.any()) for t in truth):<3}"
          f"{flagged:>4}/{sum(not t.any() for t in truth):<3}")


def _eager_loop(folder: Path, pp):
    """What a notebook writes: one image at a time through the eager PyTorch model, sigmoid, then the bundle's
    own post-processing so the masks compare (the input made by steelseg's to_input, so the pixels match)."""
    import torch

    from steelseg.data.images import to_input
    from steelseg.inference import postprocess
    from steelseg.models.checkpoint import load_model

    net, meta = load_model(folder / "segmenters" / "0")
    net.eval()
    spec = meta.input.spec()

    def loop(images: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        with torch.no_grad():
            for img in images:
                x = torch.from_numpy(np.ascontiguousarray(to_input([img], spec), np.float32))
                probs = torch.sigmoid(net(x))[0].numpy().transpose(1, 2, 0)
                out.append(postprocess.apply(probs, pp))
        return out

    return loop


def _precision(bundle: Path) -> str:
    meta = json.loads(next(bundle.glob("segmenters/0/model.json")).read_text())
    w = meta.get("weights") or {}
    if w.get("format") == "openvino":
        return str(w.get("precision", "fp32"))
    return "int8" if w.get("quantized") else "fp32"


def _flops(bundle: Path, image: np.ndarray) -> float:
    """GFLOPs per image of the bundle's PyTorch segmenter (0 when the bundle holds none)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from steelseg.data.images import to_input
    from steelseg.models.checkpoint import load_model, read_model_json

    folder = bundle / "segmenters" / "0"
    if not (folder / "best.safetensors").is_file():
        return 0.0
    net, meta = load_model(folder, meta=read_model_json(folder))
    x = torch.from_numpy(np.ascontiguousarray(to_input([image], meta.input.spec()), np.float32))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() / 1e9


if __name__ == "__main__":
    raise SystemExit(main())
