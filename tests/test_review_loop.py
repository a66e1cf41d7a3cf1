"""The review loop without a browser: corrected masks through /v1/feedback, the checks on posted RLE,
reviews.jsonl and `steelseg info`, the uncertainty signals and queue order, and `data.extra`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from steelseg.cli import main
from steelseg.data import rle
from steelseg.data.open import open_dataset
from steelseg.data.reviews import read_reviews, summarize
from steelseg.data.synth import SynthConfig, make_dataset
from steelseg.errors import DataError
from steelseg.inference.postprocess import PostProcess
from steelseg.inference.uncertainty import band_signal, class_signals, flip_signal, gate_signal, priority, queue_order

NAMES = ["pits", "streaks", "scratches", "blotches"]


# ---- the signals and the order ------------------------------------------------------------------------
def test_band_signal_is_the_share_of_candidate_pixels_near_the_threshold() -> None:
    p = np.array([0.0, 0.35, 0.45, 0.55, 0.9, 0.95])
    # candidates: p > 0.4 (t - b) -> 0.45, 0.55, 0.9, 0.95; within 0.1 of 0.5: 0.45, 0.55
    assert band_signal(p, 0.5, 0.1) == pytest.approx(2 / 4)
    assert band_signal(np.zeros(5), 0.5) == 0.0


def test_gate_flip_and_area_signals() -> None:
    assert gate_signal(0.5, 0.5) == 1.0 and gate_signal(1.0, 0.5) == 0.0 and gate_signal(0.0, 0.5) == 0.0
    assert gate_signal(0.75, 0.5) == pytest.approx(0.5) and gate_signal(None, 0.5) == 0.0
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = a.copy()
    assert flip_signal(a, b) == 0.0
    b[:] = False
    b[1:3] = True  # half overlap: Dice 0.5
    assert flip_signal(a, b) == pytest.approx(0.5)
    probs = np.zeros((8, 8, 2), np.float32)
    probs[:4, :4, 0] = 0.9  # 16 px above the threshold, min area 32 -> 0.5
    pp = PostProcess([0.5, 0.5], [32, 0])
    sig = class_signals(probs, probs, pp, None)
    assert sig[0]["area"] == pytest.approx(0.5) and sig[1]["area"] == 0.0 and sig[0]["flip"] == 0.0
    pr = priority(sig, ["a", "b"])
    assert pr.score == pytest.approx(0.5) and pr.reason.startswith("a: the mask's area is near the minimum")


def test_queue_order_is_most_unsure_first_with_every_tenth_place_random() -> None:
    scores = list(np.linspace(0, 1, 25))
    order = queue_order(scores, random_every=10, seed=3)
    idx = [i for i, _ in order]
    assert sorted(idx) == list(range(25))
    drawn = [k for k, (_, r) in enumerate(order) if r]
    assert drawn == [9, 19]
    plain = [i for i, r in order if not r]
    assert plain == sorted(plain, key=lambda i: -scores[i])  # the rest keep the priority order
    assert [i for i, _ in queue_order([0.2, 0.9, 0.5])] == [1, 2, 0]


# ---- feedback with masks -----------------------------------------------------------------------------
def make_review_bundle(root: Path) -> Path:
    """A tiny random-init segmenter whose thresholds find about 10% of the pixels for pits and streaks and
    never find scratches or blotches (threshold 1.0), so both kinds of verdict occur on every image."""
    from steelseg.inference.bundle import write_bundle
    from steelseg.inference.predictor import Predictor

    from .conftest import tiny_model_at

    from safetensors.torch import load_file, save_file

    seg = tiny_model_at(root / "seg", NAMES)
    weights = load_file(seg / "best.safetensors")  # a random model is unsure of everything (p near 0.5):
    for k in weights:  # sharpen its head so that its images differ in how sure it is
        if k.startswith("segmentation_head") or ".segmentation_head." in k:
            weights[k] = weights[k] * 40
    save_file(weights, seg / "best.safetensors")
    probe = Predictor.from_models([seg]).predict([np.full((64, 320), 128, np.uint8)])[0].probs
    thr = [float(np.quantile(probe[..., c], 0.9)) for c in range(2)] + [1.0, 1.0]
    return write_bundle(root / "bundle", [seg], [], PostProcess(thr, [0] * 4, None, None, None))


@pytest.fixture()
def client(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from steelseg.serve.app import ServeConfig, create_app

    b = make_review_bundle(tmp_path / "b")
    return TestClient(create_app(ServeConfig(str(b), feedback=str(tmp_path / "fb")))), tmp_path / "fb"


def _png(seed: int, shape: tuple[int, int] = (64, 320)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _post(c, data: bytes, verdicts: dict, masks: dict | None = None, shape=(64, 320), reviewer: str | None = None):
    fields = {"verdicts": json.dumps(verdicts)}
    if masks is not None:
        fields["masks"] = json.dumps({"height": shape[0], "width": shape[1], "masks": masks})
    if reviewer:
        fields["reviewer"] = reviewer
    return c.post("/v1/feedback", files={"file": ("a.png", data, "image/png")}, data=fields)


def test_corrected_and_drawn_masks_land_in_train_csv_with_a_review_record(client, capsys) -> None:
    c, fb = client
    data = _png(1)
    pred = c.post("/v1/predict", files={"file": ("a.png", data, "image/png")}).json()
    model = {k["name"]: rle.decode(k["rle"], (64, 320)) for k in pred["classes"]}
    final, verdicts = {}, {}
    for k in pred["classes"]:
        m = model[k["name"]].copy()
        if k["present"]:
            m[:, :40] = 0  # the reviewer erases the left part
            verdicts[k["name"]] = "corrected" if m.any() else "wrong"
        else:
            m[10:20, 100:130] = 1  # and draws a missed defect
            verdicts[k["name"]] = "missed"
        final[k["name"]] = m
    r = _post(c, data, verdicts, {n: rle.encode(m) for n, m in final.items()}, reviewer="ana")
    assert r.status_code == 200 and r.json()["stored"] == "train", r.text
    ds = open_dataset(fb)
    got = ds.load_mask(r.json()["image_id"])
    for i, n in enumerate(NAMES):
        np.testing.assert_array_equal(got[..., i], final[n])
    rec = read_reviews(fb)[-1]
    assert rec["reviewer"] == "ana" and rec["bundle"] and rec["time"].endswith("Z")
    for n in NAMES:
        assert rle.decode(rec["classes"][n]["model_rle"], (64, 320)).sum() == model[n].sum()
        assert rec["classes"][n]["final_rle"] == rle.encode(final[n])
    s = summarize(fb, NAMES)
    assert s["reviews"] == 1 and sum(k["changed"] for k in s["classes"]) == len(NAMES)
    assert main(["info", str(fb)]) == 0
    out = capsys.readouterr().out
    assert "reviews     1 (1 to train, 0 need masks) by ana" in out and "Dice model vs final" in out


def test_missed_without_a_drawing_waits_in_needs_masks_until_drawn(client) -> None:
    c, fb = client
    data = _png(2)
    pred = c.post("/v1/predict", files={"file": ("a.png", data, "image/png")}).json()
    absent = [k["name"] for k in pred["classes"] if not k["present"]]
    if not absent:
        pytest.skip("the tiny model found every class on this image")
    verdicts = {k["name"]: "right" if k["present"] else "absent" for k in pred["classes"]}
    verdicts[absent[0]] = "missed"
    r = _post(c, data, verdicts)
    assert r.json()["stored"] == "needs_masks" and (fb / "needs_masks" / r.json()["image_id"]).is_file()
    masks = {k["name"]: k["rle"] if k["present"] else "" for k in pred["classes"]}
    masks[absent[0]] = "1 64"  # the first column drawn
    r2 = _post(c, data, verdicts, masks)
    assert r2.json()["stored"] == "train" and r2.json()["image_id"] == r.json()["image_id"]
    assert not (fb / "needs_masks" / r.json()["image_id"]).exists()
    assert absent[0] in r2.json()["classes"]


@pytest.mark.parametrize("masks, message", [
    ({"pits": "1 2 3"}, "odd number of tokens"),
    ({"pits": "20400 100"}, "past the image end"),
    ({"pits": "5 3 6 2"}, "overlapping"),
    ({"pits": "0 5"}, "1-indexed"),
    ({"pits": 7}, "expected a Kaggle RLE string"),
])
def test_a_malformed_rle_is_a_400_naming_the_class(client, masks, message) -> None:
    c, _ = client
    data = _png(3)
    pred = c.post("/v1/predict", files={"file": ("a.png", data, "image/png")}).json()
    verdicts = {k["name"]: "corrected" if k["present"] else "missed" for k in pred["classes"]}
    full = {k["name"]: "1 3" for k in pred["classes"]} | masks
    r = _post(c, data, verdicts, full)
    assert r.status_code == 400 and message in r.json()["error"] and "pits" in r.json()["error"], r.text


def test_masks_of_the_wrong_size_or_classes_are_refused(client) -> None:
    c, _ = client
    data = _png(4)
    v = {n: "absent" for n in NAMES}
    r = _post(c, data, v, {n: "" for n in NAMES}, shape=(32, 320))
    assert r.status_code == 400 and "320x32 image, this image is 320x64" in r.json()["error"]
    r = _post(c, data, v, {n: "" for n in NAMES[:3]})
    assert r.status_code == 400 and "no mask" in r.json()["error"] and "blotches" in r.json()["error"]
    bad = c.post("/v1/feedback", files={"file": ("a.png", data, "image/png")},
                 data={"verdicts": json.dumps(v), "masks": "{not json"})
    assert bad.status_code == 400 and "masks: not valid JSON" in bad.json()["error"]


def test_a_verdict_that_contradicts_the_masks_is_refused(client) -> None:
    c, _ = client
    data = _png(5)
    pred = c.post("/v1/predict", files={"file": ("a.png", data, "image/png")}).json()
    found = [k for k in pred["classes"] if k["present"]]
    if not found:
        pytest.skip("the tiny model found nothing on this image")
    verdicts = {k["name"]: "right" if k["present"] else "absent" for k in pred["classes"]}
    masks = {k["name"]: k["rle"] if k["present"] else "" for k in pred["classes"]}
    masks[found[0]["name"]] = "1 3"  # changed, but still called right
    r = _post(c, data, verdicts, masks)
    assert r.status_code == 400 and "say corrected" in r.json()["error"]


# ---- data.extra ----------------------------------------------------------------------------------------
def test_data_extra_trains_on_the_extra_images_and_keeps_them_out_of_validation(synth_small, tmp_path) -> None:
    from steelseg.training.run import fit

    from .test_train import TINY_DEC, tiny_cfg

    extra = make_dataset(tmp_path / "feedback", SynthConfig(images=6, seed=11, height=64, width=320))
    (extra / "classes.txt").write_text("\n".join(NAMES) + "\n")
    result = fit(tiny_cfg(synth_small, tmp_path / "runs", TINY_DEC, "train.limit_train_batches=1",
                          "train.limit_val_batches=1", f"data.extra=[{extra}]"))
    split = json.loads((result.run_dir / "split.json").read_text())
    extra_ids = [i for i in split["train"] if i.startswith("+feedback/")]
    assert len(extra_ids) == 6 and not any(i.startswith("+") for i in split["val"])
    assert split["extra"][str(extra)]["train"] == 6 and split["extra"][str(extra)]["val"] == 0
    assert "6 extra image(s) in training" in split["how"]
    meta = json.loads((result.run_dir / "model" / "model.json").read_text())
    assert meta["trained_on"]["extra"][str(extra)]["images"] == 6
    # asked for: a fold of the extra images validates too
    again = fit(tiny_cfg(synth_small, tmp_path / "runs2", TINY_DEC, "train.limit_train_batches=1",
                         "train.limit_val_batches=1", f"data.extra=[{extra}]", "data.extra_in_val=true"))
    split2 = json.loads((again.run_dir / "split.json").read_text())
    assert 1 <= sum(i.startswith("+feedback/") for i in split2["val"]) < 6


def test_data_extra_masks_come_from_their_own_folder(synth_small, tmp_path) -> None:
    from steelseg.data.combine import combine

    extra = make_dataset(tmp_path / "fb", SynthConfig(images=3, seed=12, height=64, width=320))
    main_ds, extra_ds = open_dataset(synth_small), open_dataset(extra, NAMES)
    both, sets = combine(main_ds, [(str(extra), extra_ds)])
    assert len(both.table) == len(main_ds.table) + 3 and sets[0].prefix == "+fb/"
    i = extra_ds.image_ids[0]
    np.testing.assert_array_equal(both.load_mask("+fb/" + i), extra_ds.load_mask(i))
    np.testing.assert_array_equal(both.load_image("+fb/" + i), extra_ds.load_image(i))
    j = main_ds.image_ids[0]
    np.testing.assert_array_equal(both.load_mask(j), main_ds.load_mask(j))


def test_data_extra_with_other_classes_is_refused(synth_small, tmp_path) -> None:
    from steelseg.data.combine import combine

    extra = make_dataset(tmp_path / "fb", SynthConfig(images=2, seed=13, height=64, width=320))
    (extra / "classes.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(DataError, match="classes.txt names"):
        combine(open_dataset(synth_small), [(str(extra), open_dataset(extra))])


def test_extra_folder_path_is_checked(synth_small, tmp_path) -> None:
    from steelseg.errors import ConfigError
    from steelseg.training.loaders import open_training_data

    from .test_train import tiny_cfg

    with pytest.raises(ConfigError, match="does not exist"):
        open_training_data(tiny_cfg(synth_small, tmp_path, f"data.extra=[{tmp_path / 'nope'}]"))


def test_serve_queue_needs_a_folder(tmp_path, capsys) -> None:
    from .conftest import tiny_bundle_at

    b = tiny_bundle_at(tmp_path, NAMES)
    assert main(["serve", str(b), "--queue", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err

