"""CPU inference speed: the Kaggle notebook loop against steelseg's backends, one process.

Same 256x1600 synthetic strips (half defect-free, as in Severstal), same U-Net segmenter weights.
Lines, each timed end to end from image file to RLE strings:

  baseline       eager PyTorch, batch 1, the loop a Kaggle notebook writes (cv2.imread, normalise,
                 model, sigmoid, threshold, minimum area, mask2rle)
  torch          steelseg Predictor, PyTorch backend (batch 4)
  onnx fp32      steelseg Predictor, ONNX Runtime (exported by steelseg export, parity-checked)
  onnx int8      the same, statically quantised (QDQ, per-channel)
  openvino fp32 / bf16 / int8 / int8-bf16   steelseg export --format openvino (when the openvino extra is
                 installed; a batch split over two CPU streams, the Predictor's default)
each of the steelseg lines with and without a binary gating classifier that skips the segmenter
on images it calls defect-free (trained here briefly on other synthetic strips).

Prints images/s, the ratio to the baseline, the model's GFLOPs per image, the GFLOP/s reached (and its share
of the fp32 and bf16 peaks, derived from /proc/cpuinfo as bench/backends.py does) and each
line's Kaggle Dice on the labelled test strips, and checks that every fp32 line writes the same masks as
the baseline loop.
Usage: python bench/inference.py [--images 16] [--threads 2] [--seg-minutes 6] [--gate-minutes 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SEG_THRESHOLD, MIN_AREA = 0.5, 0  # the notebook's post-processing, the same as the bundle's
LINES = (("onnx fp32", None), ("onnx int8", "int8"), ("openvino fp32", None), ("openvino bf16", "bf16"),
         ("openvino int8", "ov-int8"), ("openvino int8-bf16", "ov-int8"))


def _has_openvino() -> bool:
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def rows_dice(rows: list[list[str]], truth: list[np.ndarray]) -> float:
    """Kaggle mean Dice of one line's RLE rows against the labelled masks."""
    from steelseg import metrics
    from steelseg.data import rle

    acc = metrics.DiceAccumulator()
    for r, t in zip(rows, truth):
        pred = np.stack([rle.decode(x, t.shape[:2]) for x in r], axis=-1)
        acc.update(pred[None], t[None])
    return float(acc.compute().mean)


def cpu_info() -> str:
    from steelseg.machine import cpu_facts, cpu_model

    flags = (cpu_facts() or (None, set()))[1]
    isa = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni", "fma"))
    return f"{cpu_model()}; {os.cpu_count()} logical CPUs; {' '.join(isa) or 'no AVX flags read'}"


def mask2rle(img: np.ndarray) -> str:  # as in the public notebooks
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def baseline_loop(model, paths: list[Path], mean: float, std: float, keep: list | None = None) -> list[list[str]]:
    """The notebook loop: one image at a time, eager PyTorch, no batching."""
    import cv2
    import torch

    rows = []
    with torch.no_grad():
        for p in paths:
            img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            x = torch.from_numpy(((img / 255.0 - mean) / std).astype(np.float32))[None, None]
            probs = torch.sigmoid(model(x))[0].numpy()
            if keep is not None:
                keep.append(probs)
            masks = []
            for c in range(probs.shape[0]):
                m = (probs[c] > SEG_THRESHOLD).astype(np.uint8)
                if m.sum() < max(MIN_AREA, 1):
                    m[:] = 0
                masks.append(m)
            rows.append([mask2rle(m) for m in masks])
    return rows


def steelseg_loop(predictor, paths: list[Path]) -> tuple[list[list[str]], list[bool]]:
    from steelseg.data import rle

    rows, skipped = [], []
    for _, pred in predictor.predict_paths(paths):
        rows.append([rle.encode(pred.masks[..., c]) for c in range(pred.masks.shape[-1])])
        skipped.append(pred.skipped)
    return rows, skipped


def mask_diff(rows: list[list[str]], ref: list[list[str]], probs: list[np.ndarray], idx: list[int],
              shape: tuple[int, int]) -> tuple[int, int]:
    """(pixels that differ, of those the ones whose baseline probability is not within 1e-3 of the
    threshold) over the images ``idx``: near-threshold pixels may fall either side on any runtime."""
    from steelseg.data import rle

    differ = real = 0
    for i in idx:
        for c in range(len(ref[i])):
            if rows[i][c] == ref[i][c]:
                continue
            bad = rle.decode(rows[i][c], shape) != rle.decode(ref[i][c], shape)
            differ += int(bad.sum())
            real += int((bad & (np.abs(probs[i][c] - SEG_THRESHOLD) > 1e-3)).sum())
    return differ, real


