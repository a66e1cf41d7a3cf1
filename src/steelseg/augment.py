"""Albumentations pipelines for training (validation runs unaugmented; flip TTA lives in pipeline)."""

from __future__ import annotations

from typing import Any

from steelseg.config import DataConfig

__all__ = ["train_transform"]


def train_transform(cfg: DataConfig) -> Any:
    """Random crop (optional), flips, brightness/contrast and small shifts, image and mask alike."""
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
    return A.Compose(steps) if steps else None
