"""OpenVINO: export with parity for a tiny U-Net and a classifier, the same submission as PyTorch, bf16 and
int8 guarded by Dice, int8 layers kept in fp32 stored and reloaded, a corrupt IR named."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the openvino extra is not installed (make test installs it)")
pytest.importorskip("nncf", reason="the openvino extra is not installed (make test installs it)")

from steelseg.errors import DataError  # noqa: E402
from steelseg.inference.bundle import write_bundle  # noqa: E402
from steelseg.inference.export import ExportError  # noqa: E402
from steelseg.inference.export_openvino import export_openvino  # noqa: E402
from steelseg.inference.postprocess import PostProcess  # noqa: E402
from steelseg.inference.predict import predict_folder  # noqa: E402
from steelseg.inference.predictor import Predictor  # noqa: E402

from .test_export import images, model_folder  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("ovb")
    seg = model_folder(root, arch="unet")
    cls = model_folder(root, task="classify")
    return write_bundle(root / "b", [seg], [cls], PostProcess([0.5] * 4, [0] * 4), kind="pipeline")


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory):
    """The bundle exported once as fp32 IR, with its report."""
    out = tmp_path_factory.mktemp("ov") / "ov"
    return out, export_openvino(bundle, out, images())


def _masks(preds) -> list[np.ndarray]:
    return [p.masks for p in preds]


def test_openvino_export_parity_and_same_submission(bundle, exported, tmp_path) -> None:
    ov_dir, rep = exported
    assert rep.parity_max_abs < 1e-3
    info = json.loads((ov_dir / "bundle.json").read_text())
    assert info["backend"] == "openvino" and info["export"]["precision"] == "fp32"
    for sub in ("segmenters", "classifiers"):
        folder = ov_dir / sub / "0"
        assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
        assert not (folder / "model.onnx").exists() and not (folder / "best.safetensors").exists()
    ov = Predictor.from_bundle(ov_dir, threads=1)
    assert ov.backend == "openvino"
    other = images(2, (50, 200), seed=1)  # another size, odd sides: padded and cropped back
    for a, b in zip(Predictor.from_bundle(bundle).predict(other), ov.predict(other)):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
        np.testing.assert_allclose(a.gate, b.gate, atol=1e-4)
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images(4, seed=3)):
        Image.fromarray(im).save(folder / f"s{i}.png")
    predict_folder(bundle, folder, tmp_path / "p-torch")
    predict_folder(ov_dir, folder, tmp_path / "p-ov")
    assert (tmp_path / "p-torch" / "submission.csv").read_text() == (tmp_path / "p-ov" / "submission.csv").read_text()


@pytest.mark.parametrize("precision", ["bf16", "int8", "int8-bf16"])
def test_reduced_precision_refuses_a_negative_allowed_drop(bundle, tmp_path, precision) -> None:
    ims = images(4)
    truth = [np.zeros((64, 320, 4), np.uint8) for _ in ims]
    with pytest.raises(ExportError, match=f"OpenVINO {precision} lowers Kaggle mean Dice"):
        export_openvino(bundle, tmp_path / "ov", ims[:2], precision, ims, ims, truth, max_dice_drop=-1.0)
    assert not (tmp_path / "ov").exists()


def test_int8_layers_kept_in_fp32_are_stored_and_reloaded(bundle, exported, tmp_path) -> None:
    import openvino as ov

    from steelseg.inference.openvino import fp32_layers

    ims = images(6)
    truth = [(im[..., None] > 200).repeat(4, axis=2).astype(np.uint8) for im in ims]
    fp32_ir = ov.Core().read_model(str(exported[0] / "segmenters" / "0" / "model.xml"))
    convs = [op.get_friendly_name() for op in fp32_ir.get_ordered_ops() if op.get_type_name() == "Convolution"]
    keep = convs[:2]  # the first two convolutions stay fp32
    rep = export_openvino(bundle, tmp_path / "ov", ims[:2], "int8", ims, ims, truth, max_dice_drop=1.0, keep_fp32=keep)
    assert rep.dice_after is not None
    info = json.loads((tmp_path / "ov" / "bundle.json").read_text())
    stored = info["export"]["fp32_layers"]["segmenters/0"]
    assert set(keep) <= set(stored) and len(stored) < len(convs)  # the others were quantised
    meta = json.loads((tmp_path / "ov" / "segmenters" / "0" / "model.json").read_text())
    assert meta["weights"]["precision"] == "int8" and set(keep) <= set(meta["weights"]["fp32_layers"])
    pred = Predictor.from_bundle(tmp_path / "ov")
    assert pred.segmenters[0].precision == "int8" and pred.predict(ims[:1])[0].probs.shape == (64, 320, 4)
    reread = ov.Core().read_model(str(tmp_path / "ov" / "segmenters" / "0" / "model.xml"))
    assert set(keep) <= set(fp32_layers(reread))  # the IR itself keeps them in fp32


def test_streams_split_a_batch_and_agree_with_one_request(exported) -> None:
    """Two streams run a batch's halves at once (and a batch of one on one request): the same probabilities
    and gates as one request with every thread; the service asks for one stream (latency)."""
    from steelseg.inference.openvino import compile_config

    one = Predictor.from_bundle(exported[0], threads=2, streams=1)
    two = Predictor.from_bundle(exported[0], threads=2)  # default: two streams with two threads
    assert one.segmenters[0].streams == 1 and two.segmenters[0].streams == 2 == len(two.segmenters[0].requests)
    assert compile_config("int8-bf16", 2, 2) == {"INFERENCE_PRECISION_HINT": "bf16", "NUM_STREAMS": 2,
                                                 "INFERENCE_NUM_THREADS": 2}
    assert compile_config("fp32", None)["PERFORMANCE_HINT"] == "LATENCY"
    ims = images(5, seed=4)  # batches of 4 and 1
    for a, b in zip(one.predict(ims), two.predict(ims)):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
        np.testing.assert_allclose(a.gate, b.gate, atol=1e-5)
        assert (a.masks == b.masks).all()


def test_a_corrupt_ir_file_is_named(exported, tmp_path) -> None:
    import shutil

    shutil.copytree(exported[0], tmp_path / "ov")
    xml = tmp_path / "ov" / "segmenters" / "0" / "model.xml"
    xml.write_text(xml.read_text()[:500])
    with pytest.raises(DataError, match=r"segmenters/0/model.xml: not a loadable OpenVINO model"):
        Predictor.from_bundle(tmp_path / "ov")


def test_input_scale_graph_on_openvino_and_too_small_named(tmp_path) -> None:
    """An input_scale segmenter resizes and pads inside its graph: OpenVINO agrees with PyTorch at another
    size and names an image too small for the traced mirror padding, as the ONNX runner does."""
    seg = model_folder(tmp_path, extra={"input_scale": 1.3})
    bundle = write_bundle(tmp_path / "b", [seg], [], PostProcess([0.5] * 4, [0] * 4), kind="plain")
    export_openvino(bundle, tmp_path / "ov", images())
    ov = Predictor.from_bundle(tmp_path / "ov", threads=1)
    other = images(2, (50, 200), seed=1)
    for a, b in zip(Predictor.from_bundle(bundle).predict(other), ov.predict(other)):
        assert a.probs.shape == b.probs.shape == (50, 200, 4)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
    with pytest.raises(DataError, match=r"40x13 image is too small for this OpenVINO model.*at least 14 px"):
        ov.predict(images(1, (13, 40), seed=2))
