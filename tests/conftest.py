"""Shared fixtures: synthetic data made once per session, the real data in ../shared when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.data.synth import SynthConfig, make_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (the real data lives in ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def severstal_real() -> Path:
    return shared_path("severstal_real")


@pytest.fixture(scope="session")
def neu_seg() -> Path:
    return shared_path("neu_seg")


@pytest.fixture(scope="session")
def synth_full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 full-size (1600x256) synthetic images in the Kaggle layout."""
    return make_dataset(tmp_path_factory.mktemp("synth_full"), SynthConfig(images=24, seed=3))


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small (64x320) synthetic images, enough for tiny training runs on CPU."""
    cfg = SynthConfig(images=48, seed=7, height=64, width=320)
    return make_dataset(tmp_path_factory.mktemp("synth_small"), cfg)


def write_voc(root: Path, masks: dict[str, np.ndarray], splits: dict[str, list[str]] | None = None) -> Path:
    """A tiny mask-folder (VOC-style) dataset from label maps."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    rng = np.random.default_rng(0)
    for name, labels in masks.items():
        img = rng.integers(0, 255, labels.shape, dtype=np.uint8)
        Image.fromarray(img).convert("RGB").save(root / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(labels.astype(np.uint8), mode="L").save(root / "SegmentationClass" / f"{name}.png")
    if splits:
        d = root / "ImageSets" / "Segmentation"
        d.mkdir(parents=True)
        for k, ids in splits.items():
            (d / f"{k}.txt").write_text("\n".join(ids) + "\n")
    return root
