"""Every `steelseg ...` command in a fenced block of the README and of the docs pages (docs/results.md, the lab
journal of commands as they were run, aside) parses against the CLI's argparse tree: no page shows a command
or a flag the CLI does not have (issue #37)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "results.md")]


def _commands() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                for part in re.split(r"\s(?:&&|;|\|)\s", line):
                    part = part.split(" #")[0].strip()
                    if part.startswith("steelseg "):
                        out.append((page.name, part))
    return out


def test_every_command_on_a_page_parses() -> None:
    from steelseg.cli import build_parser

    commands = _commands()
    assert len(commands) >= 40  # the README alone shows more: the scan found its blocks
    parser = build_parser()
    bad = []
    for page, cmd in commands:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(shlex.split(cmd)[1:])
        except SystemExit as exc:
            if exc.code:
                bad.append(f"{page}: {cmd}: {err.getvalue().strip().splitlines()[-1]}")
    assert not bad, "\n".join(bad)


def test_a_wrong_flag_would_be_caught() -> None:
    from steelseg.cli import build_parser

    with contextlib.redirect_stderr(io.StringIO()), __import__("pytest").raises(SystemExit):
        build_parser().parse_args(["predict", "b", "imgs", "--out", "o", "--no-such-flag"])


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """`mkdocs build --strict`: every page in the nav, every link resolving, the API pages rendered from the code."""
    import subprocess
    import sys

    __import__("pytest").importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    api = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "from_bundle" in api and "predict_archive" in api  # mkdocstrings rendered the docstrings


def test_every_picture_on_a_page_is_made_by_the_pictures_script(tmp_path: Path) -> None:
    """The pages show only pictures that `docs/pictures.py` makes (and they are there); the script runs: the
    layouts picture (five layouts read back) made here again, where no bundle or browser is needed."""
    import importlib.util
    import subprocess
    import sys

    spec = importlib.util.spec_from_file_location("pictures", ROOT / "docs" / "pictures.py")
    pictures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pictures)
    made = {name for names in pictures.PICTURES.values() for name in names}
    shown = {m for page in PAGES for m in re.findall(r"\]\((?:\.\./)?img/([^)\s]+)\)", page.read_text())}
    assert shown, "no page shows a picture"
    assert shown <= made, f"pictures no code makes: {shown - made}"
    assert all((ROOT / "docs" / "img" / name).is_file() for name in shown)
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "pictures.py"), "--only", "layouts", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import numpy as np
    from PIL import Image

    pic = np.asarray(Image.open(tmp_path / "layouts.jpg"))
    assert pic.shape[0] > 5 * 256 and pic.shape[1] == 1600  # five strips one above the other
