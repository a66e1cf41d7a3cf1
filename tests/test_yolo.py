"""The ``yolo`` layout (issue #39): an ultralytics YOLO segmentation dataset read with known masks, written by
``convert --to yolo`` and read back within a stated polygon error, and each trap of a real export refused with
its file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.data.open import open_dataset
from steelseg.errors import DataError

from .conftest import cli_run, expect_error, round_trip_ious


def _yolo_set(root: Path, names: object = ("scratch", "pit"), yaml_extra: str = "") -> Path:
    """train: a.png with a square of class 0 (pixels 10..29 x 20..39), b.png defect-free (no label file);
    val: c.png with a triangle of class 1 and an empty label file."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, name in (("train", "a"), ("train", "b"), ("val", "c")):
        Image.fromarray(rng.integers(0, 255, (60, 80), dtype=np.uint8)).save(root / "images" / split / f"{name}.png")
    # pixel edges 20..40 (x) and 10..30 (y) of an 80x60 image: pixels 20..39 x 10..29
    (root / "labels" / "train" / "a.txt").write_text("0 0.25 0.1666667 0.5 0.1666667 0.5 0.5 0.25 0.5\n")
    (root / "labels" / "val" / "c.txt").write_text("1 0.1 0.1 0.6 0.1 0.1 0.9\n\n")
    names_yaml = f"names: {list(names)}" if not isinstance(names, dict) else \
        "names:\n" + "".join(f"  {k}: {v}\n" for k, v in names.items())
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\n{names_yaml}\n{yaml_extra}")
    return root


def test_a_yolo_set_reads_with_known_masks(tmp_path: Path) -> None:
    ds = open_dataset(_yolo_set(tmp_path / "y"))
    assert ds.layout == "yolo" and ds.class_names == ["scratch", "pit"]
    assert ds.splits == {"train": ["images/train/a.png", "images/train/b.png"], "val": ["images/val/c.png"]}
    square = ds.load_mask("images/train/a.png")[..., 0]
    want = np.zeros((60, 80), bool)
    want[10:30, 20:40] = True
    assert (square > 0).sum() == pytest.approx(want.sum(), abs=45) and ((square > 0) & want).sum() >= 0.9 * want.sum()
    assert not ds.load_mask("images/train/b.png").any()  # no label file: defect-free
    assert ds.load_mask("images/val/c.png")[..., 1].sum() > 300
    assert list(ds.presence().sum(0)) == [1, 1]
    by_dict = open_dataset(_yolo_set(tmp_path / "d", names={0: "scratch", 1: "pit"}))
    assert by_dict.class_names == ["scratch", "pit"]


def test_convert_to_yolo_and_back(tmp_path: Path, synth_small: Path, capsys) -> None:
    """Every mask comes back with IoU >= 0.85 (polygonisation: outer contours; holes fill in)."""
    rc, _, err = cli_run(capsys, "convert", synth_small, tmp_path / "y", "--to", "yolo")
    assert rc == 0, err
    src, back = open_dataset(synth_small), open_dataset(tmp_path / "y")
    assert back.layout == "yolo" and back.class_names == src.class_names
    ious = round_trip_ious(src, back, lambda image_id: f"images/train/{image_id}")
    assert min(ious) >= 0.85 and np.mean(ious) >= 0.95, (min(ious), np.mean(ious))


@pytest.mark.parametrize("line,pattern", [
    ("0 0.5 0.5 0.2 0.2", "a box"),
    ("0 0.1 0.1 0.2 0.2 0.3", "3 or more"),
    ("5 0.1 0.1 0.6 0.1 0.1 0.9", "class id 5"),
    ("0 0.1 0.1 1.4 0.1 0.1 0.9", "outside the image"),
    ("0 0.1 zero 0.6 0.1 0.1 0.9", "numbers"),
])
def test_broken_label_lines_are_refused_with_file_and_line(tmp_path: Path, capsys, line: str, pattern: str) -> None:
    root = _yolo_set(tmp_path / "y")
    (root / "labels" / "val" / "c.txt").write_text("1 0.1 0.1 0.6 0.1 0.1 0.9\n" + line + "\n")
    msg = expect_error(capsys, pattern, "info", root)
    assert "c.txt:2" in msg


def test_slightly_outside_is_clipped_and_orphan_labels_refused(tmp_path: Path, capsys) -> None:
    root = _yolo_set(tmp_path / "y")
    (root / "labels" / "val" / "c.txt").write_text("1 -0.005 0.1 1.004 0.1 0.1 0.9\n")
    assert open_dataset(root).load_mask("images/val/c.png")[..., 1].any()
    (root / "labels" / "train" / "ghost.txt").write_text("0 0.1 0.1 0.6 0.1 0.1 0.9\n")
    expect_error(capsys, "labels without an image", "info", root)


def test_roboflow_paths_and_nothing_read_outside(tmp_path: Path, capsys) -> None:
    root = _yolo_set(tmp_path / "y")
    (root / "data.yaml").write_text("train: ../images/train\nval: ../images/val\nnames: [scratch, pit]\n")
    assert len(open_dataset(root).table) == 3
    (root / "data.yaml").write_text("train: ../../elsewhere\nval: images/val\nnames: [scratch, pit]\n")
    expect_error(capsys, "not a path inside", "info", root)
    with pytest.raises(DataError, match="names"):
        (root / "data.yaml").write_text("train: images/train\n")
        open_dataset(root, layout="yolo")


def test_box_only_lines_are_boxes_when_asked(tmp_path: Path, capsys) -> None:
    root = _yolo_set(tmp_path / "b")
    (root / "labels" / "train" / "b.txt").write_text("1 0.5 0.5 0.25 0.5\n")  # a box: x 30..50, y 15..45
    expect_error(capsys, "--boxes", "info", root)
    rc, out, err = cli_run(capsys, "info", root, "--boxes")
    assert rc == 0, err
    ds = open_dataset(root, options={"boxes": True})
    assert ds.options == {"boxes": True}
    box = ds.load_mask("images/train/b.png")[..., 1] > 0
    assert box[16:44, 31:49].all() and not box[:, :29].any() and not box[:, 51:].any()
    with pytest.raises(DataError, match="layout option 'box'"):
        open_dataset(root, options={"box": True})
