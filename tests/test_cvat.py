"""The ``cvat`` layout (issue #39): a generated CVAT for images 1.1 export with every shape type read with known
masks (a mask in CVAT's RLE, z_order over an overlap, a sub-folder, an image with no shape), the traps refused
with the file, a hostile XML refused by defusedxml, and ``convert --to cvat`` read back (IoU per mask)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.data.cvat import LINE_WIDTH, cvat_rle_decode, cvat_rle_encode
from steelseg.data.open import open_dataset
from steelseg.errors import DataError

from .conftest import cli_run, expect_error, round_trip_ious

H, W = 60, 80


def _xml(images: str, labels: tuple[str, ...] = ("scratch", "pit", "crack")) -> str:
    lab = "".join(f"<label><name>{n}</name><color>#ff0000</color><type>any</type></label>" for n in labels)
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version><meta><task><name>t</name>'
            f"<labels>{lab}</labels></task></meta>\n{images}</annotations>\n")


def _set(root: Path) -> Path:
    (root / "line2").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in ("a.png", "line2/b.png"):
        Image.fromarray(rng.integers(0, 255, (H, W), dtype=np.uint8)).save(root / n)
    piece = np.zeros((6, 8), bool)
    piece[1:5, 1:7] = True
    rle = ", ".join(map(str, cvat_rle_encode(piece)))
    shapes = (
        '<box label="scratch" xtl="10" ytl="10" xbr="19" ybr="19" z_order="0" occluded="0"/>'
        '<polygon label="scratch" points="40,5;60,5;50,20" z_order="0"/>'
        '<ellipse label="pit" cx="30" cy="40" rx="4" ry="2" rotation="0" z_order="0"/>'
        '<polyline label="crack" points="2,55;40,55;70,50" z_order="0"/>'
        f'<mask label="pit" rle="{rle}" left="60" top="40" width="8" height="6" z_order="0"/>'
        # a crack drawn above part of the scratch box: z_order 1 owns those pixels
        '<box label="crack" xtl="15" ytl="10" xbr="19" ybr="12" z_order="1"/>'
        '<tag label="reviewed"/>')
    images = (f'<image id="0" name="a.png" width="{W}" height="{H}">{shapes}</image>\n'
              f'<image id="1" name="line2/b.png" width="{W}" height="{H}"></image>\n')
    (root / "annotations.xml").write_text(_xml(images))
    return root


def test_rle_is_cvats_row_major_zero_first() -> None:
    m = np.array([[0, 1, 1], [1, 0, 0]], bool)
    assert cvat_rle_encode(m) == [1, 3, 2]  # the reference: runs over the box row by row, 0s first
    assert (cvat_rle_decode([1, 3, 2], 3, 2) == m).all()
    assert cvat_rle_encode(np.ones((2, 2), bool)) == [0, 4]
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = rng.random((5, 7)) < 0.5
        assert (cvat_rle_decode(cvat_rle_encode(m), 7, 5) == m).all()


def test_every_shape_type_reads_with_known_masks(tmp_path: Path) -> None:
    ds = open_dataset(_set(tmp_path / "cv"))
    assert ds.layout == "cvat" and ds.class_names == ["scratch", "pit", "crack"]  # the task's labels, in order
    assert sorted(ds.image_ids) == ["a.png", "line2/b.png"]
    assert f"drawn {LINE_WIDTH} px wide" in ds.reason
    m = ds.load_mask("a.png") > 0
    scratch, pit, crack = m[..., 0], m[..., 1], m[..., 2]
    assert scratch[13:20, 10:20].all() and scratch[10:13, 10:15].all()
    assert not scratch[10:13, 15:20].any() and crack[10:13, 15:20].all()  # z_order 1 above the box
    assert scratch[8, 50] and not scratch[25, 50]  # the triangle
    assert pit[40, 26] and pit[40, 34] and not pit[43, 30] and not pit[40, 36]  # the 4x2 ellipse
    assert pit[41:45, 61:67].all() and pit[40:46, 60:68].sum() == 24  # the RLE mask at its box
    assert crack[55, 20] and crack[55 - LINE_WIDTH // 2, 20] and not crack[55 - LINE_WIDTH, 20]
    assert not ds.load_mask("line2/b.png").any()


def test_traps_are_refused_with_the_file(tmp_path: Path, capsys) -> None:
    root = _set(tmp_path / "cv")
    good = (root / "annotations.xml").read_text()
    cases = [('<polygon label="scratch" points="40,5;60,5;50,20"', '<polygon label="scratch" points="40,5;60,5"',
              "3 or more"),
             ('label="pit" cx="30"', 'label="rust" cx="30"', "is not a class"),
             ('name="a.png"', 'name="gone.png"', "no such image"),
             ('rle="', 'rle="99999, ', "rle is not"),
             ('xtl="10"', 'xtl="ten"', "not a number")]
    for old, new, message in cases:
        (root / "annotations.xml").write_text(good.replace(old, new, 1))
        expect_error(capsys, message, "info", root, *(["--class-names", "scratch,pit,crack"]
                                                      if message == "is not a class" else []))
    bomb = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
            "<annotations><image name='a.png' width='80' height='60'/>&y;</annotations>")
    (root / "annotations.xml").write_text(bomb)
    with pytest.raises(DataError, match="entities"):
        from steelseg.data.cvat import open_cvat

        open_cvat(root, None, False)


def test_convert_to_cvat_and_back(tmp_path: Path, synth_small: Path, capsys) -> None:
    rc, _, err = cli_run(capsys, "convert", synth_small, tmp_path / "cv", "--to", "cvat")
    assert rc == 0, err
    src = open_dataset(synth_small)
    back = open_dataset(tmp_path / "cv")
    assert back.layout == "cvat" and back.class_names == src.class_names
    ious = round_trip_ious(src, back)
    assert min(ious) >= 0.85 and np.mean(ious) >= 0.95, (min(ious), np.mean(ious))
