"""What one service worker holds: its config, the predictor (loaded once), Prometheus metrics and the
feedback writer; image decoding with the limits, and the JSON description of a prediction."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.data import rle
from steelseg.data.images import image_size, max_pixels, read_image
from steelseg.drift import DriftGauges, DriftMonitor, image_signals
from steelseg.errors import DataError, SteelsegError
from steelseg.inference import postprocess
from steelseg.inference.bundle import bundle_id, read_bundle
from steelseg.inference.found import too_small
from steelseg.inference.predictor import Prediction, Predictor
from steelseg.inference.reference import read_reference
from steelseg.inference.uncertainty import Priority, image_priority

__all__ = ["ApiError", "ServeConfig", "Service"]

MULTIPART_ROOM = 1024 * 1024  # multipart headers, boundaries and small fields (verdicts JSON) per request

@dataclass
class ServeConfig:
    bundle: str
    api_key: str | None = None
    feedback: str | None = None
    queue: str | None = None  # folder of line images to review, least certain first (needs feedback)
    queue_random_every: int = 10  # every Nth queue place is drawn at random (0: none)
    max_batch: int = 16
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = field(default_factory=max_pixels)
    backend: str | None = None
    threads: int | None = None
    max_queue: int = 16  # requests in flight per worker before new ones get 503 + Retry-After
    body_timeout: float = 30.0  # seconds a request body may take to arrive (then 408)
    shutdown_timeout: int = 10  # seconds a graceful shutdown waits for requests in flight
    follow: str | None = None  # models:/LINE@champion: a newly promoted version takes over (Service.follow)
    registry: str | None = None  # its MLflow registry URI (None: the local default)
    check_every: float = 30.0  # seconds between looks at the registry

    def body_limit(self, path: str) -> int:
        """The largest request body a POST route takes: its images plus room for the multipart framing."""
        images = self.max_batch if path == "/v1/predict/batch" else 1
        return images * self.max_bytes + MULTIPART_ROOM

    @classmethod
    def from_env(cls) -> ServeConfig:
        """What ``steelseg serve`` hands its workers (each worker process builds its own app)."""
        raw = os.environ.get("STEELSEG_SERVE_CONFIG")
        if not raw:
            raise SteelsegError("STEELSEG_SERVE_CONFIG is not set; start the service with `steelseg serve`")
        return cls(**json.loads(raw))


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _Metrics:
    def __init__(self, class_names: list[str], monitor: DriftMonitor | None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("steelseg_requests_total", "HTTP requests", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("steelseg_request_seconds", "Request latency", ["route"], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.images = Counter("steelseg_images_total", "Images predicted", registry=self.registry)
        self.defects = Counter("steelseg_defects_total", "Images in which a class was found", ["class_name"],
                               registry=self.registry)
        self.feedback = Counter("steelseg_feedback_total", "Feedback verdicts", ["class_name", "verdict"],
                                registry=self.registry)
        for n in class_names:  # every class shows from the start, so a rate of 0 is visible
            self.defects.labels(n)
        self.drift = DriftGauges(self.registry, monitor)  # the drift of the images served (one worker's window)
        self.drift_lock = threading.Lock()


class Service:
    """What one worker holds: the predictor (loaded once), metrics, and the feedback writer."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.bundle = Path(cfg.bundle)
        self.info = read_bundle(self.bundle)
        # one image a request: OpenVINO on one stream with every thread (latency), not split streams
        self.predictor = Predictor.from_bundle(self.bundle, backend=cfg.backend, threads=cfg.threads, streams=1)
        self.bundle_id = bundle_id(self.bundle)
        ref = read_reference(self.bundle)
        self.metrics = _Metrics(self.predictor.class_names, DriftMonitor(ref) if ref is not None else None)
        self.lock = threading.Lock()  # one prediction at a time per worker: no oversubscribed cores
        self.feedback = None
        if cfg.feedback:
            from steelseg.serve.feedback import FeedbackWriter

            self.feedback = FeedbackWriter(Path(cfg.feedback), self.predictor.class_names, self.bundle_id)
        self.queue = None
        if cfg.queue:
            if not cfg.feedback:
                raise SteelsegError("--queue needs --feedback DIR: reviewed images are sent there")
            from steelseg.serve.queue import ReviewQueue

            self.queue = ReviewQueue(Path(cfg.queue), self.bundle_id, self.rate, cfg.queue_random_every,
                                     max_bytes=cfg.max_bytes)
        if cfg.follow:
            threading.Thread(target=self._follow_loop, daemon=True, name="steelseg-follow").start()

    def _follow_loop(self) -> None:
        while True:
            time.sleep(self.cfg.check_every)
            try:
                self.follow()
            except Exception as exc:  # noqa: BLE001 - the registry down must not stop the service
                print(f"warning: {self.cfg.follow}: {exc}; still serving {self.bundle_id}", file=sys.stderr, flush=True)

    def follow(self) -> bool:
        """Switch to the registry's newly promoted version, loaded and checked first: requests keep being answered
        by the old one until the swap, which waits for the prediction in hand (the lock). True when it switched."""
        from steelseg.line.registry import fetch

        path, version = fetch(self.cfg.follow, self.cfg.registry)
        if path.resolve() == self.bundle.resolve():
            return False
        new = Predictor.from_bundle(path, backend=self.cfg.backend, threads=self.cfg.threads, streams=1)
        new.predict([np.zeros((64, 64), np.uint8)])  # it runs before it takes over
        if new.class_names != self.predictor.class_names:
            raise DataError(f"version {version} has classes {new.class_names}, not {self.predictor.class_names}")
        ref = read_reference(path)
        info, new_id = read_bundle(path), bundle_id(path)
        with self.lock:
            self.predictor, self.bundle, self.info, self.bundle_id = new, path, info, new_id
            self.metrics.drift.monitor = DriftMonitor(ref) if ref is not None else None
            if self.feedback is not None:  # reviews say which model they corrected
                self.feedback.bundle_id = new_id
        if self.queue is not None:  # outside the lock: it only reloads a cache; rating takes the lock itself
            self.queue.use_bundle(new_id)
        print(f"{self.cfg.follow}: switched to version {version} ({new_id})", file=sys.stderr, flush=True)
        return True

    def rate(self, data: bytes, name: str) -> Priority:
        """How unsure the model is of one image (the review queue's order)."""
        image = self.decode(data, name)
        with self.lock:
            return image_priority(self.predictor, image)

    def decode(self, data: bytes, name: str) -> np.ndarray:
        if not data:
            raise ApiError(400, f"{name}: empty body; send an image (JPEG, PNG, BMP or TIFF)")
        if len(data) > self.cfg.max_bytes:
            raise ApiError(413, f"{name}: {len(data)} bytes, above the limit of {self.cfg.max_bytes}")
        try:
            h, w = image_size(data, name, self.cfg.max_pixels)
        except DataError as exc:
            raise ApiError(413 if "above the limit" in str(exc) else 400, str(exc)) from None
        why = too_small(h, w)
        if why:
            raise ApiError(400, f"{name}: {why}")
        try:
            return read_image(data, None, name, self.cfg.max_pixels)
        except DataError as exc:
            raise ApiError(400, str(exc)) from None

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        return self.predict_tagged(images)[0]

    def predict_tagged(self, images: list[np.ndarray]) -> tuple[list[Prediction], str]:
        """The predictions and the id of the bundle that made them (read under the same lock: a swap between
        the two would name the new bundle for the old one's answer)."""
        with self.lock:
            return self.predictor.predict(images), self.bundle_id

    def describe(self, pred: Prediction, image: np.ndarray, timings: dict[str, float],
                 bundle: str | None = None) -> dict[str, Any]:
        classes = []
        for c, name in enumerate(self.predictor.class_names):
            mask = pred.masks[..., c]
            area = int(mask.sum())
            score = None if pred.gate is None else float(pred.gate[c])
            boxes = [list(b) for b in postprocess.components(mask)] if area else []
            classes.append({"id": c + 1, "name": name, "present": area > 0, "score": score,
                            "max_probability": float(pred.probs[..., c].max()), "area": area,
                            "boxes": boxes, "rle": rle.encode(mask)})
            if area:
                self.metrics.defects.labels(name).inc()
        self.metrics.images.inc()
        with self.metrics.drift_lock:
            self.metrics.drift.add(image_signals(image, pred.probs, pred.masks))
        h, w = image.shape[:2]
        return {"image": {"width": w, "height": h}, "bundle": bundle or self.bundle_id, "skipped_by_gate": pred.skipped,
                "classes": classes, "timings_ms": {k: round(v * 1000, 2) for k, v in timings.items()}}


