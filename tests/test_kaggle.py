"""The Kaggle kit (steelseg kaggle): files, the notebook's runtime in both submission layouts, and the
offline rehearsal (fresh venv, --no-index only) on a tiny bundle and a few synthetic strips."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steelseg.errors import DataError, SteelsegError
from tests.conftest import expect_error, tiny_bundle_at

HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
CLASSES = ["c1", "c2", "c3", "c4"]


def _strips(folder: Path, layout: str, n: int = 3) -> Path:
    """``n`` 64x320 strips in ``folder/test_images`` and a sample_submission.csv in ``layout``."""
    rng = np.random.default_rng(1)
    (folder / "test_images").mkdir(parents=True)
    ids = [f"{i:04x}f269f.jpg" for i in range(n)]
    for name in ids:
        Image.fromarray((rng.random((64, 320)) * 255).astype(np.uint8)).save(folder / "test_images" / name)
    with open(folder / "sample_submission.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        if layout == "old":
            w.writerow(["ImageId_ClassId", "EncodedPixels"])
            w.writerows([f"{i}_{c}", "1 1"] for i in ids for c in (1, 2, 3, 4))
        else:
            w.writerow(["ImageId", "EncodedPixels", "ClassId"])
            w.writerows([i, "1 409600", 0] for i in ids)
    return folder


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict:
    from steelseg.kaggle import KitConfig, build_kit

    root = tmp_path_factory.mktemp("kaggle")
    bundle = tiny_bundle_at(root, CLASSES)
    try:
        res = build_kit(bundle, root / "kit", KitConfig(user="tester", python=HERE, gpu=False))
    except SteelsegError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"no package index to download the kit's wheels from: {exc}")
        raise
    return {"root": root, "bundle": bundle, "kit": root / "kit", "res": res}


def test_the_kit_holds_what_kaggle_needs(kit):
    from steelseg.kaggle.deps import PREINSTALLED, canonical, sha256

    k = kit["kit"]
    raw = (k / "kernel" / "kernel-metadata.json").read_text()
    meta = json.loads(raw)
    assert '"enable_internet": false' in raw and meta["enable_gpu"] is False  # written explicitly
    assert meta["competition_sources"] == ["severstal-steel-defect-detection"]
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
    assert meta["id"].split("/")[1] == meta["title"].lower().replace(" ", "-")
    assert (k / "kernel" / meta["code_file"]).is_file()
    ids = []
    for name in ("deps", "bundle"):
        d = json.loads((k / name / "dataset-metadata.json").read_text())
        assert 6 <= len(d["title"]) <= 50 and len(d["licenses"]) == 1
        ids.append(d["id"])
    assert meta["dataset_sources"] == ids
    manifest = json.loads((k / "deps" / "steelseg-kit-deps.json").read_text())
    names = [w["name"] for w in manifest["wheels"]]
    assert names[0] == "steelseg" and "segmentation-models-pytorch" in names
    assert not set(names) & PREINSTALLED  # never torch, numpy, timm ...: pip must not replace Kaggle's
    for w in manifest["wheels"]:
        assert sha256(k / "deps" / w["file"]) == w["sha256"]
    pins = (k / "deps" / "constraints.txt").read_text()
    assert "torch==" in pins and "numpy==" in pins and canonical("segmentation_models_pytorch") not in pins
    push = (k / "PUSH.md").read_text()
    for cmd in ("kaggle datasets create -p", "-r zip", "kaggle datasets version", "kaggle datasets status",
                "kaggle kernels push -p", "kaggle competitions submit severstal-steel-defect-detection -k"):
        assert cmd in push, cmd
    assert (k / "bundle" / "bundle.json").is_file() and (k / "bundle" / "steelseg-kit-bundle.json").is_file()


def _readme_line(start: str) -> list[str]:
    """The docs' command that starts with ``start`` (README or a docs page), as written (its comment cut off)."""
    import shlex

    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    line = next(ln for ln in text.splitlines() if ln.startswith(start))
    return shlex.split(line.split("#")[0])


