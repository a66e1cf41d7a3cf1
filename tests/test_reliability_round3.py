"""Round 3 of the bad-input corpus: nothing read or written outside its folder, bounded uploads and configs,
no silent wrong data, honest exit codes. Each case reproduces what a hostile or careless user tried; the
rules of the earlier rounds hold: exit 2 and one `error:` line naming the file or field, no traceback,
earlier output intact."""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.data import open_dataset, rle
from steelseg.data.synth import SynthConfig, make_dataset
from steelseg.errors import ConfigError, DataError
from steelseg.inference.bundle import write_bundle

from . import conftest
from .conftest import cli_run, tiny_model_at

ROOT = Path(__file__).resolve().parents[1]
expect_error = functools.partial(conftest.expect_error, clean=True)  # no traceback on stderr either
NAMES = ["pits", "streaks", "scratches", "blotches"]
KW = {"decoder_channels": [8, 8, 8, 8, 8]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("r3") / "d", SynthConfig(images=6, seed=4, height=64, width=128))


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    return tiny_model_at(tmp_path / "model", NAMES)


def _gray_png(path: Path, shape=(64, 96), value: int = 128) -> Path:
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


# ---- 1. path confinement: datasets ---------------------------------------------------------------
def _coco(root: Path, file_name: str) -> Path:
    (root / "images").mkdir(parents=True)
    _gray_png(root / "images" / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 96},
                      {"id": 2, "file_name": file_name, "height": 64, "width": 96}],
           "annotations": [], "categories": [{"id": 1, "name": "defect"}]}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_coco_file_name_outside_the_dataset_is_refused_by_entry(tmp_path, capsys, how) -> None:
    secret = _gray_png(tmp_path / "secret.png")
    name = "../secret.png" if how == "dotdot" else str(secret)
    root = _coco(tmp_path / "coco", name)
    for cmd in (["info", root], ["eda", root, "--out", tmp_path / "eda"], ["convert", root, tmp_path / "out"]):
        line = expect_error(capsys, "images entry id 2", *cmd)
        assert "not a relative path inside the dataset folder" in line
    assert not (tmp_path / "out").exists()


def test_a_link_leading_out_of_the_dataset_is_refused(data, tmp_path, capsys) -> None:
    import shutil

    root = tmp_path / "linked"
    shutil.copytree(data, root)
    outside = _gray_png(tmp_path / "elsewhere.jpg", (64, 128))
    first = sorted((root / "train_images").iterdir())[0]
    first.unlink()
    first.symlink_to(outside)
    line = expect_error(capsys, "outside the dataset folder", "info", root)
    assert first.name in line
    coco = _coco(tmp_path / "coco_link", "b.png")
    (coco / "images" / "b.png").symlink_to(outside)
    assert "outside the dataset folder" in expect_error(capsys, "images entry id 2", "info", coco)


# ---- 2. file names inside model.json -------------------------------------------------------------
def test_model_json_weights_file_must_be_a_plain_name(model_dir, tmp_path, capsys) -> None:
    meta = json.loads((model_dir / "model.json").read_text())
    meta["weights"] = {"format": "onnx", "file": "../../x"}
    (model_dir / "model.json").write_text(json.dumps(meta))
    line = expect_error(capsys, "weights.file", "bundle", model_dir, "--out", tmp_path / "b")
    assert "not a plain file name" in line and "model.json" in line
    assert not (tmp_path / "b").exists() and not (tmp_path.parent / "x").exists()


def test_a_bundle_edited_to_name_outside_weights_is_refused(model_dir, tmp_path, capsys) -> None:
    bundle = write_bundle(tmp_path / "b", [model_dir], kind="plain")
    path = bundle / "segmenters" / "0" / "model.json"
    meta = json.loads(path.read_text())
    meta["weights"] = {"format": "onnx", "file": "/etc/passwd"}
    path.write_text(json.dumps(meta))
    images = tmp_path / "imgs"
    images.mkdir()
    _gray_png(images / "a.png")
    expect_error(capsys, "weights.file", "predict", bundle, images, "--out", tmp_path / "out")


# ---- 4. configs with aliases ---------------------------------------------------------------------
def test_yaml_alias_bomb_is_refused_before_a_run_folder(data, tmp_path, capsys) -> None:
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                     for p, c in zip("abcdefgh", "bcdefghi")]
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("\n".join(bomb) + f"\nname: bomb\nout_dir: {tmp_path / 'runs'}\ndata:\n  path: {data}\n")
    assert cfg.stat().st_size < 1024
    line = expect_error(capsys, "anchor or alias", "train", cfg)
    assert str(cfg) in line and ":1:" in line
    assert not (tmp_path / "runs").exists()
    expect_error(capsys, "anchor or alias", "train", ROOT / "configs" / "tiny.yaml", "--data", data,
                 "--out-dir", tmp_path / "runs", "--set", "model.kwargs=&k {a: 1}")
    assert not (tmp_path / "runs").exists()


