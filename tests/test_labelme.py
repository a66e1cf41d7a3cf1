"""The ``labelme`` layout (issue #39): a generated labelme set with every shape type read with known masks,
JSONs apart from their images, defect-free images among labelled ones, the traps refused by file, and
``convert --to labelme`` read back exactly (a mask shape where a polygon would fill a hole)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.data.labelme import LINE_WIDTH
from steelseg.data.open import open_dataset
from steelseg.errors import DataError

from .conftest import cli_run, expect_error, round_trip_ious

H, W = 60, 80


def _png_b64(m: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(m.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _shape(label: str, kind: str, points: list, **kw) -> dict:
    return {"label": label, "points": points, "shape_type": kind, "group_id": None, "flags": {}, **kw}


def _set(root: Path, apart: bool = True) -> Path:
    """data/a.png (every shape type), data/b.png (no JSON: defect-free); the JSON in label/ with a bare name."""
    (root / "data").mkdir(parents=True)
    (root / "label").mkdir()
    rng = np.random.default_rng(0)
    for n in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (H, W), dtype=np.uint8)).save(root / "data" / f"{n}.png")
    piece = np.zeros((6, 8), bool)
    piece[1:5, 1:7] = True
    shapes = [_shape("scratch", "rectangle", [[10, 10], [19, 19]]),
              _shape("scratch", "polygon", [[40, 5], [60, 5], [50, 20]]),
              _shape("pit", "circle", [[30, 40], [34, 40]]),
              _shape("crack", "linestrip", [[2, 55], [40, 55], [70, 50]]),
              _shape("crack", "point", [[75, 5]]),
              _shape("pit", "mask", [[60, 40], [67, 45]], mask=_png_b64(piece))]
    doc = {"version": "5.4.1", "flags": {"reviewed": True}, "shapes": shapes,
           "imagePath": "a.png" if apart else "../data/a.png", "imageData": None, "imageHeight": H, "imageWidth": W}
    (root / "label" / "a.json").write_text(json.dumps(doc))
    return root


def test_every_shape_type_reads_with_known_masks(tmp_path: Path) -> None:
    ds = open_dataset(_set(tmp_path / "lm"))
    assert ds.layout == "labelme" and ds.class_names == ["crack", "pit", "scratch"]
    assert sorted(ds.image_ids) == ["data/a.png", "data/b.png"]
    assert "defect-free" in ds.reason and f"drawn {LINE_WIDTH} px wide" in ds.reason and "flags" in ds.reason
    m = ds.load_mask("data/a.png") > 0
    crack, pit, scratch = m[..., 0], m[..., 1], m[..., 2]
    assert scratch[10:20, 10:20].all() and scratch[10:20, 10:20].sum() == 100  # the rectangle, corners included
    assert scratch[8, 50] and not scratch[25, 50]  # the triangle
    assert pit[40, 30] and pit[40, 34] and not pit[40, 36]  # the circle of radius 4
    assert pit[41:45, 61:67].all() and pit[40:46, 60:68].sum() == 24  # the mask shape, placed at its box
    assert crack[55, 20] and crack[55 - LINE_WIDTH // 2, 20] and not crack[55 - LINE_WIDTH, 20]  # the line's width
    assert crack[5, 75]  # the point, drawn as a dot
    assert not ds.load_mask("data/b.png").any()


def test_relative_image_paths_resolve_and_traps_are_refused(tmp_path: Path, capsys) -> None:
    root = _set(tmp_path / "rel", apart=False)  # imagePath relative to the JSON's folder
    assert len(open_dataset(root).table) == 2
    doc = json.loads((root / "label" / "a.json").read_text())
    doc["shapes"].append(_shape("scratch", "polygon", [[1, 1], [5, 5]]))
    (root / "label" / "a.json").write_text(json.dumps(doc))
    expect_error(capsys, "3 or more", "info", root)
    doc["shapes"].pop()
    (root / "label" / "a.json").write_text(json.dumps(doc))
    expect_error(capsys, "is not a class", "info", root, "--class-names", "scratch,pit")
    (root / "label" / "a2.json").write_text(json.dumps(doc))
    expect_error(capsys, "one JSON an image", "info", root)
    (root / "label" / "a2.json").unlink()
    doc["imagePath"] = "nowhere.png"
    (root / "label" / "a.json").write_text(json.dumps(doc))
    expect_error(capsys, "not found", "info", root)
    doc["imagePath"] = "a.png"
    (root / "label" / "a.json").write_text(json.dumps(doc))
    (root / "other").mkdir()
    Image.new("L", (W, H)).save(root / "other" / "a.png")
    expect_error(capsys, "2 images named a.png", "info", root)


def test_convert_to_labelme_and_back(tmp_path: Path, synth_small: Path, capsys) -> None:
    rc, _, err = cli_run(capsys, "convert", synth_small, tmp_path / "lm", "--to", "labelme")
    assert rc == 0, err
    src = open_dataset(synth_small)
    src_names = src.class_names
    back = open_dataset(tmp_path / "lm", src_names)
    assert back.layout == "labelme" and back.class_names == src_names
    ious = round_trip_ious(src, back)
    assert min(ious) >= 0.85 and np.mean(ious) >= 0.95, (min(ious), np.mean(ious))


def test_a_json_of_another_tool_is_skipped_not_read(tmp_path: Path) -> None:
    root = _set(tmp_path / "lm")
    (root / "label" / "notes.json").write_text(json.dumps({"comment": "not labelme"}))
    ds = open_dataset(root)
    assert "label/notes.json" in ds.skipped
    with pytest.raises(DataError, match="no labelme JSON"):
        from steelseg.data.labelme import open_labelme

        open_labelme(tmp_path / "lm" / "data", None, False)


def test_an_image_only_embedded_as_image_data_is_read_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STEELSEG_CACHE", str(tmp_path / "cache"))
    root = _set(tmp_path / "emb")
    doc = json.loads((root / "label" / "a.json").read_text())
    pixels = np.asarray(Image.open(root / "data" / "a.png"))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    doc["imageData"] = base64.b64encode(buf.getvalue()).decode()
    (root / "label" / "a.json").write_text(json.dumps(doc))
    on_disk = open_dataset(root)  # the file on disk wins: one image, not two
    assert sorted(on_disk.image_ids) == ["data/a.png", "data/b.png"] and "embedded" not in on_disk.reason
    (root / "data" / "a.png").unlink()
    ds = open_dataset(root)
    # its id: the JSON's folder and the imagePath name; data/b.png no longer sits among labelled images
    assert ds.image_ids == ["label/a.png"] and "1 image(s) read from their JSON's embedded" in ds.reason
    assert np.array_equal(ds.load_image("label/a.png", None), pixels)
    assert np.array_equal(ds.load_mask("label/a.png"), on_disk.load_mask("data/a.png"))
    doc["imageData"] = "not base64 at all!"
    (root / "label" / "a.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="imageData is not a base64 image"):
        open_dataset(root)


def test_line_width_is_an_option(tmp_path: Path, capsys) -> None:
    root = _set(tmp_path / "w")
    rc, out, err = cli_run(capsys, "info", root, "--line-width", "9")
    assert rc == 0 and "drawn 9 px wide" in out, (out, err)
    crack = open_dataset(root, options={"line_width": 9}).load_mask("data/a.png")[..., 0] > 0
    assert crack[55 - 4, 20] and not crack[55 - 6, 20]
    expect_error(capsys, "line_width 0", "info", root, "--line-width", "0")
