"""Quiet by default: ``steelseg`` prints its own lines (epoch lines, progress, results, errors); what the
libraries say (Lightning's banners and tips, MLflow's database INFO lines, deprecation warnings) goes to
``log.txt`` in the folder being written (a run folder, a fit folder), or nowhere when there is none.
``steelseg -v`` leaves the libraries as they are.

Nothing real is hidden: a library warning that concerns the user's data or results (an image Pillow could
not read cleanly, a metric computed on nothing) is said again on stderr in steelseg's words, with where the
full text went. Standard library only (the ground floor).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LIBRARIES", "RESAY", "install", "log_to", "resay"]

# the loggers whose console output is the libraries' chatter
LIBRARIES = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning", "mlflow",
             "alembic", "torch", "timm", "urllib3", "matplotlib", "PIL", "albumentations", "onnxruntime", "openvino",
             "nncf", "py.warnings", "numexpr", "httpx", "filelock", "fsspec", "ray", "ray.data", "ray.train", "ray.tune")
# (what a library's record says, steelseg's words on stderr): warnings about the user's data or results
RESAY: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(Corrupt EXIF|Truncated File|Palette images with Transparency|DecompressionBomb|image file is "
                r"truncated)", re.I), "an image was read with a problem ({message})"),
    (re.compile(r"(Mean of empty slice|invalid value encountered|divide by zero|UndefinedMetric|"
                r"No positive samples|Only one class present)", re.I),
     "a score was computed on too little data, some values are undefined ({message})"),
]


class _Sink(logging.Handler):
    """Keeps the last records in memory and, while a folder is being written, appends them to its log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.recent: deque[str] = deque(maxlen=500)
        self.path: Path | None = None
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted is not worth a crash
            text = str(record.msg)
        self.recent.append(text)
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(text + "\n")
            except OSError:
                pass
        resay(record.getMessage(), self.path)


_SINK = _Sink()
_installed = False


def resay(message: str, where: Path | None) -> str | None:
    """Say a library message again on stderr when it concerns the data or the results; returns the line."""
    for pattern, words in RESAY:
        if pattern.search(message):
            first = message.strip().splitlines()[-1][:200] if message.strip() else message
            line = f"warning: {words.format(message=first)}" + (f"; the full text is in {where}" if where else "")
            print(line, file=sys.stderr, flush=True)
            return line
    return None


def install() -> None:
    """Route the libraries' loggers and Python warnings to the sink. Idempotent; call again after a library
    that installs its own console handlers at import (Lightning, MLflow) was imported."""
    global _installed
    for name in LIBRARIES:
        log = logging.getLogger(name)
        for h in list(log.handlers):
            if h is not _SINK:
                log.removeHandler(h)
        if _SINK not in log.handlers:
            log.addHandler(_SINK)
        log.propagate = False  # levels stay the libraries' own
    logging.captureWarnings(True)
    if not _installed:
        warnings.simplefilter("default")  # each library warning once per place, into the sink
        _installed = True


@contextlib.contextmanager
def log_to(path: str | Path) -> Iterator[None]:
    """While the block runs, the libraries' records are appended to ``path`` (a folder's log.txt)."""
    before = _SINK.path
    _SINK.path = Path(path)
    try:
        yield
    finally:
        _SINK.path = before


def active() -> bool:
    """Whether the libraries are being kept quiet (False under ``steelseg -v``)."""
    return _installed