def test_rehearsal_offline_matches_steelseg_predict(kit, tmp_path, monkeypatch):
    """The docs' rehearsal line (docs/kaggle.md), run as written (relative paths) in a folder laid out as it names."""
    import shutil

    from steelseg.cli import main

    args = _readme_line("steelseg kaggle --rehearse")
    kit_dir, inputs, out = (args[args.index(flag) + 1] for flag in ("--rehearse", "--input", "--out"))
    shutil.copytree(kit["kit"], tmp_path / kit_dir)
    _strips(tmp_path / inputs, "old")
    monkeypatch.chdir(tmp_path)
    assert main(args[1:]) == 0
    out, inputs = tmp_path / out, tmp_path / inputs
    rep = json.loads((out / "rehearsal.json").read_text())
    assert rep["compare"]["equal"] and rep["compare"]["rows_compared"] == 12
    with open(out / "submission.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    with open(inputs / "sample_submission.csv", newline="") as fh:
        sample = list(csv.reader(fh))
    assert rows[0] == sample[0] and sorted(r[0] for r in rows[1:]) == sorted(r[0] for r in sample[1:])
    assert rep["device"] == "cpu" and rep["check"]["rows"] == 12
    image = out / "rehearsal" / "kaggle-image"  # what stood in for Kaggle's image
    assert (image / "torch").exists() and (image / "timm").exists()
    for absent in ("segmentation_models_pytorch", "onnxruntime", "lightning", "mlflow", "steelseg"):
        assert not (image / absent).exists(), absent


def test_a_missing_wheel_fails_the_rehearsal(kit, tmp_path):
    from steelseg.kaggle import rehearse

    broken = tmp_path / "kit"
    shutil.copytree(kit["kit"], broken)
    manifest_path = broken / "deps" / "steelseg-kit-deps.json"
    manifest = json.loads(manifest_path.read_text())
    smp = next(w for w in manifest["wheels"] if w["name"] == "segmentation-models-pytorch")
    manifest["wheels"].remove(smp)
    (broken / "deps" / smp["file"]).unlink()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SteelsegError, match="segmentation_models_pytorch"):  # never downloaded instead
        rehearse(broken, _strips(tmp_path / "in", "new"), tmp_path / "out")


