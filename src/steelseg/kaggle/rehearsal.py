"""``steelseg kaggle --rehearse KIT --input DIR --out OUT``: Kaggle's offline re-run, here.

A fake ``/kaggle/input`` (the kit's two datasets and a competition folder with DIR's ``test_images/``
and ``sample_submission.csv``), a fresh virtual environment that sees only what Kaggle's image ships
(the distributions of :data:`steelseg.kaggle.deps.KAGGLE_PREINSTALLED` found here, linked in; never
steelseg, segmentation-models-pytorch or onnxruntime), the kit installed with ``--no-index`` only, the
notebook executed headless (nbclient), and its submission checked against ``steelseg predict``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from steelseg.errors import DataError, SteelsegError
from steelseg.fsutil import MARKER
from steelseg.kaggle import deps
from steelseg.kaggle.kit import NOTEBOOK
from steelseg.kaggle.runtime import DEPS_MARKER, read_sample, read_submission

__all__ = ["image_closure", "rehearse"]


def image_closure(names: list[str] | tuple[str, ...] = deps.KAGGLE_PREINSTALLED) -> list[Any]:
    """Installed distributions standing in for Kaggle's image: ``names`` and what they require."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    todo, found = [deps.canonical(n) for n in names], {}
    while todo:
        name = todo.pop()
        if name in found or name == "steelseg":
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(deps.canonical(req.name))
    return list(found.values())


def _link_image(shim: Path) -> list[str]:
    """Link each top-level file and folder of the image's distributions into ``shim``."""
    shim.mkdir(parents=True)
    names = []
    for dist in image_closure():
        names.append(f"{dist.metadata['Name']}=={dist.version}")
        for f in dist.files or []:
            top = f.parts[0]
            if top == ".." or top.endswith(".pth") or (shim / top).exists():
                continue
            src = Path(dist.locate_file(top))
            if src.exists():
                (shim / top).symlink_to(src)
    return sorted(names)


ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}/([a-z0-9][a-z0-9-]{1,48}[a-z0-9])$")
COMPETITION = re.compile(r"^[a-z0-9][a-z0-9-]{1,98}[a-z0-9]$")


def dataset_slug(dataset_id: Any, where: Path) -> str:
    """The slug of a Kaggle dataset id ``user/slug`` as Kaggle defines it (lower-case letters, digits, hyphens);
    anything else (``../x``, an absolute path) is refused: it becomes a folder name in the rehearsal."""
    m = DATASET_ID.match(dataset_id) if isinstance(dataset_id, str) else None
    if not m:
        raise DataError(f"{where}: id {dataset_id!r} is not a Kaggle dataset id (user/slug: the slug 3-50 lower-case "
                        "letters, digits and hyphens)")
    return m.group(1)


def competition_slug(slug: Any, where: Path) -> str:
    if not isinstance(slug, str) or not COMPETITION.match(slug):
        raise DataError(f"{where}: competition {slug!r} is not a Kaggle competition slug (lower-case letters, "
                        "digits and hyphens)")
    return slug


def _venv(root: Path) -> Path:
    """A fresh virtual environment whose site-packages also reads the linked image (one .pth file)."""
    env = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, capture_output=True)
    py = env / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "kaggle_image.pth").write_text(str(root / "kaggle-image") + "\n")
    return py


def _layout(kit: Path, inputs: Path, root: Path, competition: str) -> tuple[Path, Path]:
    """``root/input`` as Kaggle mounts it, and ``root/working``."""
    fake, working = root / "input", root / "working"
    for name in ("deps", "bundle"):
        meta = json.loads((kit / name / "dataset-metadata.json").read_text())
        shutil.copytree(kit / name, fake / dataset_slug(meta.get("id"), kit / name / "dataset-metadata.json"))
    comp = fake / competition
    comp.mkdir(parents=True)
    (comp / "test_images").symlink_to((inputs / "test_images").resolve())
    shutil.copy(inputs / "sample_submission.csv", comp / "sample_submission.csv")
    working.mkdir()
    return fake, working


