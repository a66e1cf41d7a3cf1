"""steelseg serve: the HTTP service and its review page."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from steelseg.cli.common import add_backend_args
from steelseg.errors import SteelsegError


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from steelseg.serve.app import ServeConfig, run
    except ImportError as exc:
        raise SteelsegError(f"the service needs the serve extra: pip install 'steelseg[serve]' ({exc})") from None
    if args.workers < 1 or args.max_batch < 1:
        raise SteelsegError("--workers and --max-batch must be >= 1")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who reaches it can use it",
              file=sys.stderr)
    if args.max_queue < 1 or args.body_timeout <= 0 or args.shutdown_timeout < 0:
        raise SteelsegError("--max-queue must be >= 1, --body-timeout > 0 and --shutdown-timeout >= 0")
    feedback = args.feedback
    if args.queue and not feedback:
        feedback = args.queue / "reviewed"
        print(f"reviewed images go to {feedback} (choose another folder with --feedback)", flush=True)
    if args.queue and not args.queue.is_dir():
        raise SteelsegError(f"--queue {args.queue}: no such folder; create it and put line images in it "
                            "(or upload them on the review page)")
    from steelseg.cli.line import resolve_bundle

    bundle, follow = resolve_bundle(str(args.bundle), args.registry)
    cfg = ServeConfig(bundle, args.api_key or os.environ.get("STEELSEG_API_KEY"),
                      str(feedback) if feedback else None, queue=str(args.queue) if args.queue else None,
                      queue_random_every=args.queue_random_every, max_batch=args.max_batch,
                      max_bytes=args.max_mb * 1024 * 1024, backend=args.backend, threads=args.threads,
                      max_queue=args.max_queue, body_timeout=args.body_timeout,
                      shutdown_timeout=args.shutdown_timeout, follow=follow, registry=args.registry,
                      check_every=args.check_every)
    print(f"serving {args.bundle} on http://{args.host}:{args.port} (review page /, API docs /docs)", flush=True)
    run(cfg, args.host, args.port, args.workers)
    return 0


def register(sub: Any) -> None:
    """Add this family's sub-commands to ``steelseg``'s sub-parsers."""
    p = sub.add_parser("serve", help="run the HTTP service with a review page (FastAPI)",
                       description="Serve BUNDLE over HTTP: POST /v1/predict (one image), /v1/predict/batch, "
                                   "/v1/feedback; GET /health, /ready, /v1/model, /metrics (Prometheus), /docs "
                                   "(OpenAPI) and the review page at /. Binds to 127.0.0.1 unless told otherwise.",
                       epilog="examples:\n  steelseg serve bundles/seg-int8 --feedback data/feedback\n"
                              "  steelseg serve bundles/seg --queue line/today --feedback data/feedback\n"
                              "  STEELSEG_API_KEY=secret steelseg serve bundles/seg --host 0.0.0.0 --workers 2\n"
                              "  curl -F file=@strip.jpg -H 'X-API-Key: secret' http://127.0.0.1:8000/v1/predict",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder (PyTorch or ONNX), or models:/LINE@champion (the registry's "
                   "champion, followed: see --check-every)")
    p.add_argument("--registry", default=None, metavar="URI", help="MLflow registry of a models:/ bundle")
    p.add_argument("--check-every", type=float, default=30.0, metavar="S",
                   help="models:/...@champion: seconds between looks for a newly promoted version, which takes over "
                        "once loaded and checked, without dropping a request")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each loads the bundle once")
    p.add_argument("--api-key", default=None, help="require this key (X-API-Key header) on /v1/* and /metrics; "
                   "or set $STEELSEG_API_KEY")
    p.add_argument("--feedback", type=Path, default=None, help="append reviewed images to this Kaggle-layout folder")
    p.add_argument("--queue", type=Path, default=None, help="review queue: the page shows the images of this folder "
                   "(and uploads) least certain first, with why each is there; reviewed ones go to --feedback "
                   "(default QUEUE/reviewed)")
    p.add_argument("--queue-random-every", type=int, default=10, help="every Nth place of the queue is an image "
                   "drawn at random, so reviewers also see confident ones (default 10; 0: none)")
    p.add_argument("--max-batch", type=int, default=16, help="most images in one batch request (default 16)")
    p.add_argument("--max-mb", type=int, default=32, help="largest image in MB (default 32); a request body may "
                   "hold --max-batch of them, counted while it streams in")
    p.add_argument("--max-queue", type=int, default=16, help="requests in flight per worker before new ones get "
                   "503 with Retry-After (default 16)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request body may take to arrive, "
                   "then 408 (default 30)")
    p.add_argument("--shutdown-timeout", type=int, default=10, help="seconds a graceful shutdown (SIGTERM) waits "
                   "for requests in flight (default 10)")
    add_backend_args(p)
    p.set_defaults(func=cmd_serve)
