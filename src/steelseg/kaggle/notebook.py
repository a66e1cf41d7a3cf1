"""The kit's notebook (nbformat 4 JSON, written without nbformat): the first cells use the standard
library only (steelseg is not installed yet), the rest call :mod:`steelseg.kaggle.runtime`."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["notebook"]

_SETUP = '''# steelseg Kaggle kit: an offline submission notebook written by `steelseg kaggle`.
import json, os, sys, platform, subprocess, hashlib, importlib, importlib.metadata as md
from pathlib import Path

KIT = json.loads({kit!r})
INPUT = Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))
WORKING = Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))
WORKING.mkdir(parents=True, exist_ok=True)
print(f"python {{sys.version.split()[0]}} on {{platform.platform()}}, {{os.cpu_count()}} CPUs")
print(f"inputs under {{INPUT}}, outputs to {{WORKING}}; the kit was built for Python {{KIT['python']}}")
if f"{{sys.version_info[0]}}.{{sys.version_info[1]}}" != KIT["python"]:
    raise RuntimeError(f"this notebook runs Python {{sys.version_info[0]}}.{{sys.version_info[1]}}, the kit's wheels are "
                       f"for {{KIT['python']}}: rebuild it with steelseg kaggle BUNDLE --python "
                       f"{{sys.version_info[0]}}.{{sys.version_info[1]}}")
'''

_FIND_DEPS = '''# The kit's wheels: found by their manifest anywhere under the input folder, never by a fixed path.
def find_marker(root, name, depth=5):
    for here, dirs, files in os.walk(root):
        dirs[:] = [] if len(Path(here).relative_to(root).parts) >= depth else [
            d for d in dirs if d not in ("test_images", "train_images")]
        if name in files:
            return Path(here)
    return None

DEPS = find_marker(INPUT, "steelseg-kit-deps.json") if INPUT.is_dir() else None
if DEPS is None:
    raise RuntimeError(f"the kit's wheels (a folder with steelseg-kit-deps.json) are not under {INPUT}: "
                       f"add the dataset {KIT['deps_dataset']} in the notebook's Data panel")
MANIFEST = json.loads((DEPS / "steelseg-kit-deps.json").read_text())
for w in MANIFEST["wheels"]:
    print(f"  {w['name']} {w['version']}  ({w['why']})")
'''

_INSTALL = '''# Install from the kit only (--no-index --no-deps); what the image has is pinned to its own versions.
pins, tested = [], MANIFEST["tested_with"]
for name in MANIFEST["preinstalled"]:
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        continue
    pins.append(f"{name}=={have}")
    if name in tested and tested[name] != have:
        print(f"note: {name} {have} here, {tested[name]} where the kit was tested")
constraints = WORKING / "steelseg-constraints.txt"
constraints.write_text("\\n".join(pins) + "\\n")
wheels = []
for w in MANIFEST["wheels"]:
    path = DEPS / w["file"]
    if not path.is_file():
        raise RuntimeError(f"{path}: missing from the kit's dataset; upload deps/ again")
    if hashlib.sha256(path.read_bytes()).hexdigest() != w["sha256"]:
        raise RuntimeError(f"{path}: sha256 differs from the manifest; upload deps/ again")
    wheels.append(str(path))
env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)
proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check",
                       "-q", "-c", str(constraints), *wheels], capture_output=True, text=True, env=env)
print(proc.stdout[-2000:])
if proc.returncode != 0:
    raise RuntimeError("pip install from the kit failed:\\n" + proc.stderr[-3000:])
moved = [p for p in pins if md.version(p.split("==")[0]) != p.split("==")[1]]
if moved:
    raise RuntimeError(f"installing the kit changed preinstalled packages: {moved}")
importlib.invalidate_caches()
import steelseg
print("steelseg", steelseg.__version__, "installed from the kit")
'''

_INPUTS = '''from dataclasses import asdict
from steelseg.kaggle import runtime as kr

print(kr.environment())
inputs = kr.find_inputs(INPUT, KIT, WORKING)
BUNDLE = json.loads((inputs.bundle / "bundle.json").read_text())
device, why = kr.choose_device(BUNDLE["backend"], KIT["gpu"])
print(f"bundle {inputs.bundle} ({BUNDLE['backend']}, classes {BUNDLE['class_names']}); device {device}: {why}")
sample = kr.read_sample(inputs.competition / "sample_submission.csv")
print(f"sample_submission.csv: {'old ImageId_ClassId' if sample.old_layout else 'ImageId,EncodedPixels,ClassId'} "
      f"layout, {len(sample.rows)} rows, {len(sample.images)} images")
'''

_PLAN = '''plan = kr.plan_run(inputs.bundle, [inputs.test_images / i for i in sample.images], device, KIT)
print("\\n".join(plan.notes))
print(f"projected {plan.projected_minutes:.1f} min for {plan.hidden_images} images (budget {KIT['minutes']} min), "
      f"TTA {'on' if plan.tta else 'off'}")
'''

_PREDICT = '''result = kr.predict_submission(inputs, sample, plan, device, WORKING / "submission.csv")
print(f"{result['images']} images in {result['seconds'] / 60:.1f} min ({result['images'] / result['seconds']:.2f} img/s)")
'''

_VALIDATE = '''check = kr.validate_submission(WORKING / "submission.csv", sample, result["sizes"], len(BUNDLE["class_names"]))
kr.save_report(WORKING / "steelseg-kaggle.json", plan=asdict(plan), device=device, why=why, check=check,
               result={k: v for k, v in result.items() if k != "sizes"})
print(f"submission.csv is valid: {check['rows']} rows, {check['non_empty']} masks, {check['images']} images")
'''


def _cell(kind: str, source: str, n: int) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": kind, "id": f"steelseg-{n}", "metadata": {},
                            "source": source.splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def notebook(kit: dict[str, Any]) -> dict[str, Any]:
    """The notebook for a kit whose settings are ``kit`` (slugs, Python, GPU, time budget, hidden images)."""
    intro = (f"# steelseg submission: {kit['competition']}\n\nOffline: installs steelseg from the dataset "
             f"`{kit['deps_dataset']}`, predicts with the bundle `{kit['bundle_dataset']}`, writes "
             "`submission.csv` in the layout of `sample_submission.csv` and checks it. Written by `steelseg kaggle`.")
    sources = [_SETUP.format(kit=json.dumps(kit)), _FIND_DEPS, _INSTALL, _INPUTS, _PLAN, _PREDICT, _VALIDATE]
    return {"cells": [_cell("markdown", intro, 0)] + [_cell("code", s, n) for n, s in enumerate(sources, 1)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}
