"""ONNX export: parity for each architecture, the ONNX backend in Predictor, bad files, int8 refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from steelseg.errors import DataError
from steelseg.inference.bundle import write_bundle
from steelseg.inference.export import ExportError, export_bundle
from steelseg.inference.postprocess import PostProcess
from steelseg.inference.predictor import Predictor
from steelseg.models import create_classifier, create_segmenter
from steelseg.models.checkpoint import save_weights, write_model_json
from steelseg.schema import InputMeta, ModelMeta, ModelSpec

NAMES = ["pits", "streaks", "scratches", "blotches"]
DEC = {"decoder_channels": [16, 16, 8, 8, 8]}


TIRAMISU_KW = {"down_blocks": [2, 2, 2], "up_blocks": [2, 2, 2], "bottleneck_layers": 2, "growth_rate": 8,
               "first_conv_out_channels": 16, "dropout_rate": 0.0}


def model_folder(root: Path, task: str = "segment", arch: str = "unet", outputs: int = 4,
                 per_class: bool = False, seed: int = 0, extra: dict | None = None) -> Path:
    """A random-init tiny model saved as safetensors + model.json (``extra``: more model kwargs)."""
    torch.manual_seed(seed)
    kwargs = dict(DEC) if arch in ("unet", "unetplusplus") and task == "segment" else {}
    kwargs.update(TIRAMISU_KW if arch == "tiramisu" else {})
    kwargs.update(extra or {})
    encoder = "none" if arch == "tiramisu" else "tu-test_resnet"
    if task == "segment":
        net = create_segmenter(arch, encoder, outputs, 1, per_class=per_class, **kwargs)
    else:
        net = create_classifier("test_resnet", outputs, 1)
    folder = root / f"{task}-{arch}-{outputs}-{int(per_class)}"
    folder.mkdir(parents=True)
    save_weights(net, folder / "best.safetensors")
    spec = ModelSpec(task, encoder if task == "segment" else "test_resnet", outputs, 1,
                     arch if task == "segment" else "", outputs == 1 and task == "classify", per_class, kwargs)
    write_model_json(folder, ModelMeta(spec, NAMES, InputMeta()))
    return folder


def images(n: int = 3, shape: tuple[int, int] = (64, 320), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "fpn", "deeplabv3plus", "pspnet", "linknet", "tiramisu"])
def test_export_parity_each_architecture(arch, tmp_path) -> None:
    seg = model_folder(tmp_path, arch=arch)
    bundle = write_bundle(tmp_path / "b", [seg], [], PostProcess([0.5] * 4, [0] * 4), kind="plain")
    if arch == "pspnet":  # adaptive pooling over traced sizes: the legacy exporter cannot; said clearly
        with pytest.raises(ExportError, match="pspnet cannot be exported to ONNX"):
            export_bundle(bundle, tmp_path / "onnx", images())
        assert not (tmp_path / "onnx").exists()
        return
    rep = export_bundle(bundle, tmp_path / "onnx", images())
    assert rep.parity_max_abs < 1e-3
    info = json.loads((tmp_path / "onnx" / "bundle.json").read_text())
    assert info["backend"] == "onnx" and (tmp_path / "onnx" / "segmenters" / "0" / "model.onnx").is_file()
    assert not (tmp_path / "onnx" / "segmenters" / "0" / "best.safetensors").exists()
    onnx = Predictor.from_bundle(tmp_path / "onnx")
    assert onnx.backend == "onnx"
    # another size than the export's, odd sides: padded like the PyTorch model and cropped back
    other = images(2, (50, 200), seed=1)
    if not rep.models[0]["dynamic_hw"]:  # e.g. PSPNet: a fixed-size graph says so instead of guessing
        assert arch == "pspnet"
        with pytest.raises(DataError, match="takes 320x64 images only"):
            onnx.predict(other)
        return
    a = Predictor.from_bundle(bundle).predict(other)
    b = onnx.predict(other)
    for x, y in zip(a, b):
        assert x.probs.shape == y.probs.shape == (50, 200, 4)
        np.testing.assert_allclose(x.probs, y.probs, atol=1e-4)


def test_export_parity_with_input_scale(tmp_path) -> None:
    """model.kwargs.input_scale resizes inside the model: the ONNX graph does the same at any size."""
    seg = model_folder(tmp_path, extra={"input_scale": 1.3})
    assert json.loads((seg / "model.json").read_text())["model"]["kwargs"]["input_scale"] == 1.3
    bundle = write_bundle(tmp_path / "b", [seg], [], PostProcess([0.5] * 4, [0] * 4), kind="plain")
    rep = export_bundle(bundle, tmp_path / "onnx", images())
    assert rep.parity_max_abs < 1e-3 and rep.models[0]["dynamic_hw"]
    assert rep.models[0]["stride"] is None  # the graph resizes, then pads: the runner must not pad first
    other = images(2, (50, 200), seed=1)  # 65x260 inside, padded to 96x288, logits back to 50x200
    a = Predictor.from_bundle(bundle).predict(other)
    b = Predictor.from_bundle(tmp_path / "onnx").predict(other)
    for x, y in zip(a, b):
        assert x.probs.shape == y.probs.shape == (50, 200, 4)
        np.testing.assert_allclose(x.probs, y.probs, atol=1e-4)
    # The graph mirrors the edges as traced: 14 px (18 inside, padded by 14) is the smallest side it
    # takes at 1.3, and it still agrees with PyTorch there; 13 px (16 inside, pad 16) is refused by name.
    small = images(1, (14, 40), seed=2)
    np.testing.assert_allclose(Predictor.from_bundle(bundle).predict(small)[0].probs,
                               Predictor.from_bundle(tmp_path / "onnx").predict(small)[0].probs, atol=1e-4)
    with pytest.raises(DataError, match=r"40x13 image is too small.*at least 14 px per side.*--backend torch"):
        Predictor.from_bundle(tmp_path / "onnx").predict(images(1, (13, 40), seed=2))


def test_export_gated_pipeline_per_class_and_classifier(tmp_path) -> None:
    seg = model_folder(tmp_path, per_class=True)
    cls = model_folder(tmp_path, task="classify", outputs=4)
    pp = PostProcess([0.5] * 4, [10] * 4, [3] * 4, [0.4] * 4, 0.4)
    bundle = write_bundle(tmp_path / "b", [seg, seg], [cls], pp, tta=True)
    rep = export_bundle(bundle, tmp_path / "onnx", images())
    assert len(rep.models) == 3
    torch_pred, onnx_pred = Predictor.from_bundle(bundle), Predictor.from_bundle(tmp_path / "onnx", threads=1)
    assert onnx_pred.tta and len(onnx_pred.segmenters) == 2
    for a, b in zip(torch_pred.predict(images(seed=5)), onnx_pred.predict(images(seed=5))):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
        np.testing.assert_allclose(a.gate, b.gate, atol=1e-4)
        assert a.skipped == b.skipped
        near = np.abs(a.probs - 0.5) <= 1e-3
        assert ((a.masks != b.masks) & ~near).sum() == 0


def test_bad_onnx_files_and_mixed_bundle(tmp_path) -> None:
    seg = model_folder(tmp_path)
    bundle = write_bundle(tmp_path / "b", [seg], kind="plain")
    export_bundle(bundle, tmp_path / "onnx", images())
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "onnx", bad)
    onnx_file = bad / "segmenters" / "0" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:2000])  # truncated
    with pytest.raises(DataError, match=r"model\.onnx: not a loadable ONNX model"):
        Predictor.from_bundle(bad)
    onnx_file.write_bytes(b"\x00garbage" * 100)  # corrupted
    with pytest.raises(DataError, match=r"model\.onnx"):
        Predictor.from_bundle(bad)
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "onnx", mixed)
    shutil.copytree(bundle / "segmenters" / "0", mixed / "segmenters" / "1")
    info = json.loads((mixed / "bundle.json").read_text())
    (mixed / "bundle.json").write_text(json.dumps({**info, "segmenters": 2}))
    with pytest.raises(DataError, match="mix formats"):
        Predictor.from_bundle(mixed)
    with pytest.raises(DataError, match="backend torch asked for"):
        Predictor.from_bundle(tmp_path / "onnx", backend="torch")
    with pytest.raises(DataError, match="already exists"):  # no silent overwrite
        export_bundle(bundle, tmp_path / "onnx", images())


def test_int8_refused_when_dice_drop_not_allowed(tmp_path) -> None:
    seg = model_folder(tmp_path)
    bundle = write_bundle(tmp_path / "b", [seg], kind="plain")
    val = images(4, seed=3)
    masks = [np.zeros((*v.shape, 4), np.uint8) for v in val]
    with pytest.raises(ExportError, match="int8 lowers Kaggle mean Dice") as exc:
        export_bundle(bundle, tmp_path / "int8", images(2), "int8", images(4, seed=2), val, masks,
                      max_dice_drop=-1.0)
    assert "nothing was written" in str(exc.value)
    assert not (tmp_path / "int8").exists() and not list(tmp_path.glob(".int8*"))
    rep = export_bundle(bundle, tmp_path / "int8", images(2), "int8", images(4, seed=2), val, masks,
                        max_dice_drop=1.0)
    assert rep.dice_before is not None and rep.dice_after is not None
    meta = json.loads((tmp_path / "int8" / "segmenters" / "0" / "model.json").read_text())
    assert meta["weights"]["quantized"] == "int8"
    assert Predictor.from_bundle(tmp_path / "int8").predict(val[:1])[0].masks.shape == (64, 320, 4)
