"""The ``labelstudio`` layout (issue #39): a generated Label Studio export with polygons in percent, a rotated
rectangle, brush masks in Label Studio's RLE (checked against vectors made by Label Studio's own converter),
several annotations per task (the rule), upload-style paths, predictions ignored; the traps refused with the
task; ``convert --to labelstudio`` read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from steelseg.data.labelstudio import RULE, brush_decode, brush_encode
from steelseg.data.open import open_dataset

from .conftest import cli_run, expect_error

H, W = 40, 50
# made by label_studio_converter 0.0.59, brush.encode_rle(np.repeat(mask.ravel(), 4) * 255), for the masks below
GOLDEN_4x6 = [0, 0, 0, 96, 57, 27, 254, 31, 0, 183, 255, 108, 2, 223, 254, 27, 0, 0]
GOLDEN_5x5 = [0, 0, 0, 100, 57, 27, 252, 127, 248, 172, 2, 63, 252, 62, 1, 127, 252]


def _golden_masks() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((4, 6), bool)
    a[1:3, 2:5] = True
    b = np.zeros((5, 5), bool)
    b[0, 0] = b[2, 2] = True
    b[4, 1:5] = True
    return a, b


def test_brush_rle_matches_label_studios_converter() -> None:
    a, b = _golden_masks()
    assert (brush_decode(GOLDEN_4x6, 4, 6) == a).all() and (brush_decode(GOLDEN_5x5, 5, 5) == b).all()
    rng = np.random.default_rng(0)
    for _ in range(10):
        m = rng.random((9, 13)) < 0.3
        assert (brush_decode(brush_encode(m), 9, 13) == m).all()


def _result(kind: str, label: str, value: dict, **kw) -> dict:
    return {"id": kw.pop("id", label + kind), "type": kind, "from_name": "tag", "to_name": "image",
            "original_width": W, "original_height": H, "image_rotation": 0, "value": {**value, kind: [label]}, **kw}


def _set(root: Path) -> Path:
    (root / "imgs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (H, W), dtype=np.uint8)).save(root / "imgs" / n)
    brush = np.zeros((H, W), bool)
    brush[30:35, 5:15] = True
    latest = [_result("polygonlabels", "scratch", {"points": [[20, 10], [60, 10], [40, 50]], "closed": True}),
              _result("rectanglelabels", "pit", {"x": 70, "y": 50, "width": 20, "height": 25, "rotation": 0}),
              _result("brushlabels", "blotch", {"format": "rle", "rle": brush_encode(brush)}),
              {"id": "c", "type": "choices", "value": {"choices": ["ok"]}}]
    older = [_result("rectanglelabels", "pit", {"x": 0, "y": 0, "width": 50, "height": 50, "rotation": 0})]
    tasks = [{"id": 1, "data": {"image": "/data/upload/3/1a2b3c4d-a.png"},
              "annotations": [{"id": 10, "result": older, "was_cancelled": False, "ground_truth": False,
                               "created_at": "2026-01-01T10:00:00Z", "updated_at": "2026-01-01T10:00:00Z"},
                              {"id": 11, "result": latest, "was_cancelled": False, "ground_truth": False,
                               "created_at": "2026-01-02T10:00:00Z", "updated_at": "2026-01-02T10:00:00Z"},
                              {"id": 12, "result": older, "was_cancelled": True, "ground_truth": False,
                               "created_at": "2026-01-03T10:00:00Z", "updated_at": "2026-01-03T10:00:00Z"}],
              "predictions": [{"result": older}]},
             {"id": 2, "data": {"image": "/data/local-files/?d=line/imgs/b.png"}, "annotations": [
                 {"id": 20, "result": [], "was_cancelled": False}]}]
    (root / "project-1-at-2026-01-03.json").write_text(json.dumps(tasks))
    return root


def test_results_read_with_known_masks_and_the_rule(tmp_path: Path) -> None:
    ds = open_dataset(_set(tmp_path / "ls"))
    assert ds.layout == "labelstudio" and ds.class_names == ["blotch", "pit", "scratch"]
    assert sorted(ds.image_ids) == ["imgs/a.png", "imgs/b.png"] and RULE in ds.reason
    m = ds.load_mask("imgs/a.png") > 0
    blotch, pit, scratch = m[..., 0], m[..., 1], m[..., 2]
    assert blotch[30:35, 5:15].all() and blotch.sum() == 50
    assert pit[20:30, 35:45].all() and pit.sum() == 100  # the latest annotation's box, not the older one
    assert scratch[6, 20] and not scratch[30, 20]  # the triangle, in percent of the image
    assert not ds.load_mask("imgs/b.png").any()


def test_rotated_rectangle(tmp_path: Path) -> None:
    root = _set(tmp_path / "ls")
    export = root / "project-1-at-2026-01-03.json"
    tasks = json.loads(export.read_text())
    tasks[0]["annotations"][1]["result"] = [
        _result("rectanglelabels", "pit", {"x": 50, "y": 25, "width": 20, "height": 10, "rotation": 90})]
    export.write_text(json.dumps(tasks))
    pit = open_dataset(root).load_mask("imgs/a.png")[..., 0] > 0
    # 10 px wide, 4 px high at (25, 10), turned 90 degrees about its top-left corner: 4 wide, 10 high, leftwards
    ys, xs = np.nonzero(pit)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 19, 22, 25)


def test_traps_are_refused_with_the_task(tmp_path: Path, capsys) -> None:
    root = _set(tmp_path / "ls")
    export = root / "project-1-at-2026-01-03.json"
    good = json.loads(export.read_text())

    def write(change) -> None:
        tasks = json.loads(json.dumps(good))
        change(tasks)
        export.write_text(json.dumps(tasks))

    write(lambda t: t[0]["annotations"][1]["result"][0]["value"].update(points=[[1, 1], [2, 2]]))
    expect_error(capsys, "3 or more", "info", root)
    write(lambda t: None)
    plain = open_dataset(root).load_mask("imgs/a.png")
    write(lambda t: t[0]["annotations"][1]["result"][0].update(image_rotation=90))  # drawn on a turned view
    turned = open_dataset(root)
    assert "1 result(s) drawn on a rotated view" in turned.reason
    assert (turned.load_mask("imgs/a.png") == plain).all()  # stored in the image's own frame: read as it is
    write(lambda t: t[0]["annotations"][1]["result"][0].update(image_rotation=90, original_width=H, original_height=W))
    expect_error(capsys, "coordinates are in the rotated view", "info", root)
    write(lambda t: t[0]["data"].update(image="/data/upload/3/ffff0000-gone.png"))
    expect_error(capsys, "not found", "info", root)
    write(lambda t: None)
    (root / "other").mkdir()
    Image.new("L", (W, H)).save(root / "other" / "a.png")
    expect_error(capsys, "2 images of that name", "info", root)
    (root / "other" / "a.png").unlink()
    expect_error(capsys, "is not a class", "info", root, "--class-names", "pit,scratch")
    write(lambda t: t[0]["annotations"][1]["result"][2]["value"].update(rle=[1, 2, 3]))
    expect_error(capsys, "brush encoding", "info", root)


def test_convert_to_labelstudio_and_back(tmp_path: Path, synth_small: Path, capsys) -> None:
    rc, _, err = cli_run(capsys, "convert", synth_small, tmp_path / "ls", "--to", "labelstudio")
    assert rc == 0, err
    src = open_dataset(synth_small)
    back = open_dataset(tmp_path / "ls", src.class_names)
    assert back.layout == "labelstudio"
    for image_id in src.image_ids:  # brush masks: exact
        assert ((src.load_mask(image_id) > 0) == (back.load_mask(image_id) > 0)).all(), image_id