def gflops(model, shape: tuple[int, ...]) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(shape))
    return counter.get_total_flops() / 1e9


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16, help="test images (half defect-free)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for every line")
    ap.add_argument("--encoder", default="resnet18", help="U-Net encoder (tu-test_resnet for a smoke run)")
    ap.add_argument("--classifier", default="mobilenetv3_large_100", help="timm gate classifier (a light one)")
    ap.add_argument("--train-images", type=int, default=160, help="synthetic strips the models train on")
    ap.add_argument("--gate-minutes", type=float, default=3.0, help="training budget of the gate")
    ap.add_argument("--seg-minutes", type=float, default=0.0,
                    help="training budget of the segmenter (0 = random weights: speed only, masks near 0.5)")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--skip-openvino", action="store_true", help="leave out the OpenVINO lines")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="steelseg-bench-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # models, bundles and data: hundreds of MB


def run(args: argparse.Namespace, tmp: Path) -> None:
    import torch

    from steelseg.data.images import read_image
    from steelseg.data.synth import SynthConfig, make_dataset
    from steelseg.inference.bundle import write_bundle
    from steelseg.inference.export import export_bundle
    from steelseg.inference.postprocess import PostProcess
    from steelseg.inference.predictor import Predictor
    from steelseg.models import create_segmenter
    from steelseg.models.checkpoint import save_weights, write_model_json
    from steelseg.schema import InputMeta, ModelMeta, ModelSpec
    from steelseg.training.config import load_config
    from steelseg.training.run import fit

    size = dict(height=args.height, width=args.width)
    test = make_dataset(tmp / "test", SynthConfig(images=args.images, seed=11, defect_free=0.5, **size))
    gate_data = make_dataset(tmp / "train", SynthConfig(images=args.train_images, seed=12, defect_free=0.5, **size))
    paths = sorted((test / "train_images").iterdir())
    names = ["class1", "class2", "class3", "class4"]

    common = [f"data.path={gate_data}", f"out_dir={tmp / 'runs'}", "track.mlflow=false", "data.num_workers=0",
              "data.crop=[256, 512]", "data.batch_size=8", "data.shift=0", "train.epochs=1000"]
    if args.seg_minutes > 0:  # a trained U-Net: masks and the int8 Dice change mean something
        t0 = time.perf_counter()
        cfg = load_config(None, common + ["name=seg", f"model.encoder={args.encoder}", "train.lr=0.002",
                                          f"train.max_minutes={args.seg_minutes}", "train.checkpoint_every=0"])
        seg_dir = fit(cfg, progress=False).run_dir / "model"
        seg_note = f"trained {(time.perf_counter() - t0) / 60:.1f} min"
    else:
        torch.manual_seed(0)
        net = create_segmenter("unet", args.encoder, 4, 1).eval()
        seg_dir = tmp / "seg" / "model"
        seg_dir.mkdir(parents=True)
        save_weights(net, seg_dir / "best.safetensors")
        write_model_json(seg_dir, ModelMeta(ModelSpec("segment", args.encoder, 4, 1, "unet"), names, InputMeta()))
        seg_note = "random weights"
    from steelseg.models.checkpoint import load_model

    seg, _ = load_model(seg_dir)

    # The gate: a light binary defect / no-defect classifier, trained on other strips.
    t0 = time.perf_counter()
    cfg = load_config(None, common + ["name=gate", "model.task=classify", "model.binary=true",
                                      f"model.encoder={args.classifier}", "train.loss=bce", "train.lr=0.002",
                                      f"train.max_minutes={args.gate_minutes}", "train.checkpoint_every=0"])
    gate_run = fit(cfg, progress=False).run_dir
    gate_minutes = (time.perf_counter() - t0) / 60

    plain = tmp / "bundle-plain"
    write_bundle(plain, [seg_dir], [], PostProcess([SEG_THRESHOLD] * 4, [MIN_AREA] * 4), kind="plain")
    gated = tmp / "bundle-gated"
    write_bundle(gated, [seg_dir], [gate_run], PostProcess([SEG_THRESHOLD] * 4, [MIN_AREA] * 4, None,
                                                           [0.5] * 4, 0.5), kind="pipeline")
    samples = [read_image(p, None) for p in paths[:2]]
    bundles = {"torch": (plain, gated)}
    int8_note = ""
    from steelseg.data.open import open_dataset

    ds = open_dataset(test)
    masks = [ds.load_mask(p.name) for p in paths]
    calib = [read_image(p, None) for p in sorted((gate_data / "train_images").iterdir())[:16]]
    val = [read_image(p, None) for p in paths]
    for name, quant in LINES:
        skip_ov = args.skip_openvino or not _has_openvino()
        if (quant in ("int8", "ov-int8") and args.skip_int8) or (name.startswith("openvino") and skip_ov):
            continue
        outs = []
        for b in (plain, gated):
            dst = tmp / f"{b.name}-{name.replace(' ', '-')}"
            # the bench reports the int8 / bf16 Dice change instead of refusing it
            if name.startswith("openvino"):
                from steelseg.inference.export_openvino import export_openvino

                precision = name.split()[1]
                rep = export_openvino(b, dst, samples, precision, calib, val, masks, max_dice_drop=1.0,
                                      threads=args.threads)
            else:
                rep = export_bundle(b, dst, samples, quant, calib if quant else (), val if quant else (),
                                    masks if quant else (), max_dice_drop=1.0, threads=args.threads)
            if quant and b is plain:
                int8_note += (f"{name} Kaggle Dice on the {len(val)} test images {rep.dice_before:.4f} -> "
                              f"{rep.dice_after:.4f}\n")
            outs.append(dst)
        bundles[name] = tuple(outs)

    g_seg = gflops(seg, (1, 1, args.height, args.width))
    gate_net, _ = load_model(gate_run / "model")
    g_cls = gflops(gate_net, (1, 1, args.height, args.width))
    truth_free = [not open_dataset(test).row(p.name)[[f"has_{c}" for c in range(1, 5)]].any() for p in paths]

    print(f"machine: {cpu_info()}")
    print(f"torch {torch.__version__}, threads {args.threads}; {len(paths)} images {args.width}x{args.height}, "
          f"{sum(truth_free)} defect-free; U-Net-{args.encoder} ({seg_note}) {g_seg:.1f} GFLOPs/image, "
          f"gate {args.classifier} {g_cls:.1f} GFLOPs/image (trained {gate_minutes:.1f} min)")
    ref_probs: list[np.ndarray] = []
    baseline_loop(seg, paths[:1], 0.449, 0.226)  # warm-up
    t_base, ref = timed(lambda: baseline_loop(seg, paths, 0.449, 0.226, ref_probs if not ref_probs else None))
    base_ips = len(paths) / t_base
    from backends import peaks  # bench/backends.py: the fp32 / bf16 peaks from /proc/cpuinfo

    fp32, bf16, how = peaks()
    print(f"peaks: {how}")
    print(f"{'line':<26}{'images/s':>10}{'x baseline':>12}{'GFLOP/s':>10}{'of fp32':>8}{'of bf16':>8}{'skipped':>9}"
          f"{'Dice':>8}  masks")
    g = g_seg * base_ips
    print(f"{'baseline (notebook loop)':<26}{base_ips:>10.2f}{1.0:>12.2f}{g:>10.1f}{g / fp32:>8.2f}{g / bf16:>8.2f}{0:>9}"
          f"{rows_dice(ref, masks):>8.4f}  reference")
    for name, (b_plain, b_gated) in bundles.items():
        for label, bundle in (("", b_plain), (" + gate", b_gated)):
            pred = Predictor.from_bundle(bundle, threads=args.threads)
            steelseg_loop(pred, paths[:1])  # warm-up: sessions, caches
            t, (rows, skipped) = timed(lambda: steelseg_loop(pred, paths))
            ips = len(paths) / t
            n_skip = sum(skipped)
            work = (g_seg * (len(paths) - n_skip) + (g_cls * len(paths) if label else 0)) / t
            segmented = [i for i, sk in enumerate(skipped) if not sk]
            differ, real = mask_diff(rows, ref, ref_probs, segmented, (args.height, args.width))
            pixels = len(segmented) * 4 * args.height * args.width
            if "int8" in name or "bf16" in name:
                same = f"{100 * differ / max(pixels, 1):.3f}% of mask pixels differ from the baseline"
            elif not differ:
                same = "identical"
            elif not real:
                same = f"identical but {differ} px within 1e-3 of the threshold"
            else:
                same = f"DIFFERENT: {real} px away from the threshold"
            if label:
                same += f" on {len(segmented)} segmented"
            if label:
                lost = sum(1 for i, sk in enumerate(skipped) if sk and not truth_free[i])
                same += f"; {lost} skipped image(s) had defects"
            print(f"{name + label:<26}{ips:>10.2f}{ips / base_ips:>12.2f}{work:>10.1f}{work / fp32:>8.2f}"
                  f"{work / bf16:>8.2f}{n_skip:>9}"
                  f"{rows_dice(rows, masks):>8.4f}  {same}")
    if int8_note:
        print(int8_note.rstrip())




if __name__ == "__main__":
    main()
