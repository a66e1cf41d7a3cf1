"""The inference service: a FastAPI app over one ``Predictor`` per worker, a review page, and a
feedback loop into a Kaggle-layout training folder.

Routes (``/v1/*``, feedback and ``/metrics`` need the API key when one is set):

* ``POST /v1/predict``: one image (multipart field ``file``, or the raw image as the body) -> per
  class its name, presence, classifier score, area, component boxes and Kaggle RLE mask.
* ``POST /v1/predict/batch``: several images (multipart field ``files``), up to ``max_batch``.
* ``POST /v1/feedback``: the image again with a person's verdict per class and, from the page's mask
  editor, the corrected masks (Kaggle RLE); the final masks are appended to the feedback folder
  (``train_images/`` + ``train.csv``, the model's and the final masks in ``reviews.jsonl``).
* ``GET /v1/queue``, ``GET /v1/queue/{id}``, ``POST /v1/queue``: with ``--queue DIR``, the images to
  review, least certain first (:mod:`steelseg.serve.queue`).
* ``GET /health``, ``/ready``, ``/v1/model``, ``/metrics`` (Prometheus), ``/docs`` (OpenAPI), ``/``.

Every bad request is a 4xx JSON ``{"error": ...}``; a failed request leaves the worker healthy. Bodies
are bounded while they stream in, a stalled upload times out, and past ``max_queue`` requests in flight
new ones get 503 with ``Retry-After`` (:mod:`steelseg.serve.guard`).
Clients never pass file-system paths; bundles load without pickle (safetensors or ONNX).
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import FastAPI

from steelseg.inference.bundle import read_bundle
from steelseg.serve.guard import Guard, GuardLimits
from steelseg.serve.routes import (
    add_error_handlers,
    add_feedback_route,
    add_info_routes,
    add_middleware,
    add_predict_routes,
    add_queue_routes,
)
from steelseg.serve.service import ServeConfig, Service

__all__ = ["ServeConfig", "create_app", "run"]


def create_app(cfg: ServeConfig | None = None) -> Any:
    """The FastAPI app; with no ``cfg`` it reads what ``steelseg serve`` put in the environment."""
    cfg = cfg or ServeConfig.from_env()
    svc = Service(cfg)  # loaded before the first request: /ready is true once the app exists
    app = FastAPI(title="steelseg", version="1", description="Steel surface defect segmentation service. "
                  "Send an image to /v1/predict; the review page is at /.")
    app.state.service = svc
    add_error_handlers(app)
    add_middleware(app, svc, cfg)
    add_predict_routes(app, svc, cfg)
    add_feedback_route(app, svc)
    add_queue_routes(app, svc)
    add_info_routes(app, svc, cfg)
    app.add_middleware(Guard, limits=GuardLimits(cfg.body_limit, cfg.body_timeout, cfg.max_queue))  # outermost
    return app


def run(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Start uvicorn; each worker builds the app (and loads the bundle) once."""
    import uvicorn

    read_bundle(cfg.bundle)  # fail here, with a clear message, rather than in every worker
    os.environ["STEELSEG_SERVE_CONFIG"] = json.dumps(cfg.__dict__)
    uvicorn.run("steelseg.serve.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="info", timeout_graceful_shutdown=cfg.shutdown_timeout)
