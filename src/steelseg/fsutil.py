"""Writing files and folders so that a crash, a kill or a failure never leaves half of one.

* :func:`atomic_write` / :func:`atomic_text` / :func:`atomic_json`: a temporary file beside the
  target, flushed and renamed over it (readers see the old file or the new one, never a mix).
* :func:`staged_dir`: a folder (bundle, export) is built in a temporary folder beside the target
  and swapped in only when complete; an existing target is refused unless ``overwrite``.

The one helper for each of these; every writer in steelseg goes through them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from steelseg.errors import DataError

__all__ = ["MARKER", "TMP_TAG", "atomic_json", "atomic_text", "atomic_write", "cache_dir", "check_writable_dir",
           "clean_stale", "confine", "guard_output", "refuse_existing", "staged_dir"]

TMP_TAG = ".steelseg-"  # in the name of every temporary file or folder steelseg makes: only those are cleaned up
MARKER = ".steelseg-output"  # in every folder staged_dir makes: only such folders are replaced


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kw: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    check_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **open_kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_text(path: str | Path, text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def atomic_json(path: str | Path, obj: Any) -> Path:
    return atomic_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def check_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) or say clearly why it cannot be written."""
    folder = Path(folder)
    for p in [folder, *folder.parents]:
        if p.exists() and not p.is_dir():
            raise DataError(f"{p}: is a file, not a folder; choose another output path")
        if p.exists():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"{folder}: output folder is not writable")
    return folder


def refuse_existing(target: str | Path, overwrite: bool, what: str = "folder") -> None:
    """Raise when ``target`` exists and may not be replaced; callers check before long work."""
    if Path(target).exists() and not overwrite:
        raise DataError(f"{target}: already exists; pass --overwrite to replace the {what}, or choose another path")


def _within(inner: str, outer: str) -> bool:
    return inner.startswith(outer.rstrip(os.sep) + os.sep)


def guard_output(out: str | Path, inputs: list[tuple[str | Path, bool]], what: str = "output") -> None:
    """Refuse an output path that is one of the command's inputs, holds one, or (unless the input's flag
    says outputs may live inside it, as a run's eval-val/ and report/ do) lies inside one, links followed.
    Every command with ``--out`` goes through it (``steelseg.cli`` declares each command's inputs)."""
    o = os.path.realpath(out)
    for path, inside_ok in inputs:
        r = os.path.realpath(path)
        if o == r:
            raise DataError(f"{out}: is the command's own input ({path}); write the {what} to another folder")
        if _within(r, o):
            raise DataError(f"{out}: holds the command's input {path}; writing the {what} there could replace it: "
                            "choose a folder outside it")
        if not inside_ok and _within(o, r):
            raise DataError(f"{out}: lies inside the command's input {path}; the {what} would mix with what it "
                            "reads: choose a folder outside it")


def _made_by_steelseg(target: Path, signatures: tuple[str, ...]) -> bool:
    return (target / MARKER).is_file() or any((target / s).is_file() for s in signatures)


@contextlib.contextmanager
def staged_dir(target: str | Path, overwrite: bool = False, what: str = "folder",
               signatures: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; when the block succeeds it becomes ``target``.

    An existing ``target`` is refused unless ``overwrite``, and even then unless steelseg made it (its
    :data:`MARKER`, or one of the ``signatures`` files of folders made before the marker existed): a folder of
    a person's files is never replaced. It is replaced only after the new one is complete (the old one is
    moved aside first and removed last, so it survives a failure); a link at ``target`` is replaced as a link.
    """
    target = Path(target)
    refuse_existing(target, overwrite, what)
    if target.exists() and not target.is_dir():
        raise DataError(f"{target}: is a file, not a {what} folder")
    if target.is_dir() and any(target.iterdir()) and not _made_by_steelseg(target, signatures):
        raise DataError(f"{target}: holds files steelseg did not make (no {MARKER} in it); it is not replaced: "
                        f"move them away or choose another path for the {what}")
    check_writable_dir(target.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_TAG}", suffix=".partial", dir=target.parent))
    try:
        (stage / MARKER).write_text(f"made by steelseg ({what}); steelseg replaces this folder only when it holds "
                                    "this file\n")
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if target.is_symlink():  # replace the link itself, never the folder it points to
        os.unlink(target)
    elif target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_TAG}", suffix=".old", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
    try:
        os.replace(stage, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    os.chmod(target, 0o755 & ~_umask())


def clean_stale(folder: Path, names: tuple[str, ...]) -> None:
    """Remove what a killed earlier steelseg run left in ``folder`` for ``names``: only steelseg's own temporary
    files and folders (their names carry :data:`TMP_TAG`), never a person's files that merely look alike."""
    for name in names:
        for p in folder.glob(f".{name}{TMP_TAG}*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_dir(part: str = "") -> Path:
    """steelseg's own cache (``$STEELSEG_CACHE``, else ``~/.cache/steelseg``), or a folder in it."""
    root = os.environ.get("STEELSEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "steelseg")
    return Path(root) / part if part else Path(root)


EMBEDDED = "embedded"  # cache_dir(EMBEDDED): images steelseg decoded from a label file (labelme imageData)


def confine(path: str | Path, root: str | Path, what: str = "file") -> Path:
    """``path`` itself when it lies inside ``root`` once links are followed; else a DataError. A dataset
    never makes steelseg read, train on or copy a file outside its folder (a COCO ``file_name`` of
    ``../x.png``, an absolute path, a link that leads out). The one exception is what steelseg itself
    decoded from a label file inside the dataset into ``cache_dir(EMBEDDED)``."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    if _within(real, os.path.realpath(cache_dir(EMBEDDED))):
        return Path(path)
    if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
        raise DataError(f"{path}: {what} resolves to {real}, outside the dataset folder {base}; keep images and "
                        "masks inside the dataset folder (copy them in, or open the folder that holds them)")
    return Path(path)

