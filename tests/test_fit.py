"""steelseg plan / fit (issue #36): the fingerprint, each planning rule on hand-made facts, the step budget
from a fake step time, a class switched off when predicting it loses, and fit end to end (killed mid-fold,
resumed) on a tiny generated set."""

from __future__ import annotations

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

from steelseg.data import rle
from steelseg.data.fingerprint import ClassPrint, Fingerprint, component_stats, fingerprint
from steelseg.data.kaggle import write_kaggle_csv
from steelseg.data.open import open_dataset
from steelseg.machine import MachineFacts, machine_facts
from steelseg.planning.rules import Facts, decide, value

AVX512 = MachineFacts("test CPU", 2, 20.0, True, True, True, True, True, 16)
AVX2 = MachineFacts("test CPU", 2, 20.0, True, False, False, False, False, 8)


def _kaggle_set(root: Path, n: int = 10, free: int = 4, size: tuple[int, int] = (64, 96), rgb: bool = False) -> Path:
    """n images; the first ``free`` defect-free, the others a 3-pixel-high line (class 1) and, every other
    one, a 9x9 square (class 2)."""
    (root / "train_images").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(60, 200, (*size, 3) if rgb else size, dtype=np.uint8)
        Image.fromarray(img).save(root / "train_images" / f"im{i}.png")
        if i < free:
            continue
        line = np.zeros(size, np.uint8)
        line[20:23, 10:80] = 1
        rows.append((f"im{i}.png", 1, rle.encode(line)))
        if i % 2:
            sq = np.zeros(size, np.uint8)
            sq[40:49, 30:39] = 1
            rows.append((f"im{i}.png", 2, rle.encode(sq)))
    write_kaggle_csv(root / "train.csv", rows)
    return root


def test_component_widths_are_thicknesses() -> None:
    m = np.zeros((40, 60), np.uint8)
    m[5, 5:50] = 1  # a 1-pixel line
    m[20:23, 5:50] = 1  # 3 pixels thick
    m[30:39, 40:49] = 1  # a 9x9 square
    areas, widths = component_stats(m)
    assert sorted(areas.tolist()) == [45, 81, 135]
    assert sorted(widths.tolist()) == [1.0, 3.0, 9.0]


def test_fingerprint_of_a_generated_set(tmp_path: Path) -> None:
    fp = fingerprint(open_dataset(_kaggle_set(tmp_path / "d")))
    assert (fp.images, fp.defect_free, fp.sizes, fp.channels) == (10, 4, 1, 1)
    assert fp.defect_free_share == pytest.approx(0.4)
    assert fp.heights == {"min": 64, "median": 64, "max": 64} and fp.widths["max"] == 96
    line, square = fp.classes
    assert (line.images, square.images) == (6, 3)
    assert line.width_p5 == line.width_median == 3.0 and line.area_median == 210
    assert square.width_p5 == 9.0 and square.area_median == 81
    assert fp.thinnest_width == 3.0
    colour = fingerprint(open_dataset(_kaggle_set(tmp_path / "rgb", rgb=True)))
    assert colour.channels == 3


def _fp(h: int = 256, w: int = 1600, free: float = 0.5, thin: float = 10.0, typical: float = 20.0,
        rare: float = 0.2, images: int = 400, sizes: int = 1, groups: int | None = None,
        splits: dict | None = None) -> Fingerprint:
    cls = ClassPrint("a", int(images * rare), rare, 0.01, 10, 500.0, 50.0, typical, thin, 10)
    return Fingerprint("x", "kaggle", images, {"min": h, "median": h, "max": h}, {"min": w, "median": w, "max": w},
                       sizes, 1, int(images * free), free, groups, splits or {}, [cls])


def _plan(fp: Fingerprint, machine: MachineFacts = AVX512, pins: dict | None = None, **kw) -> list:
    kw.setdefault("steps", 1000)
    return decide(Facts(fp, machine, decoded_bytes=10 ** 8, **kw), pins)


def test_thin_defects_raise_the_scale_and_wide_ones_lower_it() -> None:
    assert value(_plan(_fp(thin=1.5, typical=4.0)), "model.kwargs.input_scale") == 2.0
    assert value(_plan(_fp(thin=2.0, typical=12.0)), "model.kwargs.input_scale") == 1.5
    assert value(_plan(_fp(thin=10.0, typical=17.0, h=1260, w=500)), "model.kwargs.input_scale") == 0.5
    assert value(_plan(_fp(thin=60.0, typical=120.0, h=1024, w=1024)), "model.kwargs.input_scale") == 0.25


