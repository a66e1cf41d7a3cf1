"""The winning pipeline end to end with a tiny model trained once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from steelseg import metrics
from steelseg.cli import main
from steelseg.data import rle
from steelseg.data.open import open_dataset
from steelseg.data.synth import SynthConfig, make_dataset
from steelseg.errors import DataError
from steelseg.inference.bundle import write_bundle
from steelseg.inference.predict import predict_folder
from steelseg.inference.predictor import Predictor
from steelseg.inference.submission import read_submission
from steelseg.training.config import load_config

from .conftest import round_trip_ious

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def trained_run(synth_small, tmp_path_factory) -> Path:
    from steelseg.training.run import fit

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"data.path={synth_small}", f"out_dir={out}", "data.num_workers=0", "data.crop=null",
        "train.epochs=3", "train.lr=0.01", "track.mlflow=false", "name=seg"])
    return fit(cfg).run_dir


@pytest.fixture(scope="session")
def trained_classifier(synth_small, tmp_path_factory) -> Path:
    from steelseg.training.run import fit

    out = tmp_path_factory.mktemp("runs_cls")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"data.path={synth_small}", f"out_dir={out}", "data.num_workers=0", "data.crop=null",
        "train.epochs=2", "track.mlflow=false", "name=cls", "model.task=classify", "model.encoder=test_resnet",
        "model.kwargs={}", "train.loss=bce"])
    return fit(cfg).run_dir


@pytest.fixture(scope="session")
def test_set(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("test_set"), SynthConfig(images=10, seed=21, height=64, width=320))


@pytest.fixture(scope="session")
def bundle(trained_run, trained_classifier, synth_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    assert main(["tune", str(trained_run), "--classifier", str(trained_classifier), "--data", str(synth_small),
                 "--tta", "--out", str(out)]) == 0
    return out


def test_tuned_not_worse_than_default(bundle) -> None:
    info = json.loads((bundle / "bundle.json").read_text())["tuned_on"]
    assert info["dice_after"] >= info["dice_before"]
    assert all(a >= b - 1e-12 for a, b in zip(info["per_class_after"], info["per_class_before"]))
    pp = json.loads((bundle / "postprocess.json").read_text())
    assert len(pp["pixel_threshold"]) == 4 and pp["gate_threshold"] is not None
    ref = json.loads((bundle / "reference.json").read_text())  # the drift reference, from the images tuned on
    assert ref["images"] == info["images"] and sum(ref["brightness"]) == ref["images"] and "split val" in ref["how"]


def test_tune_reuses_saved_predictions(bundle, trained_run, trained_classifier, synth_small, tmp_path,
                                       capsys) -> None:
    capsys.readouterr()
    args = ["tune", str(trained_run), "--classifier", str(trained_classifier), "--data", str(synth_small), "--tta"]
    assert main(args + ["--out", str(tmp_path / "again")]) == 0
    assert "reusing saved predictions" in capsys.readouterr().out
    assert (tmp_path / "again" / "postprocess.json").read_text() == (bundle / "postprocess.json").read_text()
    assert main(args[:-1] + ["--out", str(tmp_path / "no_tta")]) == 0  # TTA changed: predict again
    assert "predicting val once" in capsys.readouterr().out


def test_predict_submission_valid_and_rescored(bundle, test_set, tmp_path) -> None:
    out = tmp_path / "pred"
    assert main(["predict", str(bundle), str(test_set / "train_images"), "--out", str(out), "--overlays",
                 "--labels", str(test_set), "--format", "labelme,yolo,cvat,labelstudio"]) == 0
    rows = read_submission(out / "submission.csv")
    _preannotations_read_back_as_the_submission(out, test_set / "train_images",
                                                json.loads((out / "predict.json").read_text())["class_names"])
    ds = open_dataset(test_set)
    assert sorted((r[0], r[2]) for r in rows) == sorted((i, c) for i in ds.image_ids for c in range(1, 5))
    pred = np.zeros((len(ds.image_ids), 64, 320, 4), np.uint8)
    index = {i: n for n, i in enumerate(ds.image_ids)}
    for image_id, code, class_id in rows:
        pred[index[image_id], ..., class_id - 1] = rle.decode(code, (64, 320))  # raises if outside
    true = np.stack([ds.load_mask(i) for i in ds.image_ids])
    rescored = metrics.kaggle_dice(pred, true).mean
    ev = tmp_path / "eval"
    assert main(["evaluate", "--bundle", str(bundle), "--data", str(test_set), "--split", "all",
                 "--out", str(ev)]) == 0
    reported = json.loads((ev / "metrics.json").read_text())
    assert rescored == pytest.approx(reported["dice"])
    assert rescored == pytest.approx(json.loads((out / "predict.json").read_text())["dice"])
    assert len(list((out / "overlays").glob("*.png"))) == 10
    assert (ev / "per_image.csv").is_file() and "classifier" in reported


def _preannotations_read_back_as_the_submission(out: Path, images: Path, names: list[str]) -> None:
    """Each tool's folder reads back as the submission's masks, up to polygons (issue #39)."""
    from steelseg.data.kaggle import rle_dataset

    sub = rle_dataset(images, out / "submission.csv", {p.name: p for p in sorted(images.iterdir())}, names)
    for fmt in ("labelme", "yolo", "cvat", "labelstudio"):
        back = open_dataset(out / fmt, names)
        assert back.layout == fmt and len(back.table) == len(sub.table)
        ids = {Path(i).name: i for i in back.image_ids}
        ious = round_trip_ious(sub, back, lambda image_id: ids[image_id])
        assert not ious or (min(ious) >= 0.85 and np.mean(ious) >= 0.95), (fmt, min(ious), np.mean(ious))


def test_preannotations_carry_the_submissions_masks(synth_small, tmp_path) -> None:
    """predict --format's writer on a submission with known masks (the synthetic set's own rows)."""
    from steelseg.inference.predict import write_preannotations

    out = tmp_path / "pred"
    out.mkdir()
    shutil.copyfile(synth_small / "train.csv", out / "submission.csv")  # ImageId,ClassId,EncodedPixels: read alike
    images = synth_small / "train_images"
    names = open_dataset(synth_small).class_names
    assert open_dataset(synth_small).presence().sum() > 10
    done = write_preannotations(out, images, {p.name: p for p in sorted(images.iterdir())}, names,
                                ["labelme", "yolo", "cvat", "labelstudio"])
    assert sorted(done) == ["cvat", "labelme", "labelstudio", "yolo"]
    _preannotations_read_back_as_the_submission(out, images, names)


def test_predictor_api_gating_tta_ensemble(trained_run, trained_classifier, test_set) -> None:
    from steelseg.inference.postprocess import PostProcess

    ds = open_dataset(test_set)
    images = [ds.load_image(i) for i in ds.image_ids[:3]]
    pp = PostProcess([0.5] * 4, [0] * 4, gate_any=1.0)  # the classifier calls everything defect-free
    p = Predictor.from_models([trained_run, trained_run], [trained_classifier], pp, tta=True)
    preds = p.predict(images)
    assert all(r.skipped and r.masks.sum() == 0 for r in preds)
    plain = Predictor.from_models([trained_run])
    one, two = plain.predict(images[:1])[0], Predictor.from_models([trained_run, trained_run]).predict(images[:1])[0]
    np.testing.assert_allclose(one.probs, two.probs, atol=1e-5)  # averaging a model with itself
    single = plain.predict([images[0][:48, :200]])[0]  # another size works too
    assert single.masks.shape == (48, 200, 4)


def test_binary_classifier_gates_every_class(trained_run, synth_small, test_set, tmp_path) -> None:
    from steelseg.inference.postprocess import PostProcess
    from steelseg.training.run import fit

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"data.path={synth_small}", f"out_dir={tmp_path}", "data.num_workers=0", "data.crop=null", "train.epochs=1",
        "track.mlflow=false", "model.task=classify", "model.encoder=test_resnet", "model.kwargs={}",
        "train.loss=bce", "model.binary=true"])
    binary = fit(cfg).run_dir
    ds = open_dataset(test_set)
    images = [ds.load_image(i) for i in ds.image_ids[:2]]
    p = Predictor.from_models([trained_run], [binary], PostProcess([0.0] * 4, [0] * 4, gate_threshold=[1.0] * 4))
    preds = p.predict(images)
    assert all(r.gate.shape == (4,) and np.allclose(r.gate, r.gate_any) for r in preds)
    assert all(r.masks.sum() == 0 for r in preds)  # every class gated off by the one probability


