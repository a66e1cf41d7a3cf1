"""The service's routes, registered on a FastAPI app in groups: error handlers, the API-key and metrics
middleware, prediction, feedback, and the read-only routes (health, model, metrics, the review page)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from steelseg.errors import DataError
from steelseg.serve.guard import REFUSED
from steelseg.serve.service import ApiError, ServeConfig, Service

__all__ = ["ROUTES", "add_error_handlers", "add_feedback_route", "add_info_routes", "add_middleware",
           "add_predict_routes", "add_queue_routes"]

STATIC = Path(__file__).with_name("static")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/tiff", "image/x-ms-bmp", "application/octet-stream")
ROUTES = {"/v1/predict", "/v1/predict/batch", "/v1/feedback", "/v1/queue", "/v1/model", "/health", "/ready", "/metrics",
          "/"}


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers JSON ``{"error": ...}``; a bug is a 500 that leaves the worker up."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # the client left, or the guard refused the body and answered itself (413 / 408): this response is
        # not sent, but the metrics count the status the client got
        status = request.scope.get("state", {}).get(REFUSED, 499)
        return JSONResponse({"error": "the client closed the request"}, status_code=status)

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


# The review page runs only its own files: no inline script, no script from elsewhere, no plugin, no framing.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def add_middleware(app: FastAPI, svc: Service, cfg: ServeConfig) -> None:
    """The API key on ``/v1/*`` (when set), and request counts and latency per route."""

    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        path = request.url.path
        route = path if path in ROUTES else "/v1/queue" if path.startswith("/v1/queue/") else "other"
        if (route.startswith("/v1/") or route == "/metrics") and cfg.api_key:  # metrics count defects per class
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
        if not path.startswith(("/docs", "/redoc")):  # the OpenAPI pages load their own scripts
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response


async def _one_image(request: Request) -> tuple[bytes, str]:
    ctype = _content_type(request)  # the body's size is bounded by the guard (steelseg.serve.guard)
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


def _predict_items(svc: Service, items: list[tuple[bytes, str]]) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    images = [svc.decode(data, name) for data, name in items]
    t1 = time.perf_counter()
    preds, bundle = svc.predict_tagged(images)
    t2 = time.perf_counter()
    timings = {"decode": (t1 - t0) / len(items), "predict": (t2 - t1) / len(items)}
    return [svc.describe(p, im, timings, bundle) for p, im in zip(preds, images)]


def add_predict_routes(app: FastAPI, svc: Service, cfg: ServeConfig) -> None:
    @app.post("/v1/predict", summary="Predict one image (raw body or multipart field 'file')")
    async def predict(request: Request) -> JSONResponse:
        item = await _one_image(request)
        return JSONResponse((await run_in_threadpool(_predict_items, svc, [item]))[0])

    @app.post("/v1/predict/batch", summary="Predict several images (multipart field 'files')")
    async def predict_batch(request: Request) -> JSONResponse:
        if _content_type(request) != "multipart/form-data":
            raise ApiError(415, "send multipart/form-data with one or more 'files' fields")
        form = await request.form(max_files=cfg.max_batch + 1)
        uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not uploads:
            raise ApiError(400, "no 'files' fields in the request")
        if len(uploads) > cfg.max_batch:
            raise ApiError(413, f"{len(uploads)} images, above the batch limit of {cfg.max_batch}")
        items = [(await u.read(), u.filename or f"file{i}") for i, u in enumerate(uploads)]
        return JSONResponse({"results": await run_in_threadpool(_predict_items, svc, items)})


def _record_feedback(svc: Service, data: bytes, name: str, fields: dict[str, str | None]) -> dict[str, Any]:
    assert svc.feedback is not None
    image = svc.decode(data, name)
    verdicts = svc.feedback.parse(fields["verdicts"] or "")
    drawn = None if fields.get("masks") is None else svc.feedback.parse_masks(fields["masks"] or "", image.shape[:2])
    pred = svc.predict([image])[0]  # the same prediction the person saw (deterministic)
    result = svc.feedback.add(data, name, pred.masks, verdicts, drawn, fields.get("reviewer"))
    for cname, v in verdicts.items():
        svc.metrics.feedback.labels(cname, v).inc()
    if svc.queue is not None:
        svc.queue.mark_sent(data, result["stored"])
    return result


def add_feedback_route(app: FastAPI, svc: Service) -> None:
    @app.post("/v1/feedback", summary="A person's verdicts (and corrected masks) on a prediction; appended to the "
              "feedback folder")
    async def feedback(request: Request) -> JSONResponse:
        if svc.feedback is None:
            raise ApiError(404, "feedback is off; start the service with --feedback DIR")
        if _content_type(request) != "multipart/form-data":
            raise ApiError(415, "send multipart/form-data with 'file' (the image), 'verdicts' (JSON) and optionally "
                                "'masks' (JSON of Kaggle RLE per class) and 'reviewer'")
        form = await request.form()
        upload, raw = form.get("file"), form.get("verdicts")
        if upload is None or isinstance(upload, str) or not isinstance(raw, str):
            raise ApiError(400, "feedback needs a 'file' field (the image) and a 'verdicts' field (JSON)")
        fields: dict[str, str | None] = {"verdicts": raw}
        for key in ("masks", "reviewer"):
            value = form.get(key)
            if value is not None and not isinstance(value, str):
                raise ApiError(400, f"'{key}' must be a text field")
            fields[key] = value
        data, name = await upload.read(), upload.filename or "upload"
        try:
            return JSONResponse(await run_in_threadpool(_record_feedback, svc, data, name, fields))
        except DataError as exc:
            raise ApiError(400, str(exc)) from None


def _queue(svc: Service) -> Any:
    if svc.queue is None:
        raise ApiError(404, "no review queue; start the service with --queue DIR")
    return svc.queue


def _queue_state(svc: Service, budget_s: float) -> dict[str, Any]:
    q = _queue(svc)
    pending = q.refresh(budget_s)
    return {"items": q.items(), "pending": pending, **q.summary()}


def add_queue_routes(app: FastAPI, svc: Service) -> None:
    @app.get("/v1/queue", summary="The review queue: unsent images, least certain first, with why each is there")
    async def queue(budget_s: float = 2.0) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(_queue_state, svc, min(max(budget_s, 0.0), 30.0)))

    @app.get("/v1/queue/{item_id}", summary="One queued image's bytes, by its id")
    def queue_image(item_id: str) -> FileResponse:
        path = _queue(svc).path(item_id)
        if path is None:
            raise ApiError(404, f"no queued image {item_id!r}")
        return FileResponse(path, filename=path.name)

    @app.post("/v1/queue", summary="Add images to the review queue (multipart field 'files')")
    async def queue_add(request: Request) -> JSONResponse:
        q = _queue(svc)
        if _content_type(request) != "multipart/form-data":
            raise ApiError(415, "send multipart/form-data with one or more 'files' fields")
        form = await request.form(max_files=svc.cfg.max_batch + 1)
        uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not uploads or len(uploads) > svc.cfg.max_batch:
            raise ApiError(400 if not uploads else 413, f"send 1 to {svc.cfg.max_batch} 'files' fields")
        ids = []
        for u in uploads:
            data, name = await u.read(), u.filename or "upload"
            svc.decode(data, name)  # a broken image is refused here, not found later in the queue
            ids.append(q.add(data, name))
        return JSONResponse({"added": ids})


def _model_info(svc: Service, cfg: ServeConfig) -> dict[str, Any]:
    p = svc.predictor
    pp = p.pp
    return {"bundle": svc.bundle_id, "kind": svc.info.kind, "backend": p.backend, "tta": p.tta,
            "classes": [{"id": i + 1, "name": n, "pixel_threshold": pp.pixel_threshold[i] if pp else 0.5,
                         "min_area": pp.min_area[i] if pp else 0,
                         "min_component": pp.min_component[i] if pp else 0,
                         "gate": None if pp is None or pp.gate_threshold is None else pp.gate_threshold[i]}
                        for i, n in enumerate(p.class_names)],
            "gate_any": None if pp is None else pp.gate_any, "segmenters": len(p.segmenters),
            "classifiers": len(p.classifiers), "feedback": svc.feedback is not None, "queue": svc.queue is not None,
            "api_key_required": bool(cfg.api_key), "limits": {"max_batch": cfg.max_batch,
                                                               "max_bytes": cfg.max_bytes,
                                                               "max_pixels": cfg.max_pixels}}


def add_info_routes(app: FastAPI, svc: Service, cfg: ServeConfig) -> None:
    @app.get("/health", summary="The process is alive")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="The bundle is loaded and the service can predict")
    def ready() -> dict[str, Any]:
        return {"ready": True, "bundle": svc.bundle_id}

    @app.get("/v1/model", summary="Classes, thresholds, gates and the bundle id")
    def model() -> dict[str, Any]:
        return _model_info(svc, cfg)

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
