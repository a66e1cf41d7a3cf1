"""The HTTP service (``steelseg serve``): FastAPI app, review page, feedback into a training folder."""

from steelseg.serve.app import ServeConfig, create_app, run

__all__ = ["ServeConfig", "create_app", "run"]
