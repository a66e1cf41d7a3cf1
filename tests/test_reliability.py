"""A corpus of bad inputs, generated here: each ends with exit code 2, one `error:` line naming the
file, line or field, no traceback, nothing half-written, and earlier output intact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.data.synth import SynthConfig, make_dataset
from steelseg.inference.bundle import write_bundle

from .conftest import cli_run, expect_error, tiny_model_at

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["pits", "streaks", "scratches", "blotches"]


def run_cli(capsys, *args: str) -> tuple[int, str]:
    rc, _, err = cli_run(capsys, *args)
    return rc, err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("rel") / "d", SynthConfig(images=6, seed=4, height=64, width=128))


@pytest.fixture()
def bundle(tmp_path) -> Path:
    return write_bundle(tmp_path / "bundle", [tiny_model_at(tmp_path / "model", NAMES)], kind="plain")


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    for key, value in changes.items():
        node = d
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(json.dumps(d))


# ---- bundles: lost work and silent wrong results ----------------------------------------------
def test_bundle_refuses_to_overwrite_and_swaps_whole(bundle, tmp_path, capsys) -> None:
    before = sorted(p.relative_to(bundle) for p in bundle.rglob("*"))
    model = bundle / "segmenters" / "0"
    copy = tmp_path / "copy"
    rc, _ = run_cli(capsys, "bundle", model, "--out", copy)
    assert rc == 0
    expect_error(capsys, "already exists; pass --overwrite", "bundle", model, "--out", copy)
    # a bundle is never rebuilt over the models it is made from (issue #38: an output never holds its input)
    expect_error(capsys, "holds the command's input", "bundle", model, "--out", bundle, "--overwrite")
    assert sorted(p.relative_to(bundle) for p in bundle.rglob("*")) == before
    rc, _ = run_cli(capsys, "bundle", model, "--out", copy, "--overwrite")  # a bundle steelseg made: replaced
    assert rc == 0 and (copy / "segmenters" / "0" / "best.safetensors").is_file()
    assert not list(tmp_path.glob(".copy*"))  # no staging folders left


@pytest.mark.parametrize("file,changes,pattern", [
    ("postprocess.json", {"pixel_threshold": [-1, 0.5, 0.5, 0.5]}, "pixel_threshold: -1"),
    ("postprocess.json", {"pixel_threshold": [2, 0.5, 0.5, 0.5]}, "pixel_threshold: 2"),
    ("postprocess.json", {"pixel_threshold": [0.5, 0.5, 0.5]}, "classes"),
    ("postprocess.json", {"min_area": [-5, 0, 0, 0]}, "min_area"),
    ("postprocess.json", {"speed": 3}, "unknown key 'speed'"),
    ("bundle.json", {"tta": "no"}, "tta: expected bool"),
    ("bundle.json", {"kind": "fancy"}, "kind"),
    ("segmenters/0/model.json", {"input.std": [0]}, "std"),
    ("segmenters/0/model.json", {"model.kwargs": {"checkpoint_path": "/etc/passwd"}}, "checkpoint_path"),
    ("segmenters/0/model.json", {"model.outputs": 3}, "outputs"),
])
def test_bundle_values_validated(bundle, data, tmp_path, capsys, file, changes, pattern) -> None:
    _edit_json(bundle / file, **changes)
    line = expect_error(capsys, pattern, "predict", bundle, data / "train_images", "--out", tmp_path / "p")
    assert file.split("/")[-1] in line
    assert not (tmp_path / "p" / "submission.csv").exists()


def test_nan_in_json_and_broken_files(bundle, data, tmp_path, capsys) -> None:
    (bundle / "postprocess.json").write_text(
        (bundle / "postprocess.json").read_text().replace("0.5", "NaN", 1))
    expect_error(capsys, "postprocess.json", "predict", bundle, data / "train_images", "--out", tmp_path / "p")
    (bundle / "postprocess.json").write_text("{not json")
    expect_error(capsys, "not valid JSON", "predict", bundle, data / "train_images", "--out", tmp_path / "p")


def test_damaged_weights_named(bundle, data, tmp_path, capsys) -> None:
    w = bundle / "segmenters" / "0" / "best.safetensors"
    good = w.read_bytes()
    w.write_bytes(good[: len(good) // 2])
    expect_error(capsys, "best.safetensors: not a readable safetensors", "predict", bundle,
                 data / "train_images", "--out", tmp_path / "p")
    w.write_bytes(np.random.default_rng(0).bytes(4096))
    expect_error(capsys, "best.safetensors", "predict", bundle, data / "train_images", "--out", tmp_path / "p")
    w.write_bytes(good)
    _edit_json(bundle / "segmenters" / "0" / "model.json", **{"model.kwargs": {"decoder_channels": [16, 8, 8, 8, 8]}})
    expect_error(capsys, "do not fit the model", "predict", bundle, data / "train_images", "--out", tmp_path / "p")


# ---- predict ----------------------------------------------------------------------------------
def test_predict_lists_subfolders_and_recurses(bundle, data, tmp_path, capsys) -> None:
    images = tmp_path / "images"
    shutil.copytree(data / "train_images", images / "line2")
    shutil.copy(next((data / "train_images").iterdir()), images / "top.jpg")
    rc, _ = run_cli(capsys, "predict", bundle, images, "--out", tmp_path / "p")
    res = json.loads((tmp_path / "p" / "predict.json").read_text())
    assert rc == 0 and res["images"] == 1 and res["skipped_files"] == ["line2"]
    rc, _ = run_cli(capsys, "predict", bundle, images, "--out", tmp_path / "r", "--recursive", "--overlays")
    rows = (tmp_path / "r" / "submission.csv").read_text().splitlines()
    assert rc == 0 and any(r.startswith("line2/") for r in rows)
    assert len(list((tmp_path / "r" / "overlays").glob("*.png"))) == 7


def test_predict_cleans_up_after_a_killed_run(bundle, data, tmp_path, capsys) -> None:
    out = tmp_path / "p"
    out.mkdir()
    (out / "submission.csv.partial").write_text("ImageId,EncodedPixels,ClassId\nhalf")
    (out / ".overlays.steelseg-abc.partial").mkdir()  # steelseg's own temporary names (issue #38)
    (out / ".submission.csv.steelseg-abc.tmp").write_text("half")
    (out / ".overlays.mine").mkdir()  # a person's, that only look alike: kept
    rc, _ = run_cli(capsys, "predict", bundle, data / "train_images", "--out", out)
    assert rc == 0 and not (out / "submission.csv.partial").exists()
    assert [p.name for p in out.glob(".overlays*")] == [".overlays.mine"]
    assert not list(out.glob(".*.tmp")) and (out / "submission.csv").is_file()


def test_predict_refuses_huge_images_and_mismatched_labels(bundle, data, tmp_path, capsys, monkeypatch) -> None:
    big = tmp_path / "big"
    big.mkdir()
    Image.new("L", (4000, 3000)).save(big / "huge.png")
    monkeypatch.setenv("STEELSEG_MAX_PIXELS", "2000000")
    expect_error(capsys, "huge.png: image is 4000x3000", "predict", bundle, big, "--out", tmp_path / "p")
    monkeypatch.delenv("STEELSEG_MAX_PIXELS")
    other = tmp_path / "other"
    other.mkdir()
    name = sorted((data / "train_images").iterdir())[0].name
    Image.new("L", (96, 48)).save(other / name.replace(".jpg", ".png"))
    shutil.copy(data / "train_images" / name, other / name)
    img = Image.open(other / name)
    img.resize((96, 48)).save(other / name)
    expect_error(capsys, f"{name}: image is 96x48 but its --labels mask is 128x64", "predict", bundle, other,
                 "--out", tmp_path / "q", "--labels", data)


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header claims a huge size (a decompression bomb as far as a reader knows)."""
    import struct
    import zlib

    Image.new("L", (8, 8)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = raw[12:29]  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    return path


def test_decompression_bomb_refused_from_header(bundle, data, tmp_path, capsys) -> None:
    d = tmp_path / "bomb"
    shutil.copytree(data / "train_images", d / "train_images")
    (d / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    _png_claiming(d / "train_images" / "bomb.png", 30000, 30000)  # past Pillow's own bomb limit
    expect_error(capsys, "bomb.png: refused as a decompression bomb", "info", d)
    (d / "train_images" / "bomb.png").unlink()
    _png_claiming(d / "train_images" / "big.png", 8000, 6000)  # 48 Mpx: past ours (40 Mpx), not Pillow's
    expect_error(capsys, "big.png: image is 8000x6000 = 48.0 Mpx, above the limit of 40.0 Mpx", "info", d)
    (d / "train_images" / "big.png").rename(d / "train_images" / "bomb.png")
    expect_error(capsys, "bomb.png", "eda", d, "--out", tmp_path / "e")
    expect_error(capsys, "bomb.png", "predict", bundle, d / "train_images", "--out", tmp_path / "p")


def test_tune_refuses_existing_bundle(bundle, data, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(bundle / "segmenters" / "0", run / "model")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    expect_error(capsys, "already exists", "tune", run, "--data", data, "--split", "all", "--out", tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_output_path_is_a_file(bundle, data, tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    expect_error(capsys, "is a file", "predict", bundle, data / "train_images", "--out", tmp_path / "afile" / "p")


# ---- data -------------------------------------------------------------------------------------
def _csv(data: Path, tmp_path: Path, text: str | bytes, name: str = "d") -> Path:
    d = tmp_path / name
    shutil.copytree(data / "train_images", d / "train_images")
    (d / "train.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
    return d


def test_train_csv_encodings(data, tmp_path, capsys) -> None:
    text = (data / "train.csv").read_text()
    bom = _csv(data, tmp_path, b"\xef\xbb\xbf" + text.encode(), "bom")
    rc, _ = run_cli(capsys, "info", bom)
    assert rc == 0  # Excel's CSV UTF-8
    latin = _csv(data, tmp_path, text.replace("ImageId,", "ImageId,", 1).encode() + "é\n".encode("latin-1"), "lat")
    expect_error(capsys, "not UTF-8", "info", latin)
    utf16 = _csv(data, tmp_path, text.encode("utf-16"), "u16")
    expect_error(capsys, "not UTF-8", "info", utf16)


def test_rle_overflow_rejected(data, tmp_path, capsys) -> None:
    name = sorted((data / "train_images").iterdir())[0].name
    d = _csv(data, tmp_path, f"ImageId,ClassId,EncodedPixels\n{name},1,1 99999999999999999999999\n")
    expect_error(capsys, "train.csv:2", "info", d)


def test_voc_masks_same_stem_and_16bit_ids(tmp_path, capsys) -> None:
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    Image.new("L", (32, 32)).save(root / "JPEGImages" / "a.jpg")
    Image.new("L", (32, 32)).save(root / "JPEGImages" / "a.png")
    Image.new("L", (32, 32)).save(root / "SegmentationClass" / "a.png")
    expect_error(capsys, "a.jpg and a.png share the name", "info", root)
    (root / "JPEGImages" / "a.png").unlink()
    labels = np.zeros((32, 32), np.uint16)
    labels[:4, :4] = 300
    Image.fromarray(labels).save(root / "SegmentationClass" / "a.png")
    expect_error(capsys, "unknown class id 300", "info", root, "--class-names", "a,b")


def test_convert_refuses_itself_and_existing(data, tmp_path, capsys) -> None:
    expect_error(capsys, "own input", "convert", data, data)  # the one output guard (issue #38)
    out = tmp_path / "k"
    assert run_cli(capsys, "convert", data, out)[0] == 0
    expect_error(capsys, "already exists", "convert", data, out)
    assert run_cli(capsys, "convert", data, out, "--overwrite")[0] == 0


@pytest.mark.parametrize("args,pattern", [
    (["synth", "{tmp}/s", "--images", "-5"], "--images -5"),
    (["eda", "{data}", "--out", "{tmp}/e", "--sample", "-3"], "--sample -3"),
])
def test_counts_must_be_positive(args, pattern, data, tmp_path, capsys) -> None:
    expect_error(capsys, pattern, *[a.format(tmp=tmp_path, data=data) for a in args])
    assert not (tmp_path / "s").exists() and not (tmp_path / "e").exists()


# ---- train configs: caught before any run folder exists ---------------------------------------
@pytest.mark.parametrize("override,pattern", [
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=-1", "train.epochs"),
    ("train.max_minutes=-5", "train.max_minutes"),
    ("train.lr=-0.1", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("train.accumulate=0", "train.accumulate"),
    ("data.crop=[0, 0]", "data.crop"),
    ("data.crop=[100000, 100000]", "data.crop"),
    ("model.kwargs={decoder_channels: [200000, 16, 16, 8, 8]}", "decoder_channels"),
    ("model.kwargs={checkpoint_path: /etc/passwd}", "checkpoint_path"),
    ("data.std=[0]", "data.std"),
])
def test_bad_config_values(override, pattern, data, tmp_path, capsys) -> None:
    expect_error(capsys, pattern, "train", ROOT / "configs" / "tiny.yaml", "--data", data,
                 "--out-dir", tmp_path / "runs", "--set", override, "--set", "track.mlflow=false")
    assert not (tmp_path / "runs").exists()


def test_nan_loss_stops_training(data, tmp_path, capsys, monkeypatch) -> None:
    import torch

    from steelseg.training import module

    class NanLoss(torch.nn.Module):
        def forward(self, logits, target):
            return (logits * float("nan")).mean()

    monkeypatch.setattr(module, "build_loss", lambda *a, **k: NanLoss())
    line = expect_error(capsys, "training loss is nan", "train", ROOT / "configs" / "tiny.yaml", "--data", data,
                        "--out-dir", tmp_path / "runs", "--name", "nan", "--set", "track.mlflow=false",
                        "--set", "data.num_workers=0", "--set", "data.crop=null")
    assert "train.lr" in line
    assert not (tmp_path / "runs" / "nan" / "model" / "best.safetensors").exists()


def test_tampered_resume_checkpoint_runs_no_code(data, tmp_path, capsys, monkeypatch) -> None:
    """A pickle that would run code when unpickled is refused, even with weights_only forced off."""
    import pickle

    run = tmp_path / "runs" / "r"
    assert run_cli(capsys, "train", ROOT / "configs" / "tiny.yaml", "--data", data, "--out-dir", tmp_path / "runs",
                   "--name", "r", "--epochs", "1", "--set", "track.mlflow=false", "--set", "data.num_workers=0",
                   "--set", "data.crop=null")[0] == 0
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / "checkpoints" / "last.ckpt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    expect_error(capsys, "not a plain resume checkpoint, refused", "train", "--resume", run)
    assert not marker.exists()
