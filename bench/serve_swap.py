"""A hot swap under load (issue #40 goal: no request lost): `steelseg serve models:/LINE@champion` answers clients
that post without pause while a new version is promoted in the registry; the service must pick it up within its
--check-every, answer every request meanwhile, and never go back to the old model once the new one answered.

The two versions are known without training: v1 the all-empty bundle (finds nothing), v2 a tiny U-Net whose pixel
threshold is 0 (finds everything), so each answer says which model made it (its `bundle` id, and whether it found
the defect). Prints one JSON line: requests, failures (non-200 or no answer), the seconds from the promotion to
the first answer of v2, answers of v1 after a client's first v2 answer (must be 0), and latency percentiles
before, around and after the swap.

python bench/serve_swap.py [--clients 4] [--seconds 60] [--check-every 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bundles(root: Path) -> tuple[Path, Path]:
    import torch

    from steelseg.inference import write_bundle
    from steelseg.inference.postprocess import PostProcess
    from steelseg.models import create_segmenter, save_weights, write_model_json
    from steelseg.schema import InputMeta, ModelMeta, ModelSpec

    torch.manual_seed(0)
    kw = {"decoder_channels": [8, 8, 8, 8, 8]}
    seg = root / "seg"
    seg.mkdir(parents=True)
    save_weights(create_segmenter("unet", "tu-test_resnet", 1, 1, **kw), seg / "best.safetensors")
    write_model_json(seg, ModelMeta(ModelSpec("segment", "tu-test_resnet", 1, 1, "unet", kwargs=kw), ["defect"],
                                    InputMeta()))
    everything = write_bundle(root / "all", [seg], pp=PostProcess([0.0], [0]), kind="plain")
    nothing = write_bundle(root / "none", [], [], None, ["defect"], kind="all-empty")
    return nothing, everything


def _gate(root: Path) -> Path:
    from PIL import Image

    from steelseg.data import rle

    (root / "train_images").mkdir(parents=True)
    rows = [["ImageId", "ClassId", "EncodedPixels"]]
    for k in range(4):
        Image.fromarray(np.full((32, 48), 60 + 20 * k, np.uint8)).save(root / "train_images" / f"g{k}.png")
        rows.append([f"g{k}.png", 1, rle.encode(np.ones((32, 48), np.uint8))])
    with open(root / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    (root / "classes.txt").write_text("defect\n")
    return root


def _start(url_port: int, reg: str, check_every: float, env: dict[str, str], log: Path) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "steelseg.cli", "serve", "models:/line@champion", "--registry", reg,
           "--check-every", str(check_every), "--port", str(url_port)]
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{url_port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the service did not become ready:\n" + log.read_text()[-3000:])


def _client(url: str, body: bytes, stop: threading.Event, out: list[tuple[float, int, str, bool, float]]) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = c.post("/v1/predict", files={"file": ("a.png", body, "image/png")})
                ans = r.json() if r.status_code == 200 else {}
                out.append((t0, r.status_code, ans.get("bundle", ""), bool(ans and ans["classes"][0]["present"]),
                            time.perf_counter() - t0))
            except httpx.HTTPError:
                out.append((t0, 0, "", False, time.perf_counter() - t0))


def run_swap(work: Path, clients: int = 4, seconds: float = 60.0, check_every: float = 1.0) -> dict:
    """The bench; returns its numbers (the test runs it small)."""
    from PIL import Image

    from steelseg.line import registry

    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "STEELSEG_CACHE": str(work / "cache")}
    os.environ["STEELSEG_CACHE"] = env["STEELSEG_CACHE"]
    reg = f"sqlite:///{work / 'reg' / 'mlflow.db'}"
    nothing, everything = _bundles(work / "bundles")
    gate = _gate(work / "gate")
    v1, v2 = registry.register(nothing, "line", reg), registry.register(everything, "line", reg)
    registry.promote("line", v1, [gate], uri=reg)
    buf = io.BytesIO()
    Image.fromarray(np.full((256, 1600), 90, np.uint8)).save(buf, format="PNG")
    port = _free_port()
    proc = _start(port, reg, check_every, env, work / "serve.log")
    stops, per_client = threading.Event(), [[] for _ in range(clients)]
    threads = [threading.Thread(target=_client, args=(f"http://127.0.0.1:{port}", buf.getvalue(), stops, o))
               for o in per_client]
    try:
        for t in threads:
            t.start()
        time.sleep(seconds / 3)
        registry.promote("line", v2, [gate], uri=reg)
        promoted = time.perf_counter()
        time.sleep(seconds * 2 / 3)
    finally:
        stops.set()
        for t in threads:
            t.join(timeout=60)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return _numbers(per_client, promoted, check_every, work / "serve.log")


def _numbers(per_client: list[list[tuple]], promoted: float, check_every: float, log: Path) -> dict:
    answers = sorted(a for c in per_client for a in c)
    new = [a for a in answers if a[3]]
    back = 0
    for c in per_client:  # once a client saw v2, every later answer must be v2
        first = next((i for i, a in enumerate(c) if a[3]), len(c))
        back += sum(1 for a in c[first:] if a[1] == 200 and not a[3])
    lat = {"before": [a[4] for a in answers if a[0] < promoted and a[1] == 200],
           "after": [a[4] for a in answers if new and a[0] >= new[0][0] + 1 and a[1] == 200]}
    pct = {k: [round(float(x) * 1000, 1) for x in np.percentile(v, [50, 99])] if v else None for k, v in lat.items()}
    return {"requests": len(answers), "failed": sum(1 for a in answers if a[1] != 200),
            "statuses": sorted({a[1] for a in answers}), "bundles": len({a[2] for a in answers if a[2]}),
            "switch_s": round(new[0][0] - promoted, 2) if new else None, "check_every_s": check_every,
            "old_after_new": back, "latency_ms_p50_p99": pct,
            "switched_line": next((ln for ln in log.read_text().splitlines() if "switched to version" in ln), None)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--check-every", type=float, default=1.0)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="steelseg-swap-"))
    try:
        res = run_swap(work, args.clients, args.seconds, args.check_every)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res))
    return 0 if res["failed"] == 0 and res["switch_s"] is not None and res["old_after_new"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
