"""Group folders (KolektorSDD as it is distributed): a folder per physical part, image + ``_label.bmp`` mask
pairs, one class, mostly defect-free; told apart from class folders by the masks, refused when the masks do
not decide; pairs at any depth; grouped folds that never split a group."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.cli import main
from steelseg.data import open_dataset
from steelseg.data.folds import image_groups, make_folds
from steelseg.errors import DataError

from .conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]


def make_groups(root: Path, parts: int = 6, per_part: int = 4, defective: int = 1, seed: int = 0) -> dict:
    """``parts`` folders kosNN of ``per_part`` gray JPEGs of mixed heights with ``_label.bmp`` masks (1-bit
    and 8-bit 0/1, as the real set holds); the first ``defective`` images of each part have a crack."""
    rng = np.random.default_rng(seed)
    truth = {}
    for g in range(parts):
        folder = root / f"kos{g + 1:02d}"
        folder.mkdir(parents=True)
        for k in range(per_part):
            h = 60 + 4 * ((g + k) % 3)  # mixed heights, as 1240-1270 in the real set
            img = rng.integers(60, 120, (h, 48), dtype=np.uint8)
            mask = np.zeros((h, 48), np.uint8)
            if k < defective:
                y = 10 + k
                mask[y:y + 20, 20:24] = 1
                img[mask > 0] = 250
            Image.fromarray(img).save(folder / f"Part{k}.jpg", quality=95)
            label = Image.fromarray(mask * 255).convert("1") if (g + k) % 2 else Image.fromarray(mask)
            label.save(folder / f"Part{k}_label.bmp")
            truth[f"kos{g + 1:02d}/Part{k}.jpg"] = mask
    return truth


def test_group_folders_read_to_the_expected_table(tmp_path, capsys) -> None:
    truth = make_groups(tmp_path / "k")
    ds = open_dataset(tmp_path / "k")
    assert ds.layout == "groups" and ds.class_names == ["defect"]
    assert sorted(ds.image_ids) == sorted(truth)
    assert ds.groups == [i.split("/")[0] for i in ds.image_ids] and len(set(ds.groups)) == 6
    assert int(ds.presence().sum()) == 6 and len(set(ds.table["height"])) == 3
    for image_id, mask in truth.items():
        np.testing.assert_array_equal(ds.load_mask(image_id)[..., 0], mask, err_msg=image_id)
    assert "18 of 24 masks are empty" in ds.reason
    assert main(["info", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "(groups layout)" in out and "classes     1" in out and "groups      6" in out and "why" in out
    named = open_dataset(tmp_path / "k", ["crack"])
    assert named.class_names == ["crack"] and named.layout == "groups"


def test_what_would_make_33_classes_of_one_image_cannot_pass_silently(tmp_path, capsys) -> None:
    """Half-empty masks beside a defect-free folder: class folders and group folders are both readings, so
    the reader refuses with both and asks for --layout; forced, each reading is what was asked."""
    make_groups(tmp_path / "a", parts=4, per_part=4, defective=3)  # 25% empty masks: the masks do not decide
    (tmp_path / "a" / "good").mkdir()
    Image.fromarray(np.full((60, 48), 90, np.uint8)).save(tmp_path / "a" / "good" / "x.jpg")
    with pytest.raises(DataError, match="could be read two ways") as err:
        open_dataset(tmp_path / "a")
    assert "as class folders (4 classes" in str(err.value) and "as group folders (1 class, 4 groups" in str(err.value)
    assert "--layout folders or --layout groups" in str(err.value)
    assert main(["info", str(tmp_path / "a")]) == 2
    assert open_dataset(tmp_path / "a", layout="folders").num_classes == 4
    with pytest.raises(DataError, match="good/x.jpg: image without a mask"):  # groups: every image has a mask
        open_dataset(tmp_path / "a", layout="groups")
    (tmp_path / "a" / "good" / "x.jpg").unlink()
    (tmp_path / "a" / "good").rmdir()
    groups = open_dataset(tmp_path / "a", layout="groups")
    assert groups.num_classes == 1 and len(set(groups.groups)) == 4


def test_class_folders_stay_class_folders(tmp_path) -> None:
    make_groups(tmp_path / "c", parts=3, per_part=2, defective=2)  # every mask holds a defect
    ds = open_dataset(tmp_path / "c")
    assert ds.layout == "folders" and ds.num_classes == 3 and ds.groups is None
    assert "every image outside the defect-free folders has a defect" in ds.reason


def test_pairs_at_any_depth_and_free_dirs_by_pattern(tmp_path, capsys) -> None:
    root = tmp_path / "n"
    for cls in ("scratch", "pit"):
        d = root / cls / "images" / "cam1"
        d.mkdir(parents=True)
        for k in range(2):
            m = np.zeros((40, 40), np.uint8)
            m[5:15, 5 + k:15 + k] = 255
            Image.fromarray(np.full((40, 40), 100, np.uint8)).save(d / f"{cls}{k}.jpg")
            Image.fromarray(m).save(d / f"{cls}{k}.png")
    ok = root / "OK_images" / "day2"
    ok.mkdir(parents=True)
    Image.fromarray(np.full((40, 40), 100, np.uint8)).save(ok / "clean.jpg")
    ds = open_dataset(root)
    assert ds.layout == "folders" and ds.class_names == ["pit", "scratch"]  # OK_images: a default pattern
    assert "scratch/images/cam1/scratch1.jpg" in ds.image_ids and "OK_images/day2/clean.jpg" in ds.image_ids
    assert int((~ds.presence().any(axis=1)).sum()) == 1
    (root / "part_free").mkdir()
    Image.fromarray(np.full((40, 40), 100, np.uint8)).save(root / "part_free" / "p.jpg")
    ds = open_dataset(root, free_dirs=["ok_*", "*_FREE"])
    assert int((~ds.presence().any(axis=1)).sum()) == 2
    (root / "dents").mkdir()
    (root / "dents" / "notes.txt").write_text("labels to come")
    (root / "dents" / "raw").mkdir()
    with pytest.raises(DataError, match="no image \\+ mask pairs at any depth") as err:
        open_dataset(root)
    assert "x_label.*" in str(err.value) and "1 .txt" in str(err.value) and "subfolders raw" in str(err.value)


def test_grouped_folds_never_split_a_group(tmp_path) -> None:
    make_groups(tmp_path / "k", parts=9, per_part=4)
    ds = open_dataset(tmp_path / "k")
    folds = make_folds(ds, k=3, seed=1, groups=image_groups(ds))
    per_group = folds.groupby("group")["fold"].nunique()
    assert (per_group == 1).all() and folds["fold"].nunique() == 3
    assert sorted(folds.groupby("fold")["group"].nunique()) == [3, 3, 3]
    defective = folds[ds.presence().any(axis=1)]
    assert sorted(defective.groupby("fold").size()) == [3, 3, 3]  # stratified: each fold holds its share
    assert image_groups(ds, "none") is None
    with pytest.raises(DataError, match="in no folder"):
        image_groups(open_dataset(make_flat(tmp_path / "flat")), "folder")


def make_flat(root: Path) -> Path:
    from steelseg.data.synth import SynthConfig, make_dataset

    return make_dataset(root, SynthConfig(images=4, seed=1, height=32, width=64))


def test_a_run_on_group_folders_splits_by_group_and_records_it(tmp_path) -> None:
    from steelseg.training import fit, load_config

    make_groups(tmp_path / "k", parts=10, per_part=3)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"data.path={tmp_path / 'k'}", f"out_dir={tmp_path / 'runs'}",
                                                       "data.crop=[48, 48]", "data.num_workers=0", "train.epochs=1",
                                                       "track.mlflow=false", "train.limit_train_batches=1"])
    run = fit(cfg).run_dir
    split = json.loads((run / "split.json").read_text())
    assert "grouped: 10 groups kept whole" in split["how"]
    assert split["groups"]["train"] and split["groups"]["val"]
    assert not set(split["groups"]["train"]) & set(split["groups"]["val"])
    assert {i.split("/")[0] for i in split["val"]} == set(split["groups"]["val"])


def test_kolektor_sdd_as_distributed() -> None:
    root = shared_path("kolektor_sdd")
    ds = open_dataset(root)
    assert ds.layout == "groups" and ds.class_names == ["defect"]
    assert len(ds.table) == 264 and len(set(ds.groups)) == 33 and int(ds.presence().sum()) == 33
    assert set(ds.table["width"]) == {500}
    per_group = ds.table.assign(d=ds.presence()[:, 0]).groupby("group")["d"].sum()
    assert (per_group == 1).all()  # every part has exactly one defective image
    folds = make_folds(ds, k=3, seed=42, groups=ds.groups)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()


# ---- image-level detection ---------------------------------------------------------------------------
def test_average_precision_by_hand() -> None:
    from steelseg.metrics import average_precision, detection_counts

    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    labels = np.array([1, 0, 1, 0, 1], bool)
    # thresholds 0.9: P 1/1, +1/3 recall; 0.8 (a tie, one step): P 2/3, +1/3; 0.3: no gain; 0.1: P 3/5, +1/3
    assert average_precision(scores, labels) == pytest.approx(1 / 3 + 2 / 9 + 1 / 5)
    assert average_precision(scores, labels.astype(int) * 0) != average_precision(scores, labels.astype(int) * 0)
    c = detection_counts(np.array([1, 1, 0, 0, 0], bool), labels)
    assert (c.missed, c.false_alarms, c.defective, c.defect_free) == (2, 1, 3, 2) and c.recall == pytest.approx(1 / 3)


def _weak_defect_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image 0 has a faint 10x10 defect (p = 0.3); images 1-3 are defect-free with larger faint noise
    (12x12 at p = 0.3): Kaggle Dice is best when nothing is predicted, which misses image 0."""
    probs = np.zeros((4, 32, 32, 1), np.uint8)
    true = np.zeros((4, 32, 32, 1), np.uint8)
    probs[0, 2:12, 2:12, 0] = round(0.3 * 255)
    true[0, 2:12, 2:12, 0] = 1
    for i in (1, 2, 3):
        probs[i, 10:22, 10:22, 0] = round(0.3 * 255)
    hist_all = np.stack([[np.bincount(probs[i, ..., 0].ravel(), minlength=256)] for i in range(4)])
    hist_true = np.stack([[np.bincount(probs[i, ..., 0][true[i, ..., 0] > 0], minlength=256)] for i in range(4)])
    return probs, true, (hist_all, hist_true)


