"""RLE speed: steelseg.rle against the common Kaggle NumPy pair, same mask, same process.

Prints per-call times and the ratio (baseline time / steelseg time) for encode + decode of a
256x1600 mask with about 5% defect pixels in several blobs, after checking identical output.
Usage: python bench/rle.py [--repeat N]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from steelseg.data import rle


# --- the pair found in public Severstal notebooks, written out as they are there --------------
def mask2rle(img):
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def rle2mask(mask_rle, shape=(1600, 256)):
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape).T
# -----------------------------------------------------------------------------------------------


def make_mask(seed: int = 0, target: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((256, 1600), np.uint8)
    while m.mean() < target:
        center = (int(rng.integers(0, 1600)), int(rng.integers(0, 256)))
        axes = (int(rng.integers(10, 80)), int(rng.integers(5, 60)))
        cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return m


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    masks = [make_mask(s) for s in range(5)]
    for m in masks:  # identical output, both directions
        code = rle.encode(m)
        assert code == mask2rle(m), "encode differs from the Kaggle baseline"
        assert np.array_equal(rle.decode(code, m.shape), rle2mask(code, (1600, 256)))
        assert np.array_equal(rle.decode(code, m.shape), m)
    codes = [rle.encode(m) for m in masks]

    def ours() -> None:
        for m, c in zip(masks, codes):
            rle.encode(m)
            rle.decode(c, (256, 1600))

    def baseline() -> None:
        for m, c in zip(masks, codes):
            mask2rle(m)
            rle2mask(c, (1600, 256))

    runs = sum(len(c.split()) // 2 for c in codes) / len(codes)
    share = float(np.mean([m.mean() for m in masks]))
    t_base = best_time(baseline, args.repeat) / len(masks)
    t_ours = best_time(ours, args.repeat) / len(masks)
    enc_b = best_time(lambda: [mask2rle(m) for m in masks], args.repeat) / len(masks)
    enc_o = best_time(lambda: [rle.encode(m) for m in masks], args.repeat) / len(masks)
    dec_b = best_time(lambda: [rle2mask(c, (1600, 256)) for c in codes], args.repeat) / len(masks)
    dec_o = best_time(lambda: [rle.decode(c, (256, 1600)) for c in codes], args.repeat) / len(masks)
    print(f"mask 256x1600, {100 * share:.1f}% defect pixels, {runs:.0f} runs on average; outputs identical")
    print(f"encode   kaggle {enc_b:7.3f} ms  steelseg {enc_o:7.3f} ms  ratio {enc_b / enc_o:5.1f}x")
    print(f"decode   kaggle {dec_b:7.3f} ms  steelseg {dec_o:7.3f} ms  ratio {dec_b / dec_o:5.1f}x")
    print(f"enc+dec  kaggle {t_base:7.3f} ms  steelseg {t_ours:7.3f} ms  ratio {t_base / t_ours:5.1f}x")


if __name__ == "__main__":
    main()