# ---- 6. EXIF orientation ---------------------------------------------------------------------------
def test_exif_orientation_applies_to_images_and_masks_alike(tmp_path) -> None:
    """A photo stored 96 wide x 64 high with Orientation 6 is shown (and labelled) 64 wide x 96 high; its
    bright square, where the mask was drawn on the shown view, must land under the mask."""
    shown = np.zeros((96, 64), np.uint8)
    shown[10:30, 40:60] = 255  # where the labelling tool showed the defect
    stored = np.ascontiguousarray(np.rot90(shown, 1))  # orientation 6: rotate the stored pixels 90 deg clockwise to show
    root = tmp_path / "k"
    (root / "train_images").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "train_images" / "p.jpg", exif=exif, quality=100)
    mask = np.zeros((96, 64), np.uint8)
    mask[10:30, 40:60] = 1
    (root / "train.csv").write_text(f"ImageId,ClassId,EncodedPixels\np.jpg,1,{rle.encode(mask)}\n")
    ds = open_dataset(root)
    img, m = ds.load_image("p.jpg"), ds.load_mask("p.jpg")[..., 0]
    assert img.shape == (96, 64) and (ds.table.loc[0, "height"], ds.table.loc[0, "width"]) == (96, 64)
    bright = img > 128
    iou = (bright & (m > 0)).sum() / max((bright | (m > 0)).sum(), 1)
    assert iou > 0.9, iou


# ---- 7. class ids read from raw pixel values -------------------------------------------------------
def _voc(root: Path, masks: dict[str, Image.Image]) -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for name, m in masks.items():
        _gray_png(root / "JPEGImages" / f"{name}.png", (32, 32))
        m.save(root / "SegmentationClass" / f"{name}.png")
    return root


def test_binary_0_255_masks_are_not_255_classes(tmp_path, capsys) -> None:
    m = np.zeros((32, 32), np.uint8)
    m[4:9, 4:9] = 255
    root = _voc(tmp_path / "v", {"a": Image.fromarray(m), "b": Image.fromarray(np.zeros((32, 32), np.uint8))})
    line = expect_error(capsys, "--class-names", "info", root)
    assert "255" in line and "folders layout" in line
    colours = np.zeros((32, 32), np.uint8)
    for i, v in enumerate((38, 75, 113, 150)):
        colours[i * 8:(i + 1) * 8] = v  # a colour mask saved as 8-bit gray
    expect_error(capsys, "not index masks", "info", _voc(tmp_path / "c", {"a": Image.fromarray(colours)}))
    rc, out, _ = cli_run(capsys, "info", root, "--class-names", "defect")  # named: ids above 1 are refused
    assert rc == 2


def test_palette_whose_entry_0_is_not_black_is_refused(tmp_path, capsys) -> None:
    p = Image.fromarray(np.zeros((32, 32), np.uint8), mode="P")
    p.putpalette([200, 200, 200, 255, 0, 0] + [0] * 762)  # an editor's adaptive palette: grey background at 0
    line = expect_error(capsys, "palette entry 0", "info", _voc(tmp_path / "p", {"a": p}))
    assert "not class ids" in line


# ---- 8. formats the readers do not take --------------------------------------------------------------
def test_gif_and_multi_frame_images_are_refused_in_the_one_image_path(tmp_path) -> None:
    from steelseg.data.images import read_image

    gif = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(gif, "GIF")
    with pytest.raises(DataError, match="GIF image; steelseg reads JPEG, PNG, BMP, TIFF"):
        read_image(gif.getvalue(), None, "x.gif")
    tif = io.BytesIO()
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tif, "TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="2 frames"):
        read_image(tif.getvalue(), None, "pages.tif")


# ---- 9. overlay writes -----------------------------------------------------------------------------
def test_a_failed_overlay_write_fails_the_run_and_keeps_the_old_overlays(model_dir, data, tmp_path, capsys,
                                                                          monkeypatch) -> None:
    import cv2

    bundle = write_bundle(tmp_path / "b", [model_dir], kind="plain")
    out = tmp_path / "out"
    rc, _, err = cli_run(capsys, "predict", bundle, data / "train_images", "--out", out, "--overlays")
    assert rc == 0, err
    before = {p.name: p.read_bytes() for p in (out / "overlays").iterdir()}
    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)  # what OpenCV does on a full disk
    line = expect_error(capsys, "could not write the image", "predict", bundle, data / "train_images", "--out", out,
                        "--overlays")
    assert "disk full" in line
    assert {p.name: p.read_bytes() for p in (out / "overlays").iterdir()} == before
    assert not list(out.glob(".overlays.*"))


# ---- 10. nothing to learn ---------------------------------------------------------------------------------
def test_training_on_data_without_any_defect_is_refused_at_the_start(tmp_path, capsys) -> None:
    root = make_dataset(tmp_path / "clean", SynthConfig(images=6, seed=2, height=64, width=128, defect_free=1.0))
    assert not open_dataset(root).presence().any()
    line = expect_error(capsys, "none of its 6 images holds a defect", "train", ROOT / "configs" / "tiny.yaml",
                        "--data", root, "--out-dir", tmp_path / "runs", "--name", "empty")
    assert "train.allow_no_defects=true" in line
    assert not (tmp_path / "runs").exists()


