"""Load on the inference service: `steelseg serve` on loopback, bounded concurrent clients.

Starts the service on 127.0.0.1 with a small bundle (a tiny U-Net, random weights: the model is
not what is measured here, the service is), then
  phase 1: N clients post 256x1600 strips to /v1/predict for D seconds;
  phase 2: the same, with one bad request in five (empty body, a non-image, a truncated JPEG,
           a wrong content type): every good request must still succeed.
Prints requests/s, p50/p95/p99 latency and error counts; stops by itself.
Usage: python bench/serve_load.py [--clients 8] [--seconds 30] [--workers 1]
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_bundle(root: Path, encoder: str) -> Path:
    import torch

    from steelseg.inference.bundle import write_bundle
    from steelseg.models import create_segmenter
    from steelseg.models.checkpoint import save_weights, write_model_json
    from steelseg.schema import InputMeta, ModelMeta, ModelSpec

    torch.manual_seed(0)
    kw = {"decoder_channels": [16, 16, 8, 8, 8]} if encoder == "tu-test_resnet" else {}
    seg = root / "seg"
    seg.mkdir(parents=True)
    save_weights(create_segmenter("unet", encoder, 4, 1, **kw), seg / "best.safetensors")
    write_model_json(seg, ModelMeta(ModelSpec("segment", encoder, 4, 1, "unet", kwargs=kw),
                                    ["c1", "c2", "c3", "c4"], InputMeta()))
    return write_bundle(root / "bundle", [seg], kind="plain")


def jpeg(seed: int) -> bytes:
    from PIL import Image

    img = np.random.default_rng(seed).integers(0, 256, (256, 1600), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def run_phase(url: str, clients: int, seconds: float, bad_every: int, images: list[bytes]) -> dict:
    import httpx

    good = images[0]
    bad = [(b"", "image/jpeg"), (b"not an image", "image/png"), (good[: len(good) // 3], "image/jpeg"),
           (b"abc", "text/plain")]
    lat: list[float] = []
    stats = {"ok": 0, "good_failed": 0, "bad_4xx": 0, "bad_other": 0, "5xx": 0}
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        n = 0
        with httpx.Client(timeout=60) as c:
            while time.perf_counter() < stop:
                n += 1
                is_bad = bad_every and n % bad_every == 0
                body, ctype = bad[(n // max(bad_every, 1)) % len(bad)] if is_bad else (images[(k + n) % len(images)],
                                                                                      "image/jpeg")
                t0 = time.perf_counter()
                try:
                    r = c.post(url + "/v1/predict", content=body, headers={"content-type": ctype})
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                dt = time.perf_counter() - t0
                with lock:
                    if status >= 500 or status == 0:
                        stats["5xx"] += 1
                    if is_bad:
                        stats["bad_4xx" if 400 <= status < 500 else "bad_other"] += 1
                    elif status == 200:
                        stats["ok"] += 1
                        lat.append(dt)
                    else:
                        stats["good_failed"] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = np.percentile(lat, [50, 95, 99]) * 1000 if lat else [float("nan")] * 3
    total = sum(v for k, v in stats.items() if k != "5xx")
    return {"wall": wall, "rps": total / wall, "good_rps": stats["ok"] / wall, "p50": q[0], "p95": q[1],
            "p99": q[2], **stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--encoder", default="tu-test_resnet")
    args = ap.parse_args()
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="steelseg-serve-bench-"))
    bundle = make_bundle(tmp, args.encoder)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "steelseg.cli", "serve", str(bundle), "--port", str(port),
                             "--workers", str(args.workers)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise SystemExit("service did not become ready")
        images = [jpeg(s) for s in range(8)]
        print(f"steelseg serve on {url}, {args.workers} worker(s), U-Net {args.encoder}; {args.clients} clients, "
              f"{args.seconds:.0f} s per phase, 256x1600 JPEG strips")
        print(f"{'phase':<22}{'req/s':>8}{'good/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
              f"{'ok':>7}{'good failed':>13}{'bad 4xx':>9}{'bad other':>11}{'5xx':>6}")
        failures = 0
        for name, every in (("all good", 0), ("1 bad in 5", 5)):
            r = run_phase(url, args.clients, args.seconds, every, images)
            failures += r["good_failed"] + r["5xx"] + r["bad_other"]
            print(f"{name:<22}{r['rps']:>8.1f}{r['good_rps']:>8.1f}{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}"
                  f"{r['ok']:>7}{r['good_failed']:>13}{r['bad_4xx']:>9}{r['bad_other']:>11}{r['5xx']:>6}")
        alive = httpx.get(url + "/health", timeout=5).status_code == 200
        print(f"service healthy after the load: {alive}")
        if failures or not alive:
            raise SystemExit(f"{failures} request(s) failed that should not have")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
