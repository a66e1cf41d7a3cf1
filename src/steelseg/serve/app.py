"""The inference service: a FastAPI app over one ``Predictor`` per worker, a review page, and a
feedback loop into a Kaggle-layout training folder.

Routes (``/v1/*`` and feedback need the API key when one is set):

* ``POST /v1/predict``: one image (multipart field ``file``, or the raw image as the body) -> per
  class its name, presence, classifier score, area, component boxes and Kaggle RLE mask.
* ``POST /v1/predict/batch``: several images (multipart field ``files``), up to ``max_batch``.
* ``POST /v1/feedback``: the image again with a person's verdict per class; accepted masks are
  appended to the feedback folder (``train_images/`` + ``train.csv``).
* ``GET /health``, ``/ready``, ``/v1/model``, ``/metrics`` (Prometheus), ``/docs`` (OpenAPI), ``/``.

Every bad request is a 4xx JSON ``{"error": ...}``; a failed request leaves the worker healthy.
Clients never pass file-system paths; bundles load without pickle (safetensors or ONNX).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from steelseg import postprocess, rle
from steelseg.errors import DataError, SteelsegError
from steelseg.images import image_size, max_pixels, read_image
from steelseg.pipeline import Prediction, Predictor, read_bundle

__all__ = ["ServeConfig", "create_app"]

STATIC = Path(__file__).with_name("static")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/tiff", "image/x-ms-bmp", "application/octet-stream")


@dataclass
class ServeConfig:
    bundle: str
    api_key: str | None = None
    feedback: str | None = None
    max_batch: int = 16
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = field(default_factory=max_pixels)
    backend: str | None = None
    threads: int | None = None

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


def _bundle_id(path: Path) -> str:
    """A short content hash of the bundle's small files: which model answered, on every response."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*.json")):
        h.update(p.relative_to(path).as_posix().encode())
        h.update(p.read_bytes())
    return f"{path.name}-{h.hexdigest()[:12]}"


class _Metrics:
    def __init__(self, class_names: list[str]) -> None:
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


