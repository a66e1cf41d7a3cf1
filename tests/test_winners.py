"""What the winning Severstal solutions did: best-N weight averaging, pseudo-labels, the two-head network and
Tiramisu (issue #26); classifier-scaled thresholds are in test_scaled_thresholds.py."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
import pytest
import torch

from steelseg.models.checkpoint import average_weights, load_state, save_weights
from steelseg.training.run import fit

from .test_train import TINY_DEC, tiny_cfg


def test_averaging_two_checkpoints_is_their_mean_tensor_by_tensor(tmp_path) -> None:
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    b = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    b[1].num_batches_tracked += 7
    save_weights(a, tmp_path / "a.safetensors")
    save_weights(b, tmp_path / "b.safetensors")
    avg = average_weights([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    for k, v in a.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(avg[k], (v + b.state_dict()[k]) / 2)
        else:
            assert avg[k] == v  # integer buffers from the first
    c = torch.nn.Conv2d(1, 2, 3)
    save_weights(c, tmp_path / "c.safetensors")
    with pytest.raises(Exception, match="differ"):
        average_weights([tmp_path / "a.safetensors", tmp_path / "c.safetensors"])


def test_average_best_keeps_the_top_epochs_and_records_the_choice(synth_small, tmp_path) -> None:
    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "train.epochs=3", "train.limit_train_batches=2",
                          "train.average_best=2"))
    model_dir = result.run_dir / "model"
    meta = json.loads((model_dir / "model.json").read_text())
    rec = meta["best"]["average_of"]
    assert rec["requested"] == 2 and len(rec["epochs"]) == 2 and "value" in rec
    top = sorted((model_dir / "top").glob("*.safetensors"))
    assert len(top) == 2  # the others were pruned as better epochs came
    best = load_state(model_dir / "best.safetensors")
    avg = average_weights(top)
    same = all(torch.equal(best[k], avg[k]) for k in best)
    assert same == rec["used"]
    assert rec["used"] == (rec["value"] >= rec["best_single"])  # monitor val/dice: no tie-break list


def test_average_best_takes_only_validated_epochs(synth_small, tmp_path) -> None:
    # validation every 2nd epoch: epochs 1 and 3 (0-based) are validated; 0 and 2 only repeat stale metrics
    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "train.epochs=4", "train.limit_train_batches=1",
                          "train.val_every=2", "train.average_best=3"))
    rec = json.loads((result.run_dir / "model" / "model.json").read_text())["best"]["average_of"]
    assert sorted(rec["epochs"]) == [1, 3]
    assert sorted(p.name for p in (result.run_dir / "model" / "top").iterdir()) == ["epoch0001.safetensors",
                                                                                    "epoch0003.safetensors"]


# ---- pseudo-labels -----------------------------------------------------------------------------------
def test_the_1st_place_rule_on_each_side_of_its_limits() -> None:
    from steelseg.inference.pseudo import PseudoConfig, select

    probs = np.array([[0.96, 0.01],   # sure of class 1, sure of no class 2, masks agree: kept
                      [0.94, 0.01],   # class 1 just under 0.95: unsure
                      [0.96, 0.06],   # class 2 just over 0.05: unsure
                      [0.96, 0.04],   # sure, but the segmentation found a class 2 mask: disagrees
                      [0.04, 0.03],   # sure of nothing, no masks: kept (a defect-free pseudo-label)
                      [0.99, 0.02]])  # sure of class 1 but no mask was found: disagrees
    present = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0], [0, 0]], bool)
    keep, why = select(probs, present, PseudoConfig("1st"))
    assert keep.tolist() == [True, False, False, False, True, False]
    assert "between 0.05 and 0.95" in why[1] and "found a mask" in why[3] and "found no mask" in why[5]
    capped, why2 = select(probs, present, PseudoConfig("1st", max_images=1))
    assert capped.sum() == 1 and capped[0] and "beyond --max 1" in why2[4]  # 0.96/0.01 is the more confident
    conf, _ = select(probs, present, PseudoConfig("confidence", max_images=2))
    want = np.argsort(-np.abs(probs - 0.5).mean(1), kind="stable")[:2]
    assert sorted(np.flatnonzero(conf)) == sorted(want)


def _sharp_bundle(root):
    from safetensors.torch import load_file, save_file

    from steelseg.inference.bundle import write_bundle

    from .conftest import tiny_model_at

    seg = tiny_model_at(root / "seg", ["pits", "streaks", "scratches", "blotches"])
    w = load_file(seg / "best.safetensors")
    save_file({k: v * 60 if "segmentation_head" in k else v for k, v in w.items()}, seg / "best.safetensors")
    return write_bundle(root / "bundle", [seg], kind="plain")


def test_pseudo_label_keeps_exactly_what_the_rule_accepts_and_the_folder_trains(synth_small, tmp_path,
                                                                                capsys) -> None:
    import csv

    from steelseg.cli import main
    from steelseg.data.open import open_dataset
    from steelseg.inference.predictor import Predictor

    bundle = _sharp_bundle(tmp_path / "b")
    images = synth_small / "train_images"
    files = sorted(images.iterdir())[:12]
    pool = tmp_path / "pool"
    pool.mkdir()
    for f in files:  # mirrored: an unlabelled pool holds new strips, not copies of the validation images
        Image.fromarray(np.ascontiguousarray(np.asarray(Image.open(f))[:, ::-1])).save(pool / f.name)
    pred = Predictor.from_bundle(bundle)
    want = set()
    for f, p in pred.predict_paths(sorted(pool.iterdir())):
        level = p.probs.reshape(-1, 4).max(0)
        present = p.masks.reshape(-1, 4).any(0)
        sure = ((level > 0.95) | (level < 0.05)).all()
        if sure and ((level > 0.95) == present).all():
            want.add(f.name)
    out = tmp_path / "pseudo"
    assert main(["pseudo-label", str(bundle), str(pool), "--out", str(out)]) == 0
    assert {p.name for p in (out / "train_images").iterdir()} == want
    with open(out / "pseudo_labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and {r["ImageId"] for r in rows if r["kept"] == "1"} == want
    # the rule confidence keeps the --max most confident; this folder trains as data.extra, never validates
    out2 = tmp_path / "pseudo2"
    assert main(["pseudo-label", str(bundle), str(pool), "--out", str(out2), "--rule", "confidence", "--max", "5"]) == 0
    assert len(open_dataset(out2).table) == 5
    result = fit(tiny_cfg(synth_small, tmp_path / "runs", TINY_DEC, "train.limit_train_batches=1",
                          "train.limit_val_batches=1", f"data.extra=[{out2}]"))
    split = json.loads((result.run_dir / "split.json").read_text())
    assert sum(i.startswith("+pseudo2/") for i in split["train"]) == 5
    assert not any(i.startswith("+") for i in split["val"])
    from steelseg.errors import ConfigError

    with pytest.raises(ConfigError, match="pseudo-labels"):
        fit(tiny_cfg(synth_small, tmp_path / "runs2", TINY_DEC, f"data.extra=[{out2}]", "data.extra_in_val=true"))
    assert not (tmp_path / "runs2").exists()  # refused before a run folder was made


# ---- one network, two heads ----------------------------------------------------------------------------
def test_gated_logits_are_the_logits_of_the_product_of_the_sigmoids() -> None:
    from steelseg.models.factory import gated_logits

    m = torch.tensor([[[[-3.0, 0.0], [2.0, 8.0]]]])
    c = torch.tensor([[1.5]])
    want = torch.sigmoid(m) * torch.sigmoid(c)[..., None, None]
    torch.testing.assert_close(torch.sigmoid(gated_logits(m, c)), want, atol=1e-6, rtol=1e-5)
    # bf16 autocast (the recipes' training precision): sure pixels stay finite, so the validation loss does
    with torch.autocast("cpu", torch.bfloat16):
        sure = gated_logits(torch.full((1, 1, 2, 2), 30.0, dtype=torch.bfloat16),
                            torch.full((1, 1), 30.0, dtype=torch.bfloat16))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(sure, torch.zeros(1, 1, 2, 2))
    assert torch.isfinite(sure).all() and sure.dtype == torch.float32 and torch.isfinite(loss)


def test_two_head_segmenter_trains_exports_and_gates_itself(synth_small, tmp_path) -> None:
    from steelseg.inference.bundle import write_bundle
    from steelseg.inference.export import export_bundle
    from steelseg.inference.predictor import Predictor
    from steelseg.models.checkpoint import load_model

    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "model.cls_head=true", "train.limit_train_batches=3"))
    rows = (result.run_dir / "metrics.csv").read_text()
    assert "train/cls_loss" in rows
    net, meta = load_model(result.run_dir / "model")
    assert meta.model.kwargs["cls_head"] is True and net.cls_head
    x = torch.rand(2, 1, 64, 320)
    with torch.no_grad():
        masks, cls = net.heads(x)
        gated = torch.sigmoid(net(x))
    assert cls.shape == (2, 4)
    torch.testing.assert_close(gated, torch.sigmoid(masks) * torch.sigmoid(cls)[..., None, None], atol=1e-5, rtol=1e-4)
    bundle = write_bundle(tmp_path / "bundle", [result.run_dir], kind="plain")
    pred = Predictor.from_bundle(bundle)
    images = [np.random.default_rng(i).integers(0, 256, (64, 320), dtype=np.uint8) for i in range(3)]
    out = pred.predict(images)
    assert all(p.gate is not None and p.gate.shape == (4,) for p in out)  # its own gate, no classifier
    onnx_bundle = tmp_path / "onnx"
    export_bundle(bundle, onnx_bundle, samples=images)
    import onnxruntime as ort

    seg_dir = next(p for p in onnx_bundle.rglob("model.onnx"))
    sess = ort.InferenceSession(str(seg_dir), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["probs", "cls"]
    from steelseg.data.images import to_input

    xin = to_input(images, meta.input.spec())
    probs_onnx, cls_onnx = sess.run(None, {"input": np.ascontiguousarray(xin, np.float32)})
    with torch.no_grad():
        m_t, c_t = net.heads(torch.from_numpy(np.ascontiguousarray(xin, np.float32)))
    np.testing.assert_allclose(cls_onnx, torch.sigmoid(c_t).numpy(), atol=1e-4)
    np.testing.assert_allclose(probs_onnx, (torch.sigmoid(m_t) * torch.sigmoid(c_t)[..., None, None]).numpy(),
                               atol=1e-4)
    onnx_out = Predictor.from_bundle(onnx_bundle).predict(images)
    for a, b in zip(out, onnx_out):
        np.testing.assert_allclose(a.gate, b.gate, atol=1e-4)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)


# ---- Tiramisu -------------------------------------------------------------------------------------------
TIRAMISU = ("model.arch=tiramisu", "model.encoder=none",
            "model.kwargs={down_blocks: [2, 2, 2], up_blocks: [2, 2, 2], bottleneck_layers: 2, growth_rate: 8, "
            "first_conv_out_channels: 16, dropout_rate: 0.0}")


def test_tiramisu_builds_trains_a_step_and_exports(synth_small, tmp_path) -> None:
    pytest.importorskip("tiramisu_brulee")
    from steelseg.inference.bundle import write_bundle
    from steelseg.inference.export import export_bundle
    from steelseg.inference.predictor import Predictor
    from steelseg.models.checkpoint import load_model

    result = fit(tiny_cfg(synth_small, tmp_path, *TIRAMISU, "train.limit_train_batches=1", "train.limit_val_batches=1"))
    net, meta = load_model(result.run_dir / "model")
    assert meta.model.arch == "tiramisu" and type(net.members[0]).__name__ == "Tiramisu2d"
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 70, 300)).shape == (1, 4, 70, 300)  # any size: padded, cropped back
    bundle = write_bundle(tmp_path / "bundle", [result.run_dir], kind="plain")
    images = [np.random.default_rng(i).integers(0, 256, (64, 320), dtype=np.uint8) for i in range(2)]
    export_bundle(bundle, tmp_path / "onnx", samples=images)  # the parity check inside must pass
    a = Predictor.from_bundle(bundle).predict(images)
    b = Predictor.from_bundle(tmp_path / "onnx").predict(images)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p.probs, q.probs, atol=1e-4)


def test_tiramisu_config_errors_say_what_to_set(synth_small, tmp_path) -> None:
    from steelseg.errors import ConfigError

    with pytest.raises(ConfigError, match="model.encoder: none"):
        tiny_cfg(synth_small, tmp_path, "model.arch=tiramisu", "model.encoder=resnet18", "model.kwargs={}")
    with pytest.raises(ConfigError, match="1 to 5 layer counts"):
        tiny_cfg(synth_small, tmp_path, "model.arch=tiramisu", "model.encoder=none",
                 "model.kwargs={down_blocks: [2, 2, 2, 2, 2, 2], up_blocks: [2, 2, 2, 2, 2, 2]}")
    with pytest.raises(ConfigError, match="growth_rate"):
        tiny_cfg(synth_small, tmp_path, "model.arch=unet", "model.kwargs={growth_rate: 8}")
