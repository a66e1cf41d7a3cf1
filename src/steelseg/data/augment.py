"""Albumentations pipelines for training (validation runs unaugmented; flip TTA lives in steelseg.inference.predictor)."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["AugmentSpec", "stream_seed", "train_transform"]


class AugmentSpec(Protocol):
    """What the training transform reads: ``data.crop``, ``flips``, ``brightness_contrast``, ``shift``
    (:class:`steelseg.training.config.DataConfig` is one)."""

    crop: list[int] | None
    flips: bool
    brightness_contrast: bool
    shift: float


def train_transform(cfg: AugmentSpec, seed: int | None = None) -> Any:
    """Random crop (optional), flips, brightness/contrast and small shifts, image and mask alike.

    albumentations keeps its own random state, which neither ``seed_everything`` nor torch's
    per-worker seeding reaches: ``seed`` makes the stream repeatable (``train.seed``), and
    :func:`steelseg.training.loaders.seed_worker` gives each DataLoader worker a stream of its own."""
    import albumentations as A
    import cv2

    steps: list[Any] = []
    if cfg.crop:
        h, w = cfg.crop
        steps += [A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_REFLECT_101),
                  A.RandomCrop(height=h, width=w)]
    if cfg.flips:
        steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if cfg.brightness_contrast:
        steps.append(A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5))
    if cfg.shift > 0:
        steps.append(A.Affine(translate_percent={"x": (-cfg.shift, cfg.shift), "y": (-cfg.shift, cfg.shift)},
                              border_mode=cv2.BORDER_REFLECT_101, p=0.5))
    return A.Compose(steps, seed=seed) if steps else None


def stream_seed(*parts: int) -> int:
    """A 32-bit seed mixed from ``parts`` (run seed, process rank, worker seed): distinct inputs give
    unrelated streams, unlike ``seed + rank``."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) % 2 ** 32 for p in parts]).generate_state(1)[0])