def test_the_hand_configs_come_out_of_their_fingerprints() -> None:
    """The KolektorSDD and NEU-Seg numbers measured by data/fingerprint.py on ../shared (issue #36)."""
    kolektor = _plan(_fp(h=1235, w=500, free=0.875, thin=9.77, typical=17.0, rare=0.125, images=264, groups=33),
                     steps=640)
    assert [value(kolektor, k) for k in ("model.kwargs.input_scale", "data.crop", "data.batch_size",
                                         "data.balanced_sampling", "train.monitor", "fit.folds")] == \
        [0.5, [640, 448], 8, True, "val/ap,val/dice", 3]
    neu = _plan(_fp(h=200, w=200, free=0.0, thin=5.0, typical=15.0, rare=0.4, images=4023,
                    splits={"train": 3129, "val": 894}), steps=10592)
    assert [value(neu, k) for k in ("model.kwargs.input_scale", "data.crop", "data.batch_size",
                                    "data.balanced_sampling", "train.monitor", "fit.folds", "train.val_every")] == \
        [0.64, None, 16, False, "val/miou", 1, 1]


def test_big_images_get_crops_and_small_ones_none() -> None:
    big = _plan(_fp(h=2048, w=2048, thin=40, typical=80))
    crop = value(big, "data.crop")
    assert crop is not None and crop[0] < 2048 and crop[1] < 2048
    assert value(_plan(_fp(h=200, w=200, thin=5, typical=15)), "data.crop") is None
    mixed = _plan(_fp(h=200, w=200, thin=5, typical=15, sizes=3))  # several sizes: batches need one size
    assert value(mixed, "data.crop") is not None


def test_mostly_empty_sets_sample_balanced_and_monitor_ap() -> None:
    empty = _plan(_fp(free=0.9))
    assert value(empty, "data.balanced_sampling") is True and value(empty, "train.monitor") == "val/ap,val/dice"
    full = _plan(_fp(free=0.05, rare=0.3))
    assert value(full, "data.balanced_sampling") is False and value(full, "train.monitor") == "val/miou"
    assert value(_plan(_fp(free=0.05, rare=0.01)), "data.balanced_sampling") is True  # a rare class


def test_precision_bf16_only_where_native_and_faster() -> None:
    assert value(_plan(_fp(), AVX2), "train.precision") == "32-true"
    fast16 = _plan(_fp(), AVX512, step_time=lambda m, hw, b, p: 1.0 if p == "32-true" else 0.5)
    assert value(fast16, "train.precision") == "bf16-mixed"
    slow16 = _plan(_fp(), AVX512, step_time=lambda m, hw, b, p: 1.0 if p == "32-true" else 1.5)
    assert value(slow16, "train.precision") == "32-true"
    gpu = _plan(_fp(), AVX2, gpu="NVIDIA H200", gpu_bf16=True)
    assert value(gpu, "train.precision") == "bf16-mixed" and value(gpu, "fit.folds") == 5


def test_step_budget_from_a_fake_step_time() -> None:
    d = decide(Facts(_fp(images=400), AVX2, step_time=lambda m, hw, b, p: 0.5, minutes=10, decoded_bytes=1))
    assert value(d, "fit.folds") == 3
    assert value(d, "fit.steps") == int(10 * 60 * 0.85 / 3 / 0.5)  # 340 steps a model
    per_epoch = int(400 * 2 / 3) // value(d, "data.batch_size")
    epochs, every = value(d, "train.epochs"), value(d, "train.val_every")
    assert epochs % every == 0  # the last epoch validates
    assert abs(epochs * per_epoch - 340) <= every * per_epoch
    with pytest.raises(ValueError, match="budget"):
        decide(Facts(_fp(), AVX2, minutes=10, decoded_bytes=1))  # minutes, but nothing timed


def test_folds_follow_splits_groups_and_the_user() -> None:
    assert value(_plan(_fp(splits={"train": 300, "val": 100})), "fit.folds") == 1
    grouped = _plan(_fp(groups=33))
    assert value(grouped, "fit.folds") == 3 and "grouped" in next(d.why for d in grouped if d.key == "fit.folds")
    assert value(_plan(_fp(), folds=5), "fit.folds") == 5


def test_pinned_values_win_and_later_rules_read_them() -> None:
    d = _plan(_fp(), pins={"data.batch_size": 2, "track.mlflow": False})
    assert value(d, "data.batch_size") == 2 and value(d, "track.mlflow") is False
    per_epoch = int(400 * 2 / 3) // 2
    assert value(d, "train.epochs") * per_epoch == pytest.approx(1000, abs=value(d, "train.val_every") * per_epoch)
    assert "set by the user" in next(x.why for x in d if x.key == "data.batch_size")


def test_machine_facts_follow_the_avx2_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    m = machine_facts()
    assert not m.avx512 and not m.native_bf16 and m.fp32_lanes in (8, 4) and m.isa() in ("avx2", "other")


def test_a_class_that_loses_to_nothing_is_switched_off() -> None:
    from steelseg.inference.tune import OFF, tune_postprocess

    rng = np.random.default_rng(0)
    n = 40
    hist_all = np.zeros((n, 2, 256), np.int64)
    hist_true = np.zeros((n, 2, 256), np.int64)
    for i in range(n):
        if i < 10:  # class 0: sure and right on its defective images
            hist_all[i, 0, 250] = hist_true[i, 0, 250] = 100
        hist_all[i, 1, rng.integers(200, 256)] = 5000  # class 1: large confident noise on every image ...
        if i == 0:  # ... one of them defective, elsewhere
            hist_all[i, 1, 10] = 50
            hist_true[i, 1, 10] = 50
    rep = tune_postprocess(hist_all, hist_true, 10_000)
    assert rep.chosen.pixel_threshold[1] == OFF and rep.after[1] == pytest.approx(39 / 40)
    assert rep.chosen.pixel_threshold[0] < OFF
    assert "off" in rep.table(["a", "b"])
    kept = tune_postprocess(hist_all, hist_true, 10_000, min_recall=1.0)  # its defects must be found
    assert kept.chosen.pixel_threshold[1] < OFF