def test_tune_min_recall_keeps_every_defective_image() -> None:
    from steelseg.inference.tune import detected_images, tune_min_component, tune_postprocess

    probs, true, (hist_all, hist_true) = _weak_defect_case()
    plain = tune_postprocess(hist_all, hist_true, 32 * 32)
    assert plain.mean_after == pytest.approx(0.75) and not detected_images(probs, plain.chosen)[0, 0]
    kept = tune_postprocess(hist_all, hist_true, 32 * 32, min_recall=1.0)
    found = detected_images(probs, kept.chosen)
    assert found[0, 0] and kept.mean_after == pytest.approx(0.25)  # the price of the second look, measured
    refined, _ = tune_min_component(probs, true, kept.chosen, min_recall=1.0)
    assert detected_images(probs, refined)[0, 0]


def test_evaluate_and_tune_report_image_level_detection(tmp_path, capsys) -> None:
    from steelseg.training import fit, load_config

    make_groups(tmp_path / "k", parts=6, per_part=3)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"data.path={tmp_path / 'k'}", f"out_dir={tmp_path / 'runs'}",
                                                       "data.crop=[48, 48]", "data.num_workers=0", "train.epochs=1",
                                                       "track.mlflow=false", "name=det"])
    run = fit(cfg).run_dir
    assert main(["evaluate", str(run), "--data", str(tmp_path / "k")]) == 0  # into RUN/eval-val
    out = capsys.readouterr().out
    assert "image-level detection (score: segmenter maximum probability)" in out and "any defect" in out
    det = json.loads((run / "eval-val" / "metrics.json").read_text())["detection"]
    assert set(det["per_class"]) == {"defect"} and 0 <= det["any"]["ap"] <= 1
    assert main(["tune", str(run), "--data", str(tmp_path / "k"), "--out", str(tmp_path / "b"),
                 "--min-recall", "1.0"]) == 0
    assert "image-level detection" in capsys.readouterr().out
    info = json.loads((tmp_path / "b" / "bundle.json").read_text())["tuned_on"]
    assert info["min_recall"] == 1.0 and info["detection"]["per_class"]["defect"]["missed"] == 0
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["detection"]["any"]["ap"] == det["any"]["ap"] and rep["summary"]["ap"] is not None
    assert "Image-level detection" in (tmp_path / "rep" / "index.html").read_text()
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.split()[-1] == "ap", header


def test_detection_from_histograms_equals_the_masks() -> None:
    from steelseg.inference.postprocess import PostProcess
    from steelseg.inference.tune import detected_from_histograms, detected_images

    probs, _, (hist_all, _) = _weak_defect_case()
    for pp in (PostProcess([0.2], [0], [0]), PostProcess([0.2], [120], [0]), PostProcess([0.5], [0], [0])):
        np.testing.assert_array_equal(detected_from_histograms(hist_all, pp), detected_images(probs, pp))
