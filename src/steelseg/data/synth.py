"""Synthetic steel-strip images in the Kaggle Severstal layout, for tests and the demo.

Each image has a rolled-steel look (texture along the rolling direction, which runs along the long
axis, uneven lighting, sensor noise) and may carry four visibly different defect types modelled on
the Severstal classes:

1. ``pits``: clusters of small dark pits;
2. ``streaks``: thin dark streaks along the rolling direction (rarest);
3. ``scratches``: long bright scratch bands at a slight angle (most common);
4. ``blotches``: large dark blotchy areas.

Defect masks are the exact painted shapes, so a segmentation model can learn them. Output is
deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from steelseg.data import rle
from steelseg.data.kaggle import write_kaggle_csv
from steelseg.fsutil import atomic_text
from steelseg.viz import imwrite

__all__ = ["SynthConfig", "CLASS_NAMES", "make_dataset", "make_image"]

CLASS_NAMES = ["pits", "streaks", "scratches", "blotches"]
# Share of each class among defect images, shaped like Severstal's (3 >> 1 ~ 4 > 2).
CLASS_PROBS = np.array([0.13, 0.05, 0.70, 0.12])


@dataclass
class SynthConfig:
    images: int = 100
    height: int = 256
    width: int = 1600
    defect_free: float = 0.45
    second_class: float = 0.12
    seed: int = 0
    quality: int = 92

    def __post_init__(self) -> None:
        from steelseg.errors import ConfigError

        if self.images < 1:
            raise ConfigError(f"--images {self.images}: must be >= 1")
        if not (32 <= self.height <= 16384 and 32 <= self.width <= 16384):
            raise ConfigError(f"--height/--width {self.height}x{self.width}: each must be in 32..16384")
        if not 0.0 <= self.defect_free <= 1.0:
            raise ConfigError(f"--defect-free {self.defect_free}: a share in 0..1")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: coarse random grid resized up (cheap and smooth)."""
    h, w = shape
    small = rng.standard_normal((max(2, h // cell[0]), max(2, w // cell[1]))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = np.full((h, w), rng.uniform(95, 145), np.float32)
    # Rolling texture: streaky noise stretched along x (the rolling direction).
    img += 5.0 * _smooth_noise(rng, (h, w), (2, 48))
    img += 3.0 * _smooth_noise(rng, (h, w), (1, 12))
    # Uneven lighting: slow gradient along the strip and a darker band at one edge.
    x = np.linspace(0, 1, w, dtype=np.float32)
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    img += rng.uniform(5, 18) * np.cos(2 * np.pi * (x * rng.uniform(0.3, 1.2) + rng.uniform()))
    img -= rng.uniform(0, 15) * y**2
    return img


def _paint(img: np.ndarray, shape: np.ndarray, delta: float, rng: np.random.Generator) -> None:
    """Darken/brighten ``img`` inside a binary ``shape`` with soft edges and a mottled inside."""
    soft = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 1.2)
    texture = 1.0 + 0.25 * _smooth_noise(rng, img.shape, (8, 8))
    img += delta * soft * texture


def _scale(h: int, w: int) -> float:
    """Size of features relative to a 1600x256 Severstal image."""
    return float(np.sqrt(h * w / (256 * 1600)))


def _pits(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    s = _scale(h, w)
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0.03, 0.97) * w, rng.uniform(0.1, 0.9) * h
        spread = rng.uniform(8, 22) * s
        for _ in range(rng.integers(6, 18)):
            px = int(np.clip(cx + rng.normal(0, spread), 0, w - 1))
            py = int(np.clip(cy + rng.normal(0, spread), 0, h - 1))
            cv2.circle(m, (px, py), max(1, int(rng.uniform(2, 6) * s + 0.5)), 1, -1)
    return m


def _streaks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 3)):
        length = rng.uniform(0.08, 0.26) * w
        x0, y0 = rng.uniform(0, w - length), rng.uniform(0.05, 0.95) * h
        xs = np.linspace(x0, x0 + length, 40)
        ys = y0 + np.cumsum(rng.normal(0, 0.6 * _scale(h, w), xs.size))
        pts = np.stack([xs, np.clip(ys, 1, h - 2)], axis=1).astype(np.int32)
        cv2.polylines(m, [pts], False, 1, max(1, int(rng.uniform(2, 4) * _scale(h, w) + 0.5)))
    return m


