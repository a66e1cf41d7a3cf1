"""Lazy re-exports for the wings' ``__init__`` files (PEP 562): ``from steelseg.models import
create_segmenter`` works, but importing ``steelseg.models.checkpoint`` (the ONNX predict path) does not
import torch, and ``steelseg.training.config`` does not import Lightning."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``exports[name]`` (a module path)
    when ``name`` is first asked for."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
