"""``steelseg kaggle BUNDLE --out KIT``: everything a late Kaggle submission needs, in three upload
folders (deps/, bundle/, kernel/) and the commands that push them (PUSH.md)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steelseg.errors import SteelsegError
from steelseg.fsutil import atomic_json, atomic_text, staged_dir
from steelseg.inference.bundle import read_bundle
from steelseg.kaggle import deps
from steelseg.kaggle.notebook import notebook
from steelseg.kaggle.runtime import BUNDLE_MARKER, DEPS_MARKER

__all__ = ["NOTEBOOK", "KitConfig", "build_kit"]

NOTEBOOK = "steelseg-submission.ipynb"
SEVERSTAL = "severstal-steel-defect-detection"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$")


@dataclass
class KitConfig:
    competition: str = SEVERSTAL
    user: str = "your-kaggle-username"
    python: str = "3.12"
    gpu: bool = True
    platforms: tuple[str, ...] = ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64")
    hidden_images: int = 5506  # Severstal's test set as the files list it today (public + private)
    minutes: float = 50.0  # of Kaggle's 60-minute limit, the share prediction may take
    find_links: Path | None = None  # a local wheelhouse instead of the package index (air-gapped builds)

    def slugs(self) -> dict[str, str]:
        tag = self.python.replace(".", "")
        out = {"deps_dataset": f"{self.user}/steelseg-deps-py{tag}", "bundle_dataset": f"{self.user}/steelseg-bundle",
               "kernel": f"{self.user}/steelseg-submission"}
        for what, slug in out.items():
            if not _SLUG.match(slug.split("/", 1)[1]) or not re.match(r"^[A-Za-z0-9-]{3,}$", self.user):
                raise SteelsegError(f"{slug}: not a valid Kaggle {what} slug (--user: letters, digits and dashes)")
        return out


def _dataset_meta(folder: Path, slug: str, title: str) -> None:
    if not 6 <= len(title) <= 50:
        raise SteelsegError(f"dataset title {title!r}: Kaggle wants 6-50 characters")
    atomic_json(folder / "dataset-metadata.json", {"title": title, "id": slug, "licenses": [{"name": "apache-2.0"}]})


def _write_deps(folder: Path, backend: str, cfg: KitConfig, slug: str) -> dict[str, Any]:
    folder.mkdir(parents=True)
    wheels = [deps.build_steelseg_wheel(folder)]
    needed = deps.predict_requirements(backend)
    wheels += deps.download_closure(needed, folder, cfg.python, list(cfg.platforms), cfg.find_links)
    tested = {n: v for n in sorted(deps.PREINSTALLED) if (v := deps.installed_version(n)) is not None}
    manifest = {"python": cfg.python, "platforms": list(cfg.platforms), "backend": backend,
                "wheels": [asdict(w) for w in wheels], "preinstalled": sorted(deps.PREINSTALLED),
                "needed_from_image": [deps.canonical(n) for n in needed if deps.canonical(n) in deps.PREINSTALLED],
                "tested_with": tested}
    atomic_json(folder / DEPS_MARKER, manifest)
    # The versions this kit was tested with; the notebook pins the image's own versions at install time.
    atomic_text(folder / "constraints.txt", "".join(f"{n}=={v}\n" for n, v in tested.items()))
    atomic_text(folder / "requirements.txt", "".join(f"{w.name}=={w.version}\n" for w in wheels))
    _dataset_meta(folder, slug, f"steelseg deps {wheels[0].version} py{cfg.python}")
    return manifest


def _write_bundle(src: Path, folder: Path, slug: str, info: Any) -> None:
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("dataset-metadata.json", BUNDLE_MARKER))
    atomic_json(folder / BUNDLE_MARKER, {"source": str(src), "backend": info.backend,
                                         "class_names": list(info.class_names)})
    _dataset_meta(folder, slug, "steelseg bundle")


def _write_kernel(folder: Path, cfg: KitConfig, slugs: dict[str, str]) -> None:
    folder.mkdir(parents=True)
    kit = {"competition": cfg.competition, "python": cfg.python, "gpu": cfg.gpu, "minutes": cfg.minutes,
           "hidden_images": cfg.hidden_images, **slugs}
    atomic_text(folder / NOTEBOOK, json.dumps(notebook(kit), indent=1) + "\n")
    title = "steelseg submission"  # the kernel slug (KitConfig.slugs) is the title lowercased, spaces as dashes
    atomic_json(folder / "kernel-metadata.json", {
        "id": slugs["kernel"], "title": title, "code_file": NOTEBOOK, "language": "python",
        "kernel_type": "notebook", "is_private": True, "enable_gpu": cfg.gpu,
        "enable_internet": False,  # the CLI's own default is true: a code competition refuses it
        "dataset_sources": [slugs["deps_dataset"], slugs["bundle_dataset"]],
        "competition_sources": [cfg.competition], "kernel_sources": [], "model_sources": []})


_PUSH = """# Pushing this kit to Kaggle

Needs the `kaggle` CLI with an API token (~/.kaggle/kaggle.json) for the account `{user}`.
`-r zip` (`--dir-mode zip`) uploads the bundle's sub-folders: without it `kaggle datasets create`
skips them silently. Kaggle unpacks the archives; the notebook also unpacks them if it did not.

```bash
# first time: create the two datasets
kaggle datasets create -p {kit}/deps
kaggle datasets create -p {kit}/bundle -r zip
kaggle datasets status {deps}
kaggle datasets status {bundle}

# later: new versions (a retrained bundle, or a kit for a new steelseg)
kaggle datasets version -p {kit}/bundle -r zip -m "new bundle"
kaggle datasets version -p {kit}/deps -m "new steelseg"

# the notebook (internet off, {gpu}): runs on Kaggle, then submit its output
kaggle kernels push -p {kit}/kernel
kaggle kernels status {kernel}
kaggle competitions submit {competition} -k {kernel} -f submission.csv -v 1 -m "steelseg"
```

Before pushing, rehearse it here, offline: `steelseg kaggle --rehearse {kit} --input DIR --out OUT`
(DIR holds test_images/ and sample_submission.csv; the kit must be built for this machine's Python).
"""


def build_kit(bundle: str | Path, out: str | Path, cfg: KitConfig, overwrite: bool = False) -> dict[str, Any]:
    """Write the kit for ``bundle`` into ``out`` (appears whole or not at all). Returns its summary."""
    slugs = cfg.slugs()  # a bad --user fails before any download
    src = Path(bundle)
    info = read_bundle(src)
    with staged_dir(out, overwrite, "kit", signatures=("PUSH.md",)) as tmp:
        manifest = _write_deps(tmp / "deps", info.backend, cfg, slugs["deps_dataset"])
        _write_bundle(src, tmp / "bundle", slugs["bundle_dataset"], info)
        _write_kernel(tmp / "kernel", cfg, slugs)
        atomic_text(tmp / "PUSH.md", _PUSH.format(user=cfg.user, kit=Path(out), deps=slugs["deps_dataset"],
                                                  bundle=slugs["bundle_dataset"], kernel=slugs["kernel"],
                                                  competition=cfg.competition,
                                                  gpu="GPU on" if cfg.gpu else "GPU off"))
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return {"kit": str(out), "bytes": size, "wheels": manifest["wheels"], "backend": info.backend, **slugs}
