"""The service's bounds (reliability round 3): bodies counted while they stream in and refused at once when
declared too large, a stalled upload timed out, a bounded queue (503 + Retry-After), a graceful shutdown
that a slow client cannot block, only the formats the readers take, and /metrics behind the key."""

from __future__ import annotations

import io
import json
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from steelseg.data import open_dataset  # noqa: E402
from steelseg.serve.app import ServeConfig, create_app  # noqa: E402

from .conftest import serving, tiny_bundle_at  # noqa: E402

NAMES = ["a", "b"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle_at(tmp_path_factory.mktemp("limits"), NAMES)


def _png(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


STRIP = np.random.default_rng(0).integers(0, 256, (64, 96), dtype=np.uint8)


# ---- in process --------------------------------------------------------------------------------------
def test_metrics_need_the_api_key(bundle) -> None:
    c = TestClient(create_app(ServeConfig(str(bundle), api_key="s3cret")))
    r = c.get("/metrics")
    assert r.status_code == 401 and "API key" in r.json()["error"]
    ok = c.get("/metrics", headers={"X-API-Key": "s3cret"})
    assert ok.status_code == 200 and 'steelseg_requests_total{route="/metrics",status="401"}' in ok.text
    assert TestClient(create_app(ServeConfig(str(bundle)))).get("/metrics").status_code == 200  # no key set


def test_only_what_the_readers_take_is_accepted_for_predict_and_feedback(bundle, tmp_path) -> None:
    c = TestClient(create_app(ServeConfig(str(bundle), feedback=str(tmp_path / "fb"))))
    gif = _png(STRIP, "GIF")
    frames = [Image.fromarray(STRIP), Image.fromarray(255 - STRIP)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    verdicts = json.dumps({n: "absent" for n in NAMES})
    for data, name, message in ((gif, "x.gif", "GIF image"), (buf.getvalue(), "pages.tif", "2 frames")):
        r = c.post("/v1/predict", files={"file": (name, data, "application/octet-stream")})
        assert r.status_code == 400 and message in r.json()["error"], r.text
        r = c.post("/v1/feedback", files={"file": (name, data, "image/gif")}, data={"verdicts": verdicts})
        assert r.status_code == 400 and message in r.json()["error"], r.text
    png = _png(STRIP)
    pred = c.post("/v1/predict", files={"file": ("x.png", png, "image/png")}).json()
    verdicts = json.dumps({k["name"]: "right" if k["present"] else "absent" for k in pred["classes"]})
    assert c.post("/v1/feedback", files={"file": ("x.png", png, "image/png")}, data={"verdicts": verdicts}).status_code \
        == 200
    assert len(open_dataset(tmp_path / "fb").table) == 1  # the folder still reads, with only the PNG in it


# ---- a real server -------------------------------------------------------------------------------------
@pytest.fixture()
def server(bundle, tmp_path):
    with serving(bundle, "--feedback", str(tmp_path / "fb"), "--max-mb", "1", "--max-batch", "2", "--max-queue", "1",
                 "--body-timeout", "2", "--shutdown-timeout", "2") as running:
        yield running


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _response(s: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], str]:
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    try:
        while len(body) < int(headers.get("content-length", 0)):
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    except OSError:
        pass
    return int(lines[0].split()[1]), headers, body.decode(errors="replace")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.parametrize("route", ["/v1/predict", "/v1/predict/batch", "/v1/feedback"])
def test_a_declared_length_over_the_limit_is_refused_before_reading(server, route) -> None:
    port, _ = server
    s = _connect(port)
    s.sendall(f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
              "Content-Length: 2000000000\r\n\r\n".encode())  # 2 GB declared, not a byte sent
    t0 = time.time()
    status, _, body = _response(s)
    assert status == 413 and "above the limit" in body, body
    assert time.time() - t0 < 5
    s.close()


def test_a_chunked_body_is_counted_while_it_streams(server) -> None:
    port, proc = server
    before = _peak_rss_mb(proc.pid)
    s = _connect(port)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"\x89PNG" + b"0" * 65532
    sent = 0
    try:
        for _ in range(640):  # 40 MB against a limit of about 2 MB
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except OSError:  # the server answered and closed: what we want
        pass
    status, _, body = _response(s)
    assert status == 413 and "above the limit" in body, body
    assert sent < 40 * 2 ** 20, "the server read the whole 40 MB"
    assert _peak_rss_mb(proc.pid) - before < 30  # held in memory: at most the limit, not the body
    s.close()


def test_a_stalled_upload_times_out_and_the_queue_is_bounded(server) -> None:
    port, _ = server
    slow = _connect(port)
    slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                 b"\x89PNG")  # 4 of 5000 bytes, then nothing: it holds the one place in the queue
    time.sleep(0.5)
    other = _connect(port)
    other.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 4\r\n\r\n\x89PNG")
    status, headers, body = _response(other)
    assert status == 503 and headers.get("retry-after") == "1" and "busy" in body, (status, body)
    t0 = time.time()
    status, _, body = _response(slow, timeout=15)
    assert status == 408 and "did not arrive within 2 s" in body, body
    assert time.time() - t0 < 6


def test_a_slow_client_does_not_block_a_graceful_shutdown(server) -> None:
    port, proc = server
    slow = _connect(port)
    slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                 b"\x89PNG")
    time.sleep(0.5)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert time.time() - t0 < 10, "the shutdown waited on the slow client"
    slow.close()