class _Service:
    """What one worker holds: the predictor (loaded once), metrics, and the feedback writer."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.bundle = Path(cfg.bundle)
        self.info = read_bundle(self.bundle)
        self.predictor = Predictor.from_bundle(self.bundle, backend=cfg.backend, threads=cfg.threads)
        self.bundle_id = _bundle_id(self.bundle)
        self.metrics = _Metrics(self.predictor.class_names)
        self.lock = threading.Lock()  # one prediction at a time per worker: no oversubscribed cores
        self.feedback = None
        if cfg.feedback:
            from steelseg.serve.feedback import FeedbackWriter

            self.feedback = FeedbackWriter(Path(cfg.feedback), self.predictor.class_names)

    def decode(self, data: bytes, name: str) -> np.ndarray:
        if not data:
            raise ApiError(400, f"{name}: empty body; send an image (JPEG, PNG, BMP or TIFF)")
        if len(data) > self.cfg.max_bytes:
            raise ApiError(413, f"{name}: {len(data)} bytes, above the limit of {self.cfg.max_bytes}")
        try:
            h, w = image_size(data, name, self.cfg.max_pixels)
        except DataError as exc:
            raise ApiError(413 if "above the limit" in str(exc) else 400, str(exc)) from None
        if min(h, w) < 16:
            raise ApiError(400, f"{name}: image is {w}x{h}; at least 16x16 pixels are needed")
        try:
            return read_image(data, None, name, self.cfg.max_pixels)
        except DataError as exc:
            raise ApiError(400, str(exc)) from None

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        with self.lock:
            return self.predictor.predict(images)

    def describe(self, pred: Prediction, image: np.ndarray, timings: dict[str, float]) -> dict[str, Any]:
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
        h, w = image.shape[:2]
        return {"image": {"width": w, "height": h}, "bundle": self.bundle_id, "skipped_by_gate": pred.skipped,
                "classes": classes, "timings_ms": {k: round(v * 1000, 2) for k, v in timings.items()}}


def create_app(cfg: ServeConfig | None = None) -> Any:
    """The FastAPI app; with no ``cfg`` it reads what ``steelseg serve`` put in the environment."""
    cfg = cfg or ServeConfig.from_env()
    svc = _Service(cfg)  # loaded before the first request: /ready is true once the app exists
    app = FastAPI(title="steelseg", version="1", description="Steel surface defect segmentation service. "
                  "Send an image to /v1/predict; the review page is at /.")
    app.state.service = svc

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", []))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:  # a bug: say so, stay up
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the service is still up"},
                            status_code=500)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        route = request.url.path if request.url.path in ROUTES else "other"
        if route.startswith("/v1/") and cfg.api_key:
            given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
                "Bearer ").strip()
            if not given or not _same(given, cfg.api_key):
                svc.metrics.requests.labels(route, "401").inc()
                return JSONResponse({"error": "missing or wrong API key (send it as the X-API-Key header)"},
                                    status_code=401)
        try:
            response = await call_next(request)
        except Exception as exc:  # pragma: no cover - handlers above answer first
            response = JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)
        svc.metrics.requests.labels(route, str(response.status_code)).inc()
        svc.metrics.latency.labels(route).observe(time.perf_counter() - t0)
        return response

    async def _one_image(request: Request) -> tuple[bytes, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        length = int(request.headers.get("content-length") or 0)
        if length > cfg.max_bytes:
            raise ApiError(413, f"request of {length} bytes, above the limit of {cfg.max_bytes}")
        if ctype == "multipart/form-data":
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "multipart request without a file field named 'file'")
            return await upload.read(), upload.filename or "upload"
        if ctype and ctype not in IMAGE_TYPES:
            raise ApiError(415, f"content type {ctype!r}; send an image (image/jpeg, image/png, ...) "
                                "or multipart/form-data with a 'file' field")
        return await request.body(), "body"

    def _run(items: list[tuple[bytes, str]]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        images = [svc.decode(data, name) for data, name in items]
        t1 = time.perf_counter()
        preds = svc.predict(images)
        t2 = time.perf_counter()
        timings = {"decode": (t1 - t0) / len(items), "predict": (t2 - t1) / len(items)}
        return [svc.describe(p, im, timings) for p, im in zip(preds, images)]

    @app.post("/v1/predict", summary="Predict one image (raw body or multipart field 'file')")
    async def predict(request: Request) -> JSONResponse:
        item = await _one_image(request)
        return JSONResponse((await run_in_threadpool(_run, [item]))[0])

    @app.post("/v1/predict/batch", summary="Predict several images (multipart field 'files')")
    async def predict_batch(request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            raise ApiError(415, "send multipart/form-data with one or more 'files' fields")
        form = await request.form(max_files=cfg.max_batch + 1)
        uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not uploads:
            raise ApiError(400, "no 'files' fields in the request")
        if len(uploads) > cfg.max_batch:
            raise ApiError(413, f"{len(uploads)} images, above the batch limit of {cfg.max_batch}")
        items = [(await u.read(), u.filename or f"file{i}") for i, u in enumerate(uploads)]
        return JSONResponse({"results": await run_in_threadpool(_run, items)})

    @app.post("/v1/feedback", summary="A person's verdict on a prediction; appended to the feedback folder")
    async def feedback(request: Request) -> JSONResponse:
        if svc.feedback is None:
            raise ApiError(404, "feedback is off; start the service with --feedback DIR")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            raise ApiError(415, "send multipart/form-data with 'file' (the image) and 'verdicts' (JSON)")
        form = await request.form()
        upload, raw = form.get("file"), form.get("verdicts")
        if upload is None or isinstance(upload, str) or not isinstance(raw, str):
            raise ApiError(400, "feedback needs a 'file' field (the image) and a 'verdicts' field (JSON)")
        data, name = await upload.read(), upload.filename or "upload"

        def work() -> dict[str, Any]:
            image = svc.decode(data, name)
            verdicts = svc.feedback.parse(raw)
            pred = svc.predict([image])[0]  # the same prediction the person saw (deterministic)
            result = svc.feedback.add(data, name, pred.masks, verdicts)
            for cname, v in verdicts.items():
                svc.metrics.feedback.labels(cname, v).inc()
            return result

        try:
            return JSONResponse(await run_in_threadpool(work))
        except DataError as exc:
            raise ApiError(400, str(exc)) from None

    @app.get("/health", summary="The process is alive")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="The bundle is loaded and the service can predict")
    def ready() -> dict[str, Any]:
        return {"ready": True, "bundle": svc.bundle_id}

    @app.get("/v1/model", summary="Classes, thresholds, gates and the bundle id")
    def model() -> dict[str, Any]:
        p = svc.predictor
        pp = p.pp
        return {"bundle": svc.bundle_id, "kind": svc.info.kind, "backend": p.backend, "tta": p.tta,
                "classes": [{"id": i + 1, "name": n, "pixel_threshold": pp.pixel_threshold[i] if pp else 0.5,
                             "min_area": pp.min_area[i] if pp else 0,
                             "min_component": pp.min_component[i] if pp else 0,
                             "gate": None if pp is None or pp.gate_threshold is None else pp.gate_threshold[i]}
                            for i, n in enumerate(p.class_names)],
                "gate_any": None if pp is None else pp.gate_any, "segmenters": len(p.segmenters),
                "classifiers": len(p.classifiers), "feedback": svc.feedback is not None,
                "api_key_required": bool(cfg.api_key), "limits": {"max_batch": cfg.max_batch,
                                                                   "max_bytes": cfg.max_bytes,
                                                                   "max_pixels": cfg.max_pixels}}

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    ROUTES.update({"/v1/predict", "/v1/predict/batch", "/v1/feedback", "/v1/model", "/health", "/ready",
                   "/metrics", "/"})
    return app


ROUTES: set[str] = set()


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def run(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Start uvicorn; each worker builds the app (and loads the bundle) once."""
    import uvicorn

    read_bundle(cfg.bundle)  # fail here, with a clear message, rather than in every worker
    os.environ["STEELSEG_SERVE_CONFIG"] = json.dumps(cfg.__dict__)
    uvicorn.run("steelseg.serve.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="info")