def test_all_empty_baseline_bundle(test_set, tmp_path) -> None:
    b = tmp_path / "empty"
    assert main(["bundle", "--empty", "--class-names", "pits,streaks,scratches,blotches", "--out", str(b)]) == 0
    res = predict_folder(b, test_set / "train_images", tmp_path / "out", labels=test_set)
    ds = open_dataset(test_set)
    assert res["dice"] == pytest.approx(float((~ds.presence()).mean()))
    assert all(code == "" for _, code, _ in read_submission(tmp_path / "out" / "submission.csv"))


def test_real_severstal_through_predict(trained_run, severstal_real, tmp_path) -> None:
    b = write_bundle(tmp_path / "plain", [trained_run], kind="plain")
    res = predict_folder(b, severstal_real / "train_images", tmp_path / "out", labels=severstal_real,
                         overlays=True)
    rows = read_submission(tmp_path / "out" / "submission.csv")
    assert len(rows) == 11 * 4 and res["images"] == 11
    for _, code, _ in rows:
        rle.decode(code, (256, 1600))
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 11


def test_bad_inputs(trained_run, test_set, tmp_path, capsys) -> None:
    b = write_bundle(tmp_path / "plain", [trained_run], kind="plain")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        predict_folder(b, empty, tmp_path / "o1")
    mixed = tmp_path / "mixed"
    shutil.copytree(test_set / "train_images", mixed)
    (mixed / "notes.txt").write_text("not an image")
    res = predict_folder(b, mixed, tmp_path / "o2")
    assert res["skipped_files"] == ["notes.txt"] and res["images"] == 10
    from PIL import Image

    Image.fromarray(np.zeros((100, 500), np.uint8)).save(mixed / "other_size.png")
    assert predict_folder(b, mixed, tmp_path / "o3")["images"] == 11  # any size the model takes
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "tiny.png")
    with pytest.raises(DataError, match="tiny.png: image is 8x8"):
        predict_folder(b, mixed, tmp_path / "o4")
    assert not (tmp_path / "o4" / "submission.csv").exists()
    (b / "segmenters" / "0" / "best.safetensors").unlink()
    assert main(["predict", str(b), str(test_set / "train_images"), "--out", str(tmp_path / "o5")]) == 2
    assert "best.safetensors: missing" in capsys.readouterr().err


