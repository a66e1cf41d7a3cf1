"""Albumentations pipelines for training (validation runs unaugmented; flip TTA lives in pipeline)."""

from __future__ import annotations

from typing import Any

from steelseg.config import DataConfig

__all__ = ["seed_worker", "stream_seed", "train_transform"]


def train_transform(cfg: DataConfig, seed: int | None = None) -> Any:
    """Random crop (optional), flips, brightness/contrast and small shifts, image and mask alike.

    albumentations keeps its own random state, which neither ``seed_everything`` nor torch's
    per-worker seeding reaches: ``seed`` makes the stream repeatable (``train.seed``), and
    :func:`seed_worker` gives each DataLoader worker a stream of its own."""
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


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Lightning's per-worker seeding of torch / numpy / random, then
    the worker's own augmentation stream from its torch seed (which the main process's seeded
    generator draws, so a run repeats) and the process rank (DDP ranks differ)."""
    import torch
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(stream_seed(info.seed, getattr(rank_zero_only, "rank", 0) or 0))
