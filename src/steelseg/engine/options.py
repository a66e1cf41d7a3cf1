"""What an archive job's engine needs to know, one dataclass for both engines."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineOptions"]


@dataclass
class EngineOptions:
    bundle: str  # a local bundle folder (a models:/ URI is fetched before)
    backend: str | None = None  # torch / onnx / openvino: default what the bundle's model files are
    threads: int | None = None  # per worker (default: the worker's share of the cores)
    device: str = "cpu"
    tta: bool | None = None
    batch: int = 8  # images per model call, the same on every engine (the masks then match bit for bit)
    address: str | None = None  # ray: auto, HOST:PORT, or None for an embedded local instance
    workers: int | None = None  # ray: actors that each load the bundle once (default: the CPUs // 2, at least 1)
    shard_rows: int = 1000  # rows a shard (one is also written every 30 s): what a killed job can lose
    object_store_mb: int = 256  # ray, embedded: its shared-memory store (back-pressure holds the images in it)