def test_export_onnx_and_int8_bundles_predict_like_torch(bundle, synth_small, test_set, tmp_path, capsys) -> None:
    """steelseg export -> predict / evaluate pick the ONNX bundle up; fp32 submission equals torch's."""
    onnx_b, int8_b = tmp_path / "onnx", tmp_path / "int8"
    assert main(["export", str(bundle), "--out", str(onnx_b), "--data", str(synth_small)]) == 0
    assert "parity on 4 images" in capsys.readouterr().out
    images = test_set / "train_images"
    assert main(["predict", str(bundle), str(images), "--out", str(tmp_path / "pt")]) == 0
    assert main(["predict", str(onnx_b), str(images), "--out", str(tmp_path / "ox"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "ox" / "predict.json").read_text())["backend"] == "onnx"
    assert read_submission(tmp_path / "ox" / "submission.csv") == read_submission(tmp_path / "pt" / "submission.csv")
    assert main(["evaluate", "--bundle", str(onnx_b), "--data", str(test_set), "--split", "all",
                 "--out", str(tmp_path / "ev")]) == 0
    assert main(["export", str(bundle), "--out", str(int8_b), "--data", str(synth_small), "--quantize", "int8",
                 "--max-dice-drop", "1", "--val", "8", "--calib", "8"]) == 0
    out = capsys.readouterr().out
    assert "int8: Kaggle Dice" in out and "images/s" in out
    info = json.loads((int8_b / "bundle.json").read_text())["export"]
    assert info["quantize"] == "int8" and info["dice_before"] is not None
    assert main(["predict", str(int8_b), str(images), "--out", str(tmp_path / "i8")]) == 0


def test_run_report_numbers_and_page(bundle, trained_run, tmp_path, capsys) -> None:
    """steelseg report on the tuned test run: its numbers are the run's metrics.csv; the page loads."""
    import csv
    import re
    import subprocess

    out = tmp_path / "report"
    assert main(["report", str(trained_run), "--out", str(out), "--worst", "3"]) == 0
    rep = json.loads((out / "report.json").read_text())
    with open(trained_run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    best = max(rows, key=lambda r: float(r["val/dice"]))
    assert abs(rep["summary"]["dice"] - float(best["val/dice"])) < 1e-9
    assert rep["best_epoch_metrics"]["val/dice"] == pytest.approx(float(best["val/dice"]))
    assert len(rep["search"]) == 4 and len(rep["worst"]) == 3
    page = (out / "index.html").read_text()
    assert "Post-processing search" in page and page.count("<img") >= 2 + 1 + 3
    if shutil.which("chromium"):
        probe = ("<script>window.addEventListener('load', () => { const i = [...document.images];"
                 " document.body.setAttribute('data-loaded', i.filter(x => x.complete && x.naturalWidth > 0).length"
                 " + '/' + i.length); });</script></body>")
        (out / "probe.html").write_text(page.replace("</body>", probe))
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                              "--virtual-time-budget=5000", "--dump-dom", (out / "probe.html").as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
        loaded, total = map(int, re.search(r'data-loaded="(\d+)/(\d+)"', dom).groups())
        assert total >= 6 and loaded == total
