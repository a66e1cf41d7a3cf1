"""Facts about this machine that training, the benches and the reports all need: the CPU's model and
feature flags, native bf16, free memory. Standard library only; Linux's /proc where it exists."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["available_memory", "cpu_facts", "cpu_has_bf16", "cpu_model"]


def cpu_facts() -> tuple[str | None, set[str]] | None:
    """The CPU's model name (None if not listed) and feature flags from /proc/cpuinfo; None where
    there is no such file (not Linux)."""
    name: str | None = None
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name is None:
                name = " ".join(value.split())
            elif key.strip() in ("flags", "Features") and not flags:  # Features: Arm
                flags = set(value.split())
    except OSError:
        return None
    return name, flags


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (MemAvailable in /proc/meminfo); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_has_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX-512 BF16, AMX, Arm BF16); None where unknown."""
    facts = cpu_facts()
    return None if facts is None else bool(facts[1] & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    facts = cpu_facts()
    if facts and facts[0]:
        return facts[0]
    return platform.processor() or platform.machine() or "unknown CPU"
