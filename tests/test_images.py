"""One way in for pixels: reading every image mode, errors, size limits, and identical model input
from the training dataset and from Predictor."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.data.images import InputSpec, image_size, list_images, read_image, to_channels, to_input, to_uint8
from steelseg.data.open import open_dataset
from steelseg.data.samples import SegmentationSamples
from steelseg.errors import DataError
from steelseg.inference.postprocess import PostProcess
from steelseg.inference.predictor import Predictor
from steelseg.schema import InputMeta, ModelMeta, ModelSpec


def _save(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def test_16bit_png_is_scaled_not_clipped(tmp_path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "a16.png"
    Image.fromarray(ramp).save(path)  # a 16-bit grayscale PNG
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    img = read_image(path)
    assert img.dtype == np.uint8 and img.min() == 0 and img.max() == 255
    assert 120 <= int(np.median(img)) <= 135  # mid-grey stays mid-grey (convert("L") made it all white)
    np.testing.assert_array_equal(img, to_uint8(ramp))


def test_float_and_modes(tmp_path) -> None:
    f = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    p = tmp_path / "f.tif"
    Image.fromarray(f, mode="F").save(p)
    g = read_image(p)
    assert g.max() == 255 and g.min() == 0
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    assert read_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"), None).shape == (16, 16, 3)
    pal = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).convert("P")
    assert read_image(_save(pal, tmp_path / "p.png"), None).ndim in (2, 3)
    with pytest.raises(DataError, match="float pixels include NaN"):
        to_uint8(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(DataError, match="integer pixels in"):
        to_uint8(np.full((4, 4), 70000, np.int32))


def test_gray_from_colour_matches_pillow() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_channels(rgb, 1), np.asarray(Image.fromarray(rgb).convert("L")))
    assert to_channels(rgb[..., 0], 3).shape == (40, 50, 3)


def test_bad_files_and_bytes(tmp_path) -> None:
    good = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(good).save(buf, "JPEG")
    data = buf.getvalue()
    assert read_image(data).shape == (64, 64)
    assert image_size(data) == (64, 64)
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "x.png").write_bytes(b"not an image at all")
    for name, message in (("t.jpg", "truncated"), ("e.png", "empty file"), ("x.png", "not a readable image"),
                          ("missing.png", "not found")):
        with pytest.raises(DataError, match=message) as exc:
            read_image(tmp_path / name)
        assert name in str(exc.value)
    with pytest.raises(DataError, match="empty file"):
        read_image(b"")


def test_size_limit_from_header(tmp_path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(path)
    monkeypatch.setenv("STEELSEG_MAX_PIXELS", "1000000")
    with pytest.raises(DataError, match=r"3000x2000 = 6.0 Mpx, above the limit of 1.0 Mpx"):
        image_size(path)
    with pytest.raises(DataError, match="above the limit"):
        read_image(path)


def test_list_images_reports_subfolders(tmp_path) -> None:
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "sub" / "b.png")
    (tmp_path / "notes.txt").write_text("x")
    images, others = list_images(tmp_path)
    assert [p.name for p in images] == ["a.png"] and {p.name for p in others} == {"sub", "notes.txt"}
    images, others = list_images(tmp_path, recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["a.png", "sub/b.png"]


class _Capture:
    """A runner that records what it is fed (normalised batch in, probabilities out)."""

    def __init__(self, meta: ModelMeta) -> None:
        self.meta, self.source, self.seen = meta, Path("capture"), []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(x.copy())
        return np.zeros((x.shape[0], len(self.meta.class_names), *x.shape[2:]), np.float32)


@pytest.mark.parametrize("channels", [1, 3])
def test_training_and_predictor_inputs_are_bit_identical(synth_small, tmp_path, channels) -> None:
    ds = open_dataset(synth_small)
    mean, std = ([0.449], [0.226]) if channels == 1 else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    # a colour file too, so gray models must convert it the same way on both paths
    colour = tmp_path / "colour.png"
    rgb = np.random.default_rng(2).integers(0, 256, (64, 320, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(colour)
    paths = [Path(ds.row(ds.image_ids[0])["path"]), colour]
    meta = ModelMeta(ModelSpec("segment", "x", 4, channels, "unet"), ds.class_names,
                     InputMeta(channels, mean, std))
    runner = _Capture(meta)
    predictor = Predictor([runner], [], PostProcess.default(4), ds.class_names)
    list(predictor.predict_paths(paths))
    fed = np.concatenate(runner.seen)
    train_items = SegmentationSamples(ds, None, channels, mean, std)
    np.testing.assert_array_equal(fed[0], train_items[0]["image"])
    spec = InputSpec(channels, tuple(mean), tuple(std))
    np.testing.assert_array_equal(fed[1], to_input([read_image(colour, channels)], spec)[0])
    # the training dataset reads the colour file the same way
    np.testing.assert_array_equal(read_image(colour, channels), to_channels(read_image(colour, None), channels))