def _scratches(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    s = _scale(h, w)
    for _ in range(rng.integers(1, 3)):
        length = rng.uniform(200, 800) * s
        angle = np.deg2rad(rng.uniform(-25, 25) + (90 if rng.uniform() < 0.3 else 0))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        p0 = (int(cx - dx), int(cy - dy))
        p1 = (int(cx + dx), int(cy + dy))
        cv2.line(m, p0, p1, 1, max(2, int(rng.uniform(6, 16) * s)))
    if not m.any():  # a band that fell off the image: put one through the middle
        cv2.line(m, (0, h // 2), (w - 1, h // 2), 1, max(2, int(8 * s)))
    return m


def _blotches(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    s = _scale(h, w)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.15, 0.85) * h
    for _ in range(rng.integers(3, 7)):
        center = (int(cx + rng.normal(0, 50 * s)), int(cy + rng.normal(0, 25 * s)))
        axes = (max(2, int(rng.uniform(25, 90) * s)), max(2, int(rng.uniform(15, 60) * s)))
        cv2.ellipse(m, center, axes, rng.uniform(0, 180), 0, 360, 1, -1)
    # Ragged edge: keep the ellipse union where smoothed noise allows it.
    soft = cv2.GaussianBlur(m.astype(np.float32), (0, 0), max(1.0, 6 * s))
    edge = soft + 0.25 * _smooth_noise(rng, (h, w), (6, 6))
    out = ((edge > 0.5) & (soft > 0.1)).astype(np.uint8)
    return out if out.any() else m


_SHAPES = [(_pits, -55.0), (_streaks, -45.0), (_scratches, 38.0), (_blotches, -40.0)]


def make_image(rng: np.random.Generator, classes: list[int], h: int = 256, w: int = 1600
               ) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W) uint8 image and its (H, W, 4) mask holding the given 0-based classes."""
    img = _background(rng, h, w)
    mask = np.zeros((h, w, len(_SHAPES)), np.uint8)
    for c in classes:
        draw, delta = _SHAPES[c]
        shape = draw(rng, h, w)
        _paint(img, shape, delta * rng.uniform(0.8, 1.2), rng)
        mask[..., c] |= shape
    img += rng.normal(0, 3.5, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _plan(rng: np.random.Generator, cfg: SynthConfig) -> list[list[int]]:
    plan: list[list[int]] = []
    for _ in range(cfg.images):
        if rng.uniform() < cfg.defect_free:
            plan.append([])
            continue
        classes = {int(rng.choice(4, p=CLASS_PROBS))}
        if rng.uniform() < cfg.second_class:
            classes.add(int(rng.choice(4, p=CLASS_PROBS)))
        plan.append(sorted(classes))
    # Small sets still hold every class at least once, so tests and demos see all four.
    defect_rows = [i for i, c in enumerate(plan) if c]
    for c in range(4):
        if defect_rows and not any(c in p for p in plan):
            i = defect_rows[c % len(defect_rows)]
            plan[i] = sorted(set(plan[i]) | {c})
    return plan


def make_dataset(out: str | Path, cfg: SynthConfig | None = None, progress: bool = False) -> Path:
    """Write a Kaggle-layout dataset: ``train_images/*.jpg``, ``train.csv``, ``classes.txt``."""
    cfg = cfg or SynthConfig()
    out = Path(out)
    img_dir = out / "train_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    plan = _plan(rng, cfg)
    rows: list[tuple[str, int, str]] = []
    it = range(cfg.images)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="synthesising", unit="img", leave=False)
    for i in it:
        # One generator per image: image i does not depend on how many came before it.
        img_rng = np.random.default_rng([cfg.seed, i])
        img, mask = make_image(img_rng, plan[i], cfg.height, cfg.width)
        name = f"synth_{cfg.seed:04d}_{i:05d}.jpg"
        imwrite(img_dir / name, img, [cv2.IMWRITE_JPEG_QUALITY, cfg.quality])
        for c in range(mask.shape[-1]):
            if mask[..., c].any():
                rows.append((name, c + 1, rle.encode(mask[..., c])))
    write_kaggle_csv(out / "train.csv", rows)
    atomic_text(out / "classes.txt", "\n".join(CLASS_NAMES) + "\n")
    return out
