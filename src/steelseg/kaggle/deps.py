"""The wheels a Kaggle kit carries: what the predict path of a bundle needs, less what Kaggle's image
already has, for the target Python and platform; downloaded with pip, never installed here.

What Kaggle's image ships (Kaggle/docker-python: the Colab base image frozen for torch / tensorflow /
jax, plus ``kaggle_requirements.txt``) is kept below as :data:`KAGGLE_PREINSTALLED`. The kit never
carries those (pip must not replace Kaggle's torch) and pins them at install time to the versions the
image has. A dependency outside that list is followed through its own ``Requires-Dist`` (markers
evaluated for the target Python and Linux) and carried too, so nothing is left for pip to fetch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from steelseg.errors import SteelsegError

__all__ = ["KAGGLE_PREINSTALLED", "Wheel", "build_steelseg_wheel", "canonical", "download_closure",
           "installed_version", "predict_requirements", "sha256", "wheel_requirements"]

# Distributions the Kaggle Python image ships (checked against Kaggle/docker-python, Dockerfile.tmpl and
# kaggle_requirements.txt over the Colab base image). Not in it: segmentation-models-pytorch,
# onnxruntime, lightning, mlflow, iterative-stratification.
KAGGLE_PREINSTALLED = (
    "torch", "torchvision", "timm", "numpy", "pillow", "opencv-python", "opencv-python-headless", "pyyaml",
    "safetensors", "tqdm", "pandas", "huggingface-hub", "albumentations", "pycocotools", "pytorch-lightning",
    "onnx", "protobuf", "sympy", "packaging", "flatbuffers", "filelock", "fsspec", "jinja2", "networkx",
    "typing-extensions", "requests", "scipy", "matplotlib", "ipykernel", "setuptools", "coloredlogs",
    "humanfriendly", "mpmath", "markupsafe", "certifi", "idna", "urllib3", "charset-normalizer",
    "hf-xet", "triton",
)

# The predict path's own imports, by bundle backend (Predictor, postprocess, rle, images).
_BASE = ("numpy", "pillow", "opencv-python-headless", "pyyaml", "safetensors", "tqdm")
_BY_BACKEND = {"torch": ("torch", "torchvision", "timm", "segmentation-models-pytorch"),
               "onnx": ("onnxruntime",)}


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


PREINSTALLED = frozenset(canonical(n) for n in KAGGLE_PREINSTALLED)


@dataclass
class Wheel:
    name: str
    version: str
    file: str
    sha256: str
    why: str  # "steelseg" / "predict path" / "required by X"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def predict_requirements(backend: str) -> list[str]:
    """Distributions the predict path of a bundle of this backend imports."""
    if backend not in _BY_BACKEND:
        raise SteelsegError(f"bundle backend {backend!r}: the kit knows torch and onnx")
    return [*_BASE, *_BY_BACKEND[backend]]


def installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _wheel_meta(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) from a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    fields = [ln.split(":", 1) for ln in head.splitlines() if ":" in ln and not ln.startswith(" ")]

    def get(key: str) -> list[str]:
        return [v.strip() for k, v in fields if k.strip().lower() == key]

    return get("name")[0], get("version")[0], get("requires-dist")


def wheel_requirements(path: Path, python: str) -> list[str]:
    """Names a wheel requires on Linux under Python ``python`` (extras not asked for left out)."""
    from packaging.requirements import Requirement

    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    out = []
    for line in _wheel_meta(path)[2]:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            out.append(canonical(req.name))
    return out


def _pip_download(spec: str, dest: Path, python: str, platforms: list[str], find_links: Path | None = None) -> Path:
    """One wheel (no dependencies) for the target interpreter, from the package index or only from the
    wheelhouse ``find_links``; the pip error when there is none."""
    tag = python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none", "-d", str(dest),
           "--disable-pip-version-check", "-q", spec]
    for p in platforms:
        cmd += ["--platform", p]
    if find_links is not None:
        cmd += ["--no-index", "--find-links", str(find_links)]
    before = set(dest.iterdir())
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SteelsegError(f"pip could not download a wheel of {spec} for Python {python} ({', '.join(platforms)}): "
                            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}. "
                            f"{'Add the wheel to ' + str(find_links) if find_links else 'Check the package index is reachable'}"
                            ", or choose another --python")
    new = [p for p in set(dest.iterdir()) - before if p.suffix == ".whl"]
    if not new:  # already there from an earlier spec
        name = canonical(spec.split("==")[0])
        new = [p for p in dest.glob("*.whl") if canonical(p.name.split("-")[0]) == name]
    return new[0]


def download_closure(names: list[str], dest: Path, python: str, platforms: list[str],
                     find_links: Path | None = None) -> list[Wheel]:
    """Wheels of ``names`` that Kaggle lacks, at the versions installed here (what was tested), and of
    every requirement they bring that Kaggle lacks too."""
    wheels: list[Wheel] = []
    todo = [(canonical(n), "predict path") for n in names]
    seen: set[str] = set()
    while todo:
        name, why = todo.pop(0)
        if name in seen or name in PREINSTALLED or name == "steelseg":
            continue
        seen.add(name)
        version = installed_version(name)
        path = _pip_download(f"{name}=={version}" if version else name, dest, python, platforms, find_links)
        wname, wversion, _ = _wheel_meta(path)
        wheels.append(Wheel(canonical(wname), wversion, path.name, sha256(path), why))
        todo += [(r, f"required by {wname}") for r in wheel_requirements(path, python)]
    return wheels


def _project_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "steelseg").is_dir():
            return parent
    raise SteelsegError("steelseg's source tree is not found beside the installed package: build the kit from a "
                        "source checkout (pip install -e .)")


def _source_copy(root: Path, tmp: Path) -> Path:
    """The files a wheel is built from, copied out of the checkout: the build writes its build/ and egg-info
    there, never into the checkout (which may be read-only, or hold a stale build/lib of deleted modules)."""
    import shutil

    src = tmp / "source"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
        if (root / name).is_file():
            shutil.copyfile(root / name, src / name)
    shutil.copytree(root / "src" / "steelseg", src / "src" / "steelseg",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return src


def build_steelseg_wheel(dest: Path) -> Wheel:
    """steelseg itself as a wheel (pure Python), built from a copy of the source checkout this package runs
    from, in a temporary folder: nothing is written outside ``dest``."""
    root = _project_root()
    with tempfile.TemporaryDirectory() as tmp:
        source = _source_copy(root, Path(tmp))
        out = Path(tmp) / "wheel"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out),
               str(source)]
        # with this environment's setuptools first (offline); with pip's isolated build when that is too old
        proc = subprocess.run([*cmd[:5], "--no-build-isolation", *cmd[5:]], capture_output=True, text=True)
        if proc.returncode != 0:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        built = list(out.glob("steelseg-*.whl"))
        if proc.returncode != 0 or not built:
            raise SteelsegError(f"building the steelseg wheel failed: {proc.stderr.strip()[-500:]}")
        target = dest / built[0].name
        target.write_bytes(built[0].read_bytes())
    name, version, _ = _wheel_meta(target)
    return Wheel(canonical(name), version, target.name, sha256(target), "steelseg")