# ---- 11, 12, 14. exit codes and run folders -------------------------------------------------------------
def _train_args(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return ["train", str(ROOT / "configs" / "tiny.yaml"), "--data", str(data), "--name", name, "--out-dir", str(runs),
            "--set", "data.crop=null", "--set", "data.num_workers=0", "--set", "data.batch_size=2",
            "--set", "track.mlflow=false", *extra]


def _cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("STEELSEG_RUN_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "steelseg.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_to_train_exits_143_and_says_how_to_resume(data, tmp_path) -> None:
    run = tmp_path / "runs" / "term"
    proc = _cli(*_train_args(data, tmp_path / "runs", "term", "--epochs", "50", "--set", "train.checkpoint_every=1"))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (run / "checkpoints" / "last.ckpt").is_file():
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before SIGTERM:\n" + proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "SIGTERM" in line[0] and f"steelseg train --resume {run}" in line[0], err
    assert not (run / ".steelseg-train.lock").exists()


def test_a_run_folder_is_claimed_before_any_work(tmp_path) -> None:
    from steelseg.training.run import CLAIM, claim_run_dir

    run = tmp_path / "runs" / "x"
    lock = claim_run_dir(run)
    assert lock == run / CLAIM and lock.read_text().split()[0] == str(os.getpid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{sleeper.pid}\n")  # a second `steelseg train --name x`, still running
        with pytest.raises(ConfigError, match=f"another steelseg train \\(process {sleeper.pid}\\)"):
            claim_run_dir(run)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert claim_run_dir(run) == lock  # the claim of a process that died is taken over


def test_two_trains_with_one_name_do_not_share_a_folder(data, tmp_path) -> None:
    args = _train_args(data, tmp_path / "runs", "same", "--epochs", "1")
    procs = [_cli(*args), _cli(*args)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert "another steelseg train" in err or "already holds a run" in err, err


def test_only_the_documented_checkpoint_is_written(data, tmp_path) -> None:
    from steelseg.training import fit, load_config

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"data.path={data}", f"out_dir={tmp_path}", "name=one",
                                                       "data.crop=null", "data.num_workers=0", "train.epochs=1",
                                                       f"track.tracking_uri=sqlite:///{tmp_path / 'ml.db'}"])
    run = fit(cfg).run_dir
    assert sorted(p.relative_to(run) for p in run.rglob("*.ckpt")) == [Path("checkpoints/last.ckpt")]


# ---- 13. the machine's limits ---------------------------------------------------------------------------
def test_disk_full_and_out_of_memory_are_one_line_errors(tmp_path, capsys, monkeypatch) -> None:
    import steelseg.data.synth as synth

    target = tmp_path / "s" / "train.csv"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(synth, "write_kaggle_csv", full)
    line = expect_error(capsys, "no space left on the device", "synth", tmp_path / "s", "--images", "2",
                        "--height", "32", "--width", "64")
    assert str(target) in line

    def oom(*a, **k):
        raise MemoryError("Unable to allocate 3.20 GiB for an array with shape (4, 256, 1600, 1050)")

    monkeypatch.setattr(synth, "write_kaggle_csv", oom)
    line = expect_error(capsys, "out of memory", "synth", tmp_path / "s2", "--images", "2", "--height", "32",
                        "--width", "64")
    assert "3.20 GiB" in line and "data.batch_size" in line


# ---- 15. runs by name ----------------------------------------------------------------------------------
def test_runs_compare_takes_the_names_runs_prints(tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    for name, lr in (("neu-a", 0.001), ("neu-b", 0.002)):
        (runs / name).mkdir(parents=True)
        (runs / name / "config.yaml").write_text(f"name: {name}\ntrain:\n  lr: {lr}\n")
    rc, out, err = cli_run(capsys, "runs", runs, "--compare", "neu-a", "neu-b")
    assert rc == 0 and "train.lr" in out, err
    line = expect_error(capsys, "did you mean neu-a", "runs", runs, "--compare", "neu-aa", "neu-b")
    assert "not a run folder" in line


# ---- 17. a closed pipe -------------------------------------------------------------------------------------
def test_info_into_a_closed_pipe_ends_quietly(data) -> None:
    """`steelseg info DATA | head`: the reader may close the pipe before steelseg writes (``true`` reads
    nothing at all), which must end quietly with 141 (128 + SIGPIPE), as shell tools do."""
    for reader in ("true", "head -c 1 >/dev/null"):
        proc = subprocess.run(f"set -o pipefail; {sys.executable} -m steelseg.cli info {data} | {reader}",
                              shell=True, executable="/bin/bash", capture_output=True, text=True)
        assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr, proc.stderr
        assert "BrokenPipe" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
        assert proc.returncode in (0, 141), (reader, proc.returncode, proc.stderr)
    proc = subprocess.run(f"set -o pipefail; {sys.executable} -m steelseg.cli info {data} | true", shell=True,
                          executable="/bin/bash", capture_output=True, text=True)
    assert proc.returncode == 141, proc.stderr
