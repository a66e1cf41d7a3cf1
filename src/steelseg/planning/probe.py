"""The machine probe: time a few real training steps of the planned model (forward, backward, AdamW) at a
model input size, batch and precision, as a step of ``steelseg train`` runs them. Results are cached per
machine (CPU, cores used, instruction-set path, torch version, GPU) in ``~/.cache/steelseg/probe.json``
(``$STEELSEG_CACHE``), so planning again costs nothing. A probe takes a few seconds: a warm-up step and two
timed ones, at the planned batch (at most 16)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steelseg.errors import SteelsegError
from steelseg.fsutil import cache_dir
from steelseg.machine import machine_facts

__all__ = ["Probe", "cache_path", "gpu_facts"]

MAX_BATCH = 16
TIMED = 2


def cache_path() -> Path:
    return cache_dir("probe.json")


def gpu_facts() -> tuple[str | None, bool]:
    """(the GPU's name or None, whether it does bf16)."""
    import torch

    if not torch.cuda.is_available():
        return None, False
    return torch.cuda.get_device_name(0), bool(torch.cuda.is_bf16_supported())


def _machine_key() -> str:
    import torch

    m = machine_facts()
    gpu, _ = gpu_facts()
    raw = json.dumps([m.cpu, torch.get_num_threads(), m.isa(), torch.__version__, gpu])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass
class Probe:
    """Measured seconds per training step; ``__call__`` is the rules' ``StepTime``."""

    measured: dict[str, float] = field(default_factory=dict)  # "HxW/batch@precision" -> seconds a step
    cached: int = 0
    seconds: float = 0.0  # spent probing in this process

    def _key(self, model: dict[str, Any], hw: tuple[int, int], batch: int, precision: str) -> str:
        spec = json.dumps(model, sort_keys=True)
        return f"{_machine_key()}:{hashlib.sha256(spec.encode()).hexdigest()[:12]}:{hw[0]}x{hw[1]}/{batch}@{precision}"

    def __call__(self, model: dict[str, Any], hw: tuple[int, int], batch: int, precision: str) -> float:
        """Seconds a training step of ``batch`` samples of ``model`` takes at model input ``hw``."""
        b = min(batch, MAX_BATCH)
        key = self._key(model, hw, b, precision)
        store = _load()
        if key not in store:
            t0 = time.perf_counter()
            store[key] = self._measure(model, hw, b, precision)
            self.seconds += time.perf_counter() - t0
            _save(store)
        else:
            self.cached += 1
        self.measured[f"{hw[0]}x{hw[1]}/{b}@{precision}"] = store[key]
        return store[key] * batch / b

    @staticmethod
    def _measure(m: dict[str, Any], hw: tuple[int, int], batch: int, precision: str) -> float:
        """Seconds a training step of ``batch`` samples takes at model input ``hw`` (the scale applied)."""
        import torch

        from steelseg.models.factory import create_segmenter, depthwise_in_fp32

        net = create_segmenter(m["arch"], m["encoder"], m["classes"], m["channels"], None, **m.get("kwargs", {}))
        net = net.to(memory_format=torch.channels_last)
        depthwise_in_fp32(net)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        net.to(device).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x = torch.randn(batch, m["channels"], *hw, device=device).contiguous(memory_format=torch.channels_last)
        y = (torch.rand(batch, m["classes"], *hw, device=device) > 0.9).float()
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

        def step() -> None:
            with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(TIMED):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / TIMED


def _load() -> dict[str, float]:
    try:
        data = json.loads(cache_path().read_text())
        return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def _save(store: dict[str, float]) -> None:
    from steelseg.fsutil import atomic_json

    try:
        atomic_json(cache_path(), store)
    except (OSError, ValueError, SteelsegError):  # a read-only home: the probe works, it is only not remembered
        pass
