"""Shared fixtures: synthetic data made once per session, the real data in ../shared when present."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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


# ---- shared helpers ----------------------------------------------------------------------------------
def cli_run(capsys, *args: object) -> tuple[int, str, str]:
    """``steelseg ARGS`` in this process: (exit code, stdout, stderr)."""
    from steelseg.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def round_trip_ious(src, back, back_id=lambda image_id: image_id) -> list[float]:
    """IoU per (image, class) mask of a dataset converted and read back; a mask must come back present exactly
    where it was (``back_id`` maps an image id to the converted set's)."""
    ious = []
    for image_id in src.image_ids:
        a, b = src.load_mask(image_id) > 0, back.load_mask(back_id(image_id)) > 0
        for c in range(src.num_classes):
            assert a[..., c].any() == b[..., c].any(), (image_id, c)
            if a[..., c].any():
                ious.append(float((a[..., c] & b[..., c]).sum() / (a[..., c] | b[..., c]).sum()))
    return ious


def expect_error(capsys, pattern: str, *args: object, code: int = 2, clean: bool = False) -> str:
    """Run the command and check the rules of the bad-input corpus: exit ``code``, exactly one ``error:``
    line holding ``pattern``, no "unexpected"; with ``clean`` no traceback anywhere on stderr either (off
    where a test trains in process: Lightning's log handlers may outlive an earlier test's captured stream
    and print logging's own "--- Logging error ---" traceback). Returns the error line."""
    rc, _, err = cli_run(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == code, f"exit {rc} for {args}: {err}"
    assert len(lines) == 1 and "unexpected" not in err, err
    assert not clean or "Traceback" not in err, err
    assert pattern.lower() in lines[0].lower(), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


def tiny_model_at(folder: Path, names: list[str], seed: int = 0) -> Path:
    """A model folder (model.json + best.safetensors) of a tiny random-init U-Net (tu-test_resnet, 8-channel
    decoder) with ``names`` as classes."""
    import torch

    from steelseg.models import create_segmenter, save_weights, write_model_json
    from steelseg.schema import InputMeta, ModelMeta, ModelSpec

    torch.manual_seed(seed)
    kw = {"decoder_channels": [8, 8, 8, 8, 8]}
    folder.mkdir(parents=True)
    k = len(names)
    save_weights(create_segmenter("unet", "tu-test_resnet", k, 1, **kw), folder / "best.safetensors")
    write_model_json(folder, ModelMeta(ModelSpec("segment", "tu-test_resnet", k, 1, "unet", kwargs=kw), list(names),
                                       InputMeta()))
    return folder


def tiny_bundle_at(root: Path, names: list[str], seed: int = 0) -> Path:
    """A plain bundle of :func:`tiny_model_at` in ``root/bundle``."""
    from steelseg.inference import write_bundle

    return write_bundle(root / "bundle", [tiny_model_at(root / "seg", names, seed)], kind="plain")


@contextlib.contextmanager
def serving(bundle: Path, *flags: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """``steelseg serve BUNDLE FLAGS`` on a free loopback port, ready: (port, process); stopped after."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "steelseg.cli", "serve", str(bundle), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
            if proc.poll() is not None:
                pytest.fail("server exited:\n" + proc.stdout.read())
            if time.time() > deadline:
                pytest.fail("server did not become ready")
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