def _execute(nb_path: Path, py: Path, root: Path, fake: Path, working: Path, timeout: int) -> Any:
    """Run the notebook in a kernel of the fresh environment; errors name the failing cell's output."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    spec = root / "jupyter" / "kernels" / "kaggle-rehearsal"
    spec.mkdir(parents=True)
    env = {"KAGGLE_INPUT_DIR": str(fake), "KAGGLE_WORKING_DIR": str(working), "PIP_CONFIG_FILE": os.devnull,
           "PIP_NO_INDEX": "1", "PYTHONNOUSERSITE": "1"}
    (spec / "kernel.json").write_text(json.dumps({"argv": [str(py), "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"],
                                                  "display_name": "kaggle rehearsal", "language": "python",
                                                  "env": env}))
    nb = nbformat.read(nb_path, as_version=4)
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(root / "jupyter")
    try:
        NotebookClient(nb, kernel_name="kaggle-rehearsal", timeout=timeout,
                       resources={"metadata": {"path": str(working)}}).execute()
    except CellExecutionError as exc:
        text = ANSI.sub("", str(exc))[-3000:]  # the kernel colours its traceback: plain text in our error
        raise SteelsegError(f"the notebook failed in the rehearsal:\n{text}") from None
    finally:
        os.environ.pop("JUPYTER_PATH") if old is None else os.environ.__setitem__("JUPYTER_PATH", old)
    return nb


def _compare(notebook_csv: Path, bundle: Path, images: Path, tta: bool, scratch: Path) -> dict[str, Any]:
    """The notebook's masks against ``steelseg predict`` on the same images (same TTA)."""
    from steelseg.inference.predict import predict_folder

    predict_folder(bundle, images, scratch, tta=tta)
    ref, got = read_submission(scratch / "submission.csv"), read_submission(notebook_csv)
    differ = [k for k, v in got.items() if ref.get(k) != v]
    if differ:
        raise SteelsegError(f"the notebook's masks differ from steelseg predict on {len(differ)} rows "
                            f"(e.g. {differ[0][0]} class {differ[0][1]})")
    return {"rows_compared": len(got), "equal": True}


def rehearse(kit: str | Path, inputs: str | Path, out: str | Path, competition: str | None = None,
             timeout: int = 3600) -> dict[str, Any]:
    """Rehearse the kit's notebook offline; ``out/submission.csv``, the executed notebook and a report."""
    kit, inputs, out = Path(kit).resolve(), Path(inputs).resolve(), Path(out).resolve()  # the kernel runs elsewhere
    for need in (kit / "deps" / DEPS_MARKER, kit / "kernel" / NOTEBOOK, inputs / "sample_submission.csv"):
        if not need.is_file():
            raise DataError(f"{need}: missing (a kit from `steelseg kaggle`, and --input with test_images/ and "
                            "sample_submission.csv)")
    if not (inputs / "test_images").is_dir():
        raise DataError(f"{inputs / 'test_images'}: missing")
    manifest = json.loads((kit / "deps" / DEPS_MARKER).read_text())
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if manifest["python"] != here:
        raise DataError(f"{kit}: built for Python {manifest['python']}, this machine runs {here}: rehearse a kit "
                        f"built with --python {here}")
    kernel_meta = kit / "kernel" / "kernel-metadata.json"
    competition = competition_slug(competition or (json.loads(kernel_meta.read_text()).get("competition_sources")
                                                   or [None])[0], kernel_meta)
    read_sample(inputs / "sample_submission.csv")  # a bad sample fails here, not inside the kernel
    out.mkdir(parents=True, exist_ok=True)
    root = out / "rehearsal"
    if root.exists() and not (root / MARKER).is_file():
        raise DataError(f"{root}: exists and was not made by a rehearsal; move it away or choose another --out")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by steelseg kaggle --rehearse; replaced by the next rehearsal\n")
    t0 = time.perf_counter()
    image = _link_image(root / "kaggle-image")
    py = _venv(root)
    fake, working = _layout(kit, inputs, root, competition)
    nb = _execute(kit / "kernel" / NOTEBOOK, py, root, fake, working, timeout)
    seconds = time.perf_counter() - t0
    import nbformat

    nbformat.write(nb, out / NOTEBOOK)
    shutil.copy(working / "submission.csv", out / "submission.csv")
    report = json.loads((working / "steelseg-kaggle.json").read_text())
    bundle = next(p for p in fake.iterdir() if (p / "bundle.json").is_file())
    report["compare"] = _compare(out / "submission.csv", bundle, inputs / "test_images", report["plan"]["tta"],
                                 root / "reference")
    report.update(seconds=seconds, image_packages=len(image), python=here)
    (out / "rehearsal.json").write_text(json.dumps(report, indent=1))
    return report