TINY = ["--set", "model.encoder=tu-test_resnet", "--set", "model.encoder_weights=null",
        "--set", "model.kwargs.decoder_channels=[8,8,8,8,8]", "--set", "model.kwargs.input_scale=1.0",
        "--set", "track.mlflow=false", "--set", "train.checkpoint_every=1", "--set", "data.batch_size=4"]


def test_plan_command_writes_a_config_train_reads(tmp_path: Path, synth_small: Path, capsys) -> None:
    from steelseg.training.config import load_config

    from .conftest import cli_run

    rc, out, err = cli_run(capsys, "plan", synth_small, "--steps", "30", "--no-probe", "--out", tmp_path / "plan.yaml",
                           *TINY)
    assert rc == 0, err
    assert "model.kwargs.input_scale" in out and "because" not in out
    text = (tmp_path / "plan.yaml").read_text()
    assert "# the thinnest defects" in text or "# defects as thin" in text or "input_scale: 1.0" in text
    cfg = load_config(tmp_path / "plan.yaml")
    assert cfg.model.encoder == "tu-test_resnet" and cfg.data.path == str(synth_small.resolve())
    assert json.loads((tmp_path / "plan.json").read_text())["fingerprint"]["images"] == 48


@pytest.mark.slow
def test_fit_end_to_end_killed_mid_fold_and_resumed(tmp_path: Path, synth_small: Path) -> None:
    out = tmp_path / "fit"
    cmd = [sys.executable, "-m", "steelseg.cli", "fit", str(synth_small), "--out", str(out), "--steps", "24",
           "--folds", "2", "--no-probe", *TINY]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    ckpt = out / "runs" / "fold1" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-3000:]  # still training fold 1 when killed
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done0 = (out / "runs" / "fold0" / ".steelseg-fit-done").stat().st_mtime
    assert not (out / "runs" / "fold1" / ".steelseg-fit-done").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "continuing in" in again.stderr and "fold 2/2: resuming" in again.stderr
    assert (out / "runs" / "fold0" / ".steelseg-fit-done").stat().st_mtime == done0  # not trained again
    assert "fit " in again.stderr and "ETA" in again.stderr
    summary = (out / "summary.md").read_text()
    assert "out of fold" in summary and "all-empty" in summary and "| setting | value | because |" in summary
    result = json.loads((out / "fit.json").read_text())
    assert result["folds"] == 2 and len(result["image_ap"]) == 2
    pp = json.loads((out / "bundle" / "postprocess.json").read_text())
    assert json.loads((out / "bundle" / "reference.json").read_text())["images"] > 0  # the drift reference
    assert [t >= 1.0 for t in pp["pixel_threshold"]] == [n in result["off"] for n in
                                                           json.loads((out / "bundle" / "bundle.json").read_text())["class_names"]]
    assert ("Switched off" in summary) == bool(result["off"])
    for k in range(2):
        assert (out / "runs" / f"fold{k}" / "report" / "index.html").is_file()
    from steelseg.inference.predictor import Predictor

    pred = Predictor.from_bundle(out / "bundle")
    assert pred.predict([np.zeros((64, 320), np.uint8)])[0].masks.shape == (64, 320, 4)


def test_the_remaining_rules_on_hand_made_facts() -> None:
    """channels, encoder, cache and schedule: each on the fact that decides it."""
    from dataclasses import replace

    colour = replace(_fp(), channels=3)
    d = _plan(colour)
    assert value(d, "data.channels") == 3 and value(d, "data.mean") == [0.5, 0.5, 0.5]
    offline = decide(Facts(_fp(), AVX2, pretrained=None, steps=100, decoded_bytes=1))
    assert value(offline, "model.encoder_weights") is None and "pretrained extra" in \
        next(x.why for x in offline if x.key == "model.encoder_weights")
    huge = decide(Facts(_fp(), AVX2, steps=100, decoded_bytes=30 * 2 ** 30))  # 30 GiB decoded, 20 GiB free
    assert value(huge, "data.cache") is False and value(huge, "data.num_workers") == 1
    assert value(_plan(_fp()), "data.cache") is True and value(_plan(_fp()), "data.num_workers") == 0
    assert value(_plan(_fp(), steps=100), "train.ema") is None
    assert value(_plan(_fp(), steps=2000), "train.ema") == 0.998
    assert value(_plan(_fp(), gpu="GPU", gpu_bf16=False), "model.kwargs.decoder_channels") == [256, 128, 64, 32, 16]
    from steelseg.planning.rules import RULES

    assert len(RULES) == 14  # a new rule needs its test here
