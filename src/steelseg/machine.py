"""Facts about this machine that training, the benches and the reports all need: the CPU's model and
feature flags, native bf16, free memory. Standard library only; Linux's /proc where it exists."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["MachineFacts", "available_memory", "cpu_facts", "cpu_has_bf16", "cpu_model", "machine_facts"]


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


@dataclass
class MachineFacts:
    """What planning and the benches need to know of a machine, from the standard library alone."""

    cpu: str
    cores: int  # CPUs this process may use (the affinity mask), not the host's
    memory_gib: float | None  # available now
    avx2: bool
    avx512: bool
    native_bf16: bool  # AVX-512 BF16, AMX-BF16 or Arm BF16: bf16 runs in hardware, not emulated
    amx: bool
    vnni: bool  # AVX-512 VNNI / AVX-VNNI: the int8 fast path
    fp32_lanes: int  # fp32 values per vector register: 16 with AVX-512, 8 with AVX2 (or less)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "isa": self.isa()}

    def isa(self) -> str:
        """The instruction set in a word, as results record it: avx512-bf16, avx512, avx2, other."""
        if self.avx512:
            return "avx512-bf16" if self.native_bf16 else "avx512"
        return "avx2" if self.avx2 else "other"


def machine_facts() -> MachineFacts:
    """This machine's CPU facts. ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's own cap, which PyTorch's CPU
    kernels follow with ``ATEN_CPU_CAPABILITY=avx2``) is honoured: the facts then describe the AVX2 path
    the libraries take, so a plan made there is the plan of an AVX2 machine."""
    facts = cpu_facts()
    name, flags = facts if facts else (None, set())
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper().startswith("AVX2") or \
        os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("avx2", "default")
    avx512 = "avx512f" in flags and not capped
    bf16 = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}) and not capped
    mem = available_memory()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return MachineFacts(cpu=name or cpu_model(), cores=cores, memory_gib=None if mem is None else mem / 2 ** 30,
                        avx2="avx2" in flags, avx512=avx512, native_bf16=bf16, amx="amx_tile" in flags and not capped,
                        vnni=bool(flags & {"avx512_vnni", "avx_vnni"}) and not (capped and "avx_vnni" not in flags),
                        fp32_lanes=16 if avx512 else (8 if "avx2" in flags else 4))
