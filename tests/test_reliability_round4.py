"""Reliability round 4 (issue #38): what a file, a bundle or a person hands steelseg stays in its place. Each
test fails on aeebb0f and passes after the fix."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.errors import DataError

from .conftest import cli_run, expect_error, tiny_bundle_at, tiny_model_at

NAMES = ["pits", "streaks"]


# ---- 1. class names never carry markup ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ['<img src=x onerror=alert(1)>', 'a"b', "tab\there", "x\x1b[31m", ""])
def test_hostile_class_names_are_refused_where_bundles_are_written_and_read(tmp_path: Path, name: str) -> None:
    from steelseg.inference.bundle import read_bundle, write_bundle
    from steelseg.schema import check_class_names

    with pytest.raises(ValueError, match="class_names"):
        check_class_names(["ok", name])
    with pytest.raises(DataError, match="class_names"):
        write_bundle(tmp_path / "empty", [], [], None, ["ok", name], kind="all-empty")
    good = write_bundle(tmp_path / "b", [], [], None, ["ok", "fine"], kind="all-empty")
    info = json.loads((good / "bundle.json").read_text())
    info["class_names"] = ["ok", name]
    (good / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="class_names"):
        read_bundle(good)
    model = tiny_model_at(tmp_path / "m", ["ok", "fine"])
    meta = json.loads((model / "model.json").read_text())
    meta["class_names"] = ["ok", name]
    (model / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="class_names"):
        write_bundle(tmp_path / "b2", [model])


# ---- 2. an output never takes the command's own input ------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_with_an_output_declares_its_inputs() -> None:
    """The CLI's guard needs each command's inputs: walk the argument tree so a new command cannot skip it."""
    from steelseg.cli import build_parser

    commands = _subparsers(build_parser())
    with_out = {name for name, p in commands.items() if any(a.dest == "out" for a in p._actions)}
    assert {"predict", "bundle", "pseudo-label", "folds", "convert", "kaggle", "fit", "tune", "export"} <= with_out
    for name in with_out:
        p = commands[name]
        reads = p.get_default("reads")
        assert isinstance(reads, dict), f"steelseg {name} has --out but declares no inputs (set_defaults(reads=...))"
        dests = {a.dest for a in p._actions}
        assert set(reads) <= dests, f"steelseg {name}: reads names unknown arguments {set(reads) - dests}"


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 96), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_outputs_equal_to_inside_or_holding_an_input_are_refused(tmp_path: Path, capsys, synth_small: Path) -> None:
    run = tmp_path / "run"
    tiny_model_at(run / "model", NAMES)
    expect_error(capsys, "own input", "bundle", run, "--out", run, "--overwrite")
    assert (run / "model" / "best.safetensors").is_file()
    bundle = tiny_bundle_at(tmp_path / "tb", NAMES)
    imgs = _images(tmp_path / "imgs")
    expect_error(capsys, "own input", "pseudo-label", bundle, imgs, "--out", imgs, "--overwrite")
    expect_error(capsys, "own input", "predict", bundle, imgs, "--out", imgs)
    expect_error(capsys, "inside the command's input", "predict", bundle, imgs, "--out", imgs / "out")
    expect_error(capsys, "holds the command's input", "predict", bundle, imgs, "--out", tmp_path)
    assert sorted(p.name for p in imgs.iterdir()) == ["im0.png", "im1.png"]


def test_overwrite_replaces_only_folders_steelseg_made(tmp_path: Path, capsys) -> None:
    bundle = tiny_bundle_at(tmp_path / "tb", NAMES)
    labelled = tmp_path / "labelled"
    (labelled / "train_images").mkdir(parents=True)
    (labelled / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    imgs = _images(tmp_path / "imgs")
    expect_error(capsys, "did not make", "pseudo-label", bundle, imgs, "--out", labelled, "--overwrite")
    assert (labelled / "train.csv").is_file()
    # a link onto a bundle: --overwrite replaces the link, and leaves no dangling .old link beside it
    real = tiny_bundle_at(tmp_path / "real", NAMES)
    link = tmp_path / "current"
    link.symlink_to(real)
    rc, _, err = cli_run(capsys, "bundle", tmp_path / "tb" / "seg", "--out", link, "--overwrite")
    assert rc == 0, err
    assert not link.is_symlink() and (link / "bundle.json").is_file() and (real / "bundle.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_folds_never_write_over_the_labels(tmp_path: Path, capsys, synth_small: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    before = (data / "train.csv").read_bytes()
    expect_error(capsys, "not a folds file", "folds", data, "--out", data / "train.csv")
    assert (data / "train.csv").read_bytes() == before
    rc, _, err = cli_run(capsys, "folds", data, "--k", "3")  # the default DATA/folds.csv, and again over it
    assert rc == 0, err
    rc, _, err = cli_run(capsys, "folds", data, "--k", "3")
    assert rc == 0, err


def test_predict_keeps_a_persons_files_and_cleans_only_its_own(tmp_path: Path, capsys) -> None:
    bundle = tiny_bundle_at(tmp_path / "tb", NAMES)
    imgs = _images(tmp_path / "imgs")
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "notes.txt").write_text("mine")
    (out / ".draft.tmp").write_text("mine too")
    (out / ".submission.csv.steelseg-abc.tmp").write_text("a killed run's")
    expect_error(capsys, "did not make", "predict", bundle, imgs, "--out", out, "--overlays")
    assert (out / "overlays" / "notes.txt").read_text() == "mine"
    rc, _, err = cli_run(capsys, "predict", bundle, imgs, "--out", out)
    assert rc == 0, err
    assert (out / ".draft.tmp").is_file() and not (out / ".submission.csv.steelseg-abc.tmp").exists()
    (out / "overlays" / "notes.txt").unlink()
    (out / "overlays").rmdir()
    for _ in range(2):  # overlays steelseg made are replaced by the next run
        rc, _, err = cli_run(capsys, "predict", bundle, imgs, "--out", out, "--overlays")
        assert rc == 0, err
    assert len(list((out / "overlays").glob("*.png"))) == 2


# ---- 3. files a bundle names stay inside it, links followed ------------------------------------------------
def test_model_files_that_link_out_of_their_folder_are_refused(tmp_path: Path, capsys) -> None:
    from steelseg.inference.predictor import Predictor

    model = tiny_model_at(tmp_path / "m", NAMES)
    outside = tmp_path / "elsewhere.safetensors"
    (model / "best.safetensors").rename(outside)
    (model / "best.safetensors").symlink_to(outside)
    with pytest.raises(DataError, match="outside"):
        Predictor.from_models([model])
    expect_error(capsys, "outside", "bundle", model, "--out", tmp_path / "b")
    onnx = tiny_model_at(tmp_path / "o", NAMES)
    meta = json.loads((onnx / "model.json").read_text())
    meta["weights"] = {"format": "onnx", "file": "model.onnx"}
    (onnx / "model.json").write_text(json.dumps(meta))
    (tmp_path / "secret.onnx").write_bytes(b"\x08\x07")
    (onnx / "model.onnx").symlink_to(tmp_path / "secret.onnx")
    with pytest.raises(DataError, match="outside"):
        Predictor.from_models([onnx], backend="onnx")


def test_kaggle_ids_are_slugs_and_errors_carry_no_colour_codes() -> None:
    from steelseg.kaggle.rehearsal import ANSI, competition_slug, dataset_slug

    assert dataset_slug("jane/steelseg-bundle", Path("m.json")) == "steelseg-bundle"
    for bad in ("jane/../../x", "../x", "/abs/path", "jane/UPPER", "jane", None, 3):
        with pytest.raises(DataError, match="not a Kaggle dataset id"):
            dataset_slug(bad, Path("m.json"))
    assert competition_slug("severstal-steel-defect-detection", Path("k.json"))
    with pytest.raises(DataError, match="competition"):
        competition_slug("../../etc", Path("k.json"))
    assert ANSI.sub("", "\x1b[0;31mValueError\x1b[0m: boom") == "ValueError: boom"


def test_openvino_load_errors_say_what_openvino_said() -> None:
    from steelseg.inference.openvino import ov_detail

    exc = RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'false' failed at src/x.cpp:12:\n"
                       "Unable to read the model: /b/model.xml Please check that model format is supported")
    assert ov_detail(exc).startswith("Unable to read the model")


# ---- 5. the review queue never reads a file whole before its size is known ------------------------------------
def test_queue_refuses_oversized_files_from_stat_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from steelseg.serve.queue import ReviewQueue, file_id, image_id

    folder = _images(tmp_path / "line", 1)
    big = folder / "huge.png"
    with open(big, "wb") as fh:
        fh.truncate(3 * 2 ** 20)
    assert file_id(folder / "im0.png") == image_id((folder / "im0.png").read_bytes())
    read = []
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or b"")
    q = ReviewQueue(folder, "b", rate=lambda data, name: None, max_bytes=2 ** 20)
    q._scan()
    assert "huge.png" not in read and any("huge.png" in e and "MB" in e for e in q.errors.values())


# ---- 7. a long batch is not lost to one bad file ---------------------------------------------------------------
def test_predict_can_skip_unreadable_images(tmp_path: Path, capsys) -> None:
    bundle = tiny_bundle_at(tmp_path / "tb", NAMES)
    imgs = _images(tmp_path / "imgs", 3)
    (imgs / "empty.png").write_bytes(b"")
    good = (imgs / "im2.png").read_bytes()
    (imgs / "cut.png").write_bytes(good[: len(good) // 2])
    expect_error(capsys, "empty.png", "predict", bundle, imgs, "--out", tmp_path / "stop")
    assert not (tmp_path / "stop" / "submission.csv").exists()
    rc, out, err = cli_run(capsys, "predict", bundle, imgs, "--out", tmp_path / "skip", "--on-error", "skip")
    assert rc == 3, err
    assert "INCOMPLETE" in err
    skipped = (tmp_path / "skip" / "skipped.csv").read_text()
    assert "empty.png" in skipped and "cut.png" in skipped
    rows = (tmp_path / "skip" / "submission.csv").read_text().splitlines()[1:]
    assert {r.split(",")[0] for r in rows} == {"im0.png", "im1.png", "im2.png"}
    summary = json.loads((tmp_path / "skip" / "predict.json").read_text())
    assert summary["complete"] is False and summary["images"] == 3


# ---- 1 (in the browser). server text reaches the review page as text -----------------------------------------
def test_hostile_names_run_nothing_in_the_review_page(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("selenium")
    import httpx
    from selenium.webdriver.support.ui import WebDriverWait

    from .conftest import serving
    from .test_serve import _browser

    bundle = tiny_bundle_at(tmp_path / "tb", NAMES)
    queue = _images(tmp_path / "queue", 1)
    hostile = '<img src=x onerror="window.__pwned=1">.png'
    (queue / "im0.png").rename(queue / hostile)
    with serving(bundle, "--feedback", str(tmp_path / "fb"), "--queue", str(queue)) as (port, _):
        url = f"http://127.0.0.1:{port}"
        csp = httpx.get(url + "/").headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        browser = _browser()
        try:
            browser.get(url + "/")
            WebDriverWait(browser, 60).until(lambda b: b.execute_script(
                "return document.querySelectorAll('#queue-list tbody tr').length === 1"))
            row = browser.execute_script("return document.querySelector('#queue-list tbody tr').textContent")
            assert hostile in row
            # a class name with markup, as a tampered response would carry it, through the legend's builder
            browser.execute_script(
                "state.result = {classes: [{name: '<img src=x onerror=window.__pwned=2>\"', present: false, "
                "score: null, area: 0, rle: ''}], image: {width: 4, height: 4}};"
                "editor.shown = [true]; editor.area = () => 0; legend();")
            assert hostile.split(".png")[0] not in browser.page_source.split("<tbody>")[0]
            assert browser.execute_script("return window.__pwned === undefined")
            assert browser.execute_script("return document.querySelectorAll('[onerror]').length") == 0
            assert "<img src=x" in browser.execute_script("return document.querySelector('#legend tbody').textContent")
        finally:
            browser.quit()


def test_the_guard_is_one_function(tmp_path: Path) -> None:
    from steelseg.fsutil import guard_output

    a = tmp_path / "a"
    a.mkdir()
    guard_output(tmp_path / "b", [(a, False)])
    guard_output(a / "eval", [(a, True)])  # outputs a run may hold
    os.symlink(a, tmp_path / "link")
    with pytest.raises(DataError, match="own input"):
        guard_output(tmp_path / "link", [(a, True)])  # links followed


# ---- 6. no leak, no loss ----------------------------------------------------------------------------------------
def test_extra_images_that_are_validation_images_are_left_out(synth_small: Path, tmp_path: Path) -> None:
    """A validation strip back in data.extra under another name and format (a review, a pseudo-label) would leak."""
    import shutil

    from steelseg.training.config import load_config
    from steelseg.training.loaders import add_extra, open_training_data, resolve_split

    cfg = load_config(None, [f"data.path={synth_small}", "data.crop=null"])
    data0 = open_training_data(cfg)
    train, val, how = resolve_split(cfg, data0.main)
    extra = tmp_path / "feedback"
    (extra / "train_images").mkdir(parents=True)
    shutil.copyfile(synth_small / "classes.txt", extra / "classes.txt")
    img = np.asarray(Image.open(data0.main.row(val[0])["path"]))
    Image.fromarray(img).save(extra / "train_images" / "renamed.png")  # same pixels, new name and format
    Image.fromarray(np.full((64, 320), 7, np.uint8)).save(extra / "train_images" / "new.png")
    (extra / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    cfg = load_config(None, [f"data.path={synth_small}", "data.crop=null", f"data.extra=[{extra}]"])
    data = open_training_data(cfg)
    tr, va, how, record = add_extra(cfg, data, train, val, how)
    assert [i for i in tr if i.startswith("+")] == ["+feedback/new.png"]
    assert record[str(extra)]["left_out_as_validation_images"] == 1


def test_a_review_after_a_crash_starts_its_own_line_and_half_writes_are_settled(tmp_path: Path) -> None:
    from steelseg.data.reviews import read_reviews
    from steelseg.serve.feedback import FeedbackWriter

    fb = tmp_path / "fb"
    w = FeedbackWriter(fb, NAMES)
    img = _images(tmp_path / "imgs", 2)
    data = (img / "im0.png").read_bytes()
    model = np.zeros((64, 96, 2), np.uint8)
    w.add(data, "im0.png", model, {"pits": "absent", "streaks": "absent"}, None)
    with open(fb / "reviews.jsonl", "a") as fh:
        fh.write('{"image_id": "cut sh')  # a crash mid-line
    # a crash between "train.csv replaced" and "image renamed": the rows are there, the image a .tmp
    (fb / "train_images" / ".abc.png.tmp").write_bytes(data)
    with open(fb / "train.csv", "a") as fh:
        fh.write("abc.png,1,1 5\n")
    (fb / "train_images" / ".orphan.png.tmp").write_bytes(b"half")
    (fb / ".train.csv.steelseg-x.tmp").write_text("killed")
    w2 = FeedbackWriter(fb, NAMES)
    assert len(w2.recovered) == 3
    assert (fb / "train_images" / "abc.png").is_file() and not list((fb / "train_images").glob(".*.tmp"))
    assert not (fb / ".train.csv.steelseg-x.tmp").exists()
    w2.add((img / "im1.png").read_bytes(), "im1.png", model, {"pits": "absent", "streaks": "absent"}, None)
    assert len(read_reviews(fb)) == 2 and "cut sh" in (fb / "reviews.partial.jsonl").read_text()
    from steelseg.data.open import open_dataset

    assert len(open_dataset(fb).table) == 3  # the folder trains


def test_masks_in_defect_free_folders_are_paired_not_read_as_images(tmp_path: Path) -> None:
    from steelseg.data.open import open_dataset

    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for cls in ("scratch",):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / cls / f"{i}.jpg")
            m = np.zeros((32, 32), np.uint8)
            m[4:9, 4:20] = 255
            Image.fromarray(m).save(root / cls / f"{i}.png")
    (root / "good").mkdir()
    for i in range(2):  # good/000.png + 000_mask.png, and Magnetic-tile's x.jpg + x.png
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "good" / f"{i}.png")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "good" / f"{i}_mask.png")
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "good" / "mt.jpg")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "good" / "mt.png")
    ds = open_dataset(root)
    assert sorted(i for i in ds.image_ids if i.startswith("good/")) == ["good/0.png", "good/1.png", "good/mt.jpg"]
    bad = np.zeros((32, 32), np.uint8)
    bad[0:3, 0:3] = 255
    Image.fromarray(bad).save(root / "good" / "1_mask.png")
    with pytest.raises(DataError, match="1_mask.png.*defect-free"):
        open_dataset(root)


def test_convert_writes_the_displayed_pixels_of_a_rotated_photo(tmp_path: Path) -> None:
    from steelseg.data import rle
    from steelseg.data.convert import convert
    from steelseg.data.kaggle import write_kaggle_csv
    from steelseg.data.open import open_dataset

    src = tmp_path / "src"
    (src / "train_images").mkdir(parents=True)
    stored = np.zeros((40, 60), np.uint8)
    stored[:, :10] = 255  # a bright band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the band is on top as shown
    Image.fromarray(stored).save(src / "train_images" / "a.png", exif=exif)
    shown = np.zeros((60, 40), np.uint8)
    shown[:10, :] = 1
    write_kaggle_csv(src / "train.csv", [("a.png", 1, rle.encode(shown))])
    convert(open_dataset(src), tmp_path / "out", "kaggle")
    with Image.open(tmp_path / "out" / "train_images" / "a.png") as im:
        assert im.getexif().get(0x0112, 1) == 1
        plain = np.asarray(im)  # as a reader that ignores EXIF sees it
    assert plain.shape == (60, 40) and plain[:10].min() == 255 and plain[20:].max() == 0
    out = open_dataset(tmp_path / "out")
    assert (out.load_mask("a.png")[..., 0] == shown).all()


def test_the_kit_wheel_is_built_outside_the_checkout(tmp_path: Path) -> None:
    from steelseg.kaggle.deps import _project_root, build_steelseg_wheel

    root = _project_root()
    before = {p.name for p in root.iterdir()}
    wheel = build_steelseg_wheel(tmp_path)
    assert (tmp_path / wheel.file).is_file()
    assert {p.name for p in root.iterdir()} == before  # no build/, no *.egg-info