def _cells(kit: dict) -> list[str]:
    nb = json.loads((kit["kit"] / "kernel" / "steelseg-submission.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_notebook_names_a_missing_dataset(kit, tmp_path, monkeypatch):
    from steelseg.kaggle.runtime import find_inputs

    empty = tmp_path / "input"
    empty.mkdir()
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(empty))
    monkeypatch.setenv("KAGGLE_WORKING_DIR", str(tmp_path / "working"))
    setup, find_deps = _cells(kit)[:2]
    ns: dict = {}
    exec(setup, ns)
    with pytest.raises(RuntimeError, match="add the dataset tester/steelseg-deps-py"):
        exec(find_deps, ns)
    shutil.copytree(kit["kit"] / "deps", empty / "steelseg-deps")
    exec(find_deps, ns)  # found by its manifest, wherever it is mounted
    assert ns["DEPS"] == empty / "steelseg-deps"
    with pytest.raises(DataError, match="add the dataset tester/steelseg-bundle.*add the competition severstal"):
        find_inputs(empty, ns["KIT"])


@pytest.mark.parametrize("layout", ["old", "new"])
def test_both_submission_layouts(kit, tmp_path, layout):
    from steelseg.kaggle import runtime as kr

    inputs = _strips(tmp_path / "input" / "severstal-steel-defect-detection", layout)
    shutil.copytree(kit["kit"] / "bundle", tmp_path / "input" / "bundle")
    kitcfg = {"bundle_dataset": "x/b", "competition": "c", "hidden_images": 10, "minutes": 50}
    found = kr.find_inputs(tmp_path / "input", kitcfg)
    sample = kr.read_sample(inputs / "sample_submission.csv")
    assert sample.old_layout == (layout == "old") and len(sample.images) == 3
    plan = kr.plan_run(found.bundle, [found.test_images / i for i in sample.images], "cpu", kitcfg, sample_size=2)
    assert plan.hidden_images == 10 and not plan.tta
    res = kr.predict_submission(found, sample, plan, "cpu", tmp_path / "submission.csv")
    check = kr.validate_submission(tmp_path / "submission.csv", sample, res["sizes"], 4)
    assert check["rows"] == 12 and check["images"] == 3
    header = (tmp_path / "submission.csv").read_text().splitlines()[0]
    assert header == ("ImageId_ClassId,EncodedPixels" if layout == "old" else "ImageId,EncodedPixels,ClassId")
    # a run outside the image is caught
    text = (tmp_path / "submission.csv").read_text().splitlines()
    parts = text[1].split(",")
    parts[1] = "30000 5"
    (tmp_path / "bad.csv").write_text("\n".join([text[0], ",".join(parts), *text[2:]]) + "\n")
    with pytest.raises(Exception, match="30000|outside|beyond|exceed|pixels"):
        kr.validate_submission(tmp_path / "bad.csv", sample, res["sizes"], 4)
    (tmp_path / "short.csv").write_text("\n".join(text[:-1]) + "\n")
    with pytest.raises(DataError, match="11 rows, 12 expected"):
        kr.validate_submission(tmp_path / "short.csv", sample, res["sizes"], 4)


def test_tta_is_dropped_when_the_hidden_set_would_not_fit(tmp_path):
    from steelseg.inference import write_bundle
    from steelseg.kaggle import runtime as kr
    from tests.conftest import tiny_model_at

    bundle = write_bundle(tmp_path / "b", [tiny_model_at(tmp_path / "m", CLASSES)], kind="plain", tta=True)
    inputs = _strips(tmp_path / "in", "new")
    plan = kr.plan_run(bundle, sorted((inputs / "test_images").iterdir()), "cpu",
                       {"hidden_images": 10 ** 7, "minutes": 1}, sample_size=2)
    assert not plan.tta and any("TTA dropped" in n for n in plan.notes)
    assert any("WARNING" in n for n in plan.notes)  # still too slow for 10 million images: said so


def test_an_unsupported_gpu_falls_back_to_the_cpu(monkeypatch):
    import torch

    from steelseg.kaggle.runtime import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90"])
    device, why = choose_device("torch")
    assert device == "cpu" and "sm_60" in why and "P100" in why
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    assert choose_device("torch")[0] == "cuda"
    assert choose_device("onnx")[0] == "cpu" and choose_device("torch", want_gpu=False)[0] == "cpu"


RUNTIME_PATH = """
import json, sys
from pathlib import Path
from steelseg.kaggle import runtime as kr
root, out = Path(sys.argv[1]), Path(sys.argv[2])
kit = {"bundle_dataset": "x/b", "competition": "c", "hidden_images": 5, "minutes": 50}
found = kr.find_inputs(root, kit)
sample = kr.read_sample(found.competition / "sample_submission.csv")
plan = kr.plan_run(found.bundle, [found.test_images / i for i in sample.images], "cpu", kit, sample_size=1)
res = kr.predict_submission(found, sample, plan, "cpu", out)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "mlflow",
                                                                       "albumentations", "pandas"))))
"""


def test_the_notebook_runtime_loads_no_training_stack(tmp_path):
    inputs = _strips(tmp_path / "input" / "comp", "new", n=2)
    tiny_bundle_at(tmp_path / "input" / "b", CLASSES)
    (tmp_path / "input" / "b" / "bundle" / "steelseg-kit-bundle.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-c", RUNTIME_PATH, str(tmp_path / "input"), str(tmp_path / "s.csv")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert inputs.is_dir() and (tmp_path / "s.csv").is_file()


def test_cli_errors(capsys, tmp_path):
    expect_error(capsys, "give BUNDLE and --out", "kaggle")
    expect_error(capsys, "needs --input", "kaggle", "--rehearse", tmp_path)
    (tmp_path / "kit").mkdir()
    (tmp_path / "data").mkdir()
    expect_error(capsys, "missing", "kaggle", "--rehearse", tmp_path / "kit", "--input", tmp_path / "data",
                 "--out", tmp_path / "o")
    expect_error(capsys, "slug", "kaggle", tmp_path / "kit", "--out", tmp_path / "k", "--user", "no spaces allowed")
