"""The HTTP service: every endpoint with a tiny bundle, every bad input, API key, feedback loop,
and the review page in headless Chromium."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from steelseg.cli import main  # noqa: E402
from steelseg.data import rle  # noqa: E402
from steelseg.data.open import open_dataset  # noqa: E402
from steelseg.inference.bundle import write_bundle  # noqa: E402
from steelseg.inference.postprocess import PostProcess  # noqa: E402
from steelseg.inference.predictor import Predictor  # noqa: E402
from steelseg.models import create_classifier, create_segmenter  # noqa: E402
from steelseg.models.checkpoint import save_weights, write_model_json  # noqa: E402
from steelseg.schema import InputMeta, ModelMeta, ModelSpec  # noqa: E402
from steelseg.serve.app import ServeConfig, create_app  # noqa: E402

from .conftest import serving  # noqa: E402

NAMES = ["pits", "streaks", "scratches", "blotches"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny random-init segmenter + classifier; thresholds set so some classes are found."""
    import torch

    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    seg = root / "seg"
    seg.mkdir()
    kw = {"decoder_channels": [8, 8, 8, 8, 8]}
    save_weights(create_segmenter("unet", "tu-test_resnet", 4, 1, **kw), seg / "best.safetensors")
    write_model_json(seg, ModelMeta(ModelSpec("segment", "tu-test_resnet", 4, 1, "unet", kwargs=kw), NAMES,
                                    InputMeta()))
    cls = root / "cls"
    cls.mkdir()
    save_weights(create_classifier("test_resnet", 4, 1), cls / "best.safetensors")
    write_model_json(cls, ModelMeta(ModelSpec("classify", "test_resnet", 4, 1), NAMES, InputMeta()))
    probe = Predictor.from_models([seg]).predict([np.full((64, 320), 128, np.uint8)])[0].probs
    thr = [float(np.quantile(probe[..., c], 0.9)) for c in range(4)]  # about 10% of pixels per class
    return write_bundle(root / "bundle", [seg], [cls], PostProcess(thr, [0] * 4, None, [0.0] * 4, None))


def png_bytes(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, fmt)
    return buf.getvalue()


def strip(seed: int = 0, shape: tuple[int, int] = (64, 320)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture()
def client(bundle, tmp_path) -> TestClient:
    return TestClient(create_app(ServeConfig(str(bundle), feedback=str(tmp_path / "fb"), max_batch=3,
                                             max_bytes=2_000_000, max_pixels=4_000_000)))


def test_predict_matches_predictor_and_metrics_count(client, bundle) -> None:
    img = strip(1)
    r = client.post("/v1/predict", files={"file": ("a.png", png_bytes(img), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    want = Predictor.from_bundle(bundle).predict([img])[0]
    assert body["image"] == {"width": 320, "height": 64} and body["bundle"].startswith("bundle-")
    assert [c["name"] for c in body["classes"]] == NAMES
    for c, cls in enumerate(body["classes"]):
        np.testing.assert_array_equal(rle.decode(cls["rle"], (64, 320)), want.masks[..., c])
        assert cls["area"] == int(want.masks[..., c].sum()) and cls["present"] == bool(cls["area"])
        assert cls["score"] == pytest.approx(float(want.gate[c]), abs=1e-6)
        assert sum(b[4] for b in cls["boxes"]) == cls["area"]
    assert any(c["present"] for c in body["classes"])
    raw = client.post("/v1/predict", content=png_bytes(img), headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["classes"] == body["classes"]
    metrics = client.get("/metrics").text
    assert 'steelseg_requests_total{route="/v1/predict",status="200"} 2.0' in metrics
    assert "steelseg_images_total 2.0" in metrics and "steelseg_defects_total" in metrics
    # the drift gauges watch shows too (deploy/prometheus/steelseg-alerts.yml reads them)
    assert "steelseg_input_brightness " in metrics and "# TYPE steelseg_drift_level gauge" in metrics


def test_batch_health_ready_model_docs(client) -> None:
    files = [("files", (f"{i}.png", png_bytes(strip(i)), "image/png")) for i in range(3)]
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True
    model = client.get("/v1/model").json()
    assert [c["name"] for c in model["classes"]] == NAMES and model["limits"]["max_batch"] == 3
    assert client.get("/docs").status_code == 200 and "/v1/predict" in client.get("/openapi.json").text
    page = client.get("/")
    assert page.status_code == 200 and "steelseg review" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_modes_are_converted(client) -> None:
    ramp = np.linspace(0, 65535, 64 * 320).reshape(64, 320).astype(np.uint16)
    rgba = np.zeros((64, 320, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 90, 255
    pal = Image.fromarray(strip(3)).convert("P")
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    for data in (png_bytes(ramp), png_bytes(rgba, mode="RGBA"), buf.getvalue(), png_bytes(strip(4), "JPEG")):
        r = client.post("/v1/predict", files={"file": ("x", data, "application/octet-stream")})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("case,status,message", [
    ("empty", 400, "empty body"),
    ("text", 400, "not a readable image"),
    ("truncated", 400, "truncated"),
    ("huge", 413, "above the limit"),
    ("bytes", 413, "above the limit of 2000000"),
    ("tiny", 400, "at least 16x16"),
    ("ctype", 415, "content type 'text/plain'"),
    ("batch", 413, "above the batch limit of 3"),
    ("nofile", 400, "without a file field"),
])
def test_bad_requests_get_4xx_json_and_service_stays_up(client, case, status, message) -> None:
    jpg = png_bytes(strip(5), "JPEG")
    if case == "empty":
        r = client.post("/v1/predict", content=b"", headers={"content-type": "image/png"})
    elif case == "text":
        r = client.post("/v1/predict", files={"file": ("a.png", b"hello, not an image", "image/png")})
    elif case == "truncated":
        r = client.post("/v1/predict", files={"file": ("a.jpg", jpg[: len(jpg) // 2], "image/jpeg")})
    elif case == "huge":  # refused from the header: 3000x3000 > 4 Mpx, a small PNG
        r = client.post("/v1/predict", files={"file": ("a.png", png_bytes(np.zeros((3000, 3000), np.uint8)),
                                                       "image/png")})
    elif case == "bytes":
        r = client.post("/v1/predict", content=b"\xff\xd8" + b"0" * 2_100_000, headers={"content-type": "image/jpeg"})
    elif case == "tiny":
        r = client.post("/v1/predict", files={"file": ("a.png", png_bytes(np.zeros((8, 8), np.uint8)), "image/png")})
    elif case == "ctype":
        r = client.post("/v1/predict", content=b"abc", headers={"content-type": "text/plain"})
    elif case == "batch":
        files = [("files", (f"{i}.png", png_bytes(strip(i)), "image/png")) for i in range(4)]
        r = client.post("/v1/predict/batch", files=files)
    else:
        r = client.post("/v1/predict", files={"other": ("a.png", jpg, "image/png")})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    ok = client.post("/v1/predict", files={"file": ("a.png", png_bytes(strip(6)), "image/png")})
    assert ok.status_code == 200  # the worker is healthy after the bad request


def test_api_key(bundle) -> None:
    c = TestClient(create_app(ServeConfig(str(bundle), api_key="s3cret")))
    data = {"file": ("a.png", png_bytes(strip(7)), "image/png")}
    assert c.post("/v1/predict", files=data).status_code == 401
    r = c.post("/v1/predict", files=data, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert c.post("/v1/predict", files=data, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert c.post("/v1/predict", files=data, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/v1/model").status_code == 401 and c.get("/health").status_code == 200
    assert c.get("/metrics").status_code == 401  # per-class defect counts need the key too
    assert 'route="/v1/predict",status="401"' in c.get("/metrics", headers={"X-API-Key": "s3cret"}).text


def test_feedback_folder_loads_as_a_dataset(client, tmp_path, capsys) -> None:
    img = strip(8)
    data = png_bytes(img)
    pred = client.post("/v1/predict", files={"file": ("a.png", data, "image/png")}).json()
    verdicts = {c["name"]: ("right" if c["present"] else "absent") for c in pred["classes"]}
    first = next(c["name"] for c in pred["classes"] if c["present"])
    verdicts[first] = "wrong"  # a person rejects one predicted class
    r = client.post("/v1/feedback", files={"file": ("a.png", data, "image/png")},
                    data={"verdicts": json.dumps(verdicts)})
    assert r.status_code == 200 and r.json()["stored"] == "train", r.text
    other = png_bytes(strip(9))
    pred2 = client.post("/v1/predict", files={"file": ("b.png", other, "image/png")}).json()
    missed = {c["name"]: ("right" if c["present"] else "missed") for c in pred2["classes"]}
    r2 = client.post("/v1/feedback", files={"file": ("b.png", other, "image/png")},
                     data={"verdicts": json.dumps(missed)})
    assert r2.status_code == 200
    if any(v == "missed" for v in missed.values()):  # no mask to learn from: kept out of train.csv
        assert r2.json()["stored"] == "needs_masks" and (tmp_path / "fb" / "needs_masks").is_dir()
    bad = client.post("/v1/feedback", files={"file": ("a.png", data, "image/png")},
                      data={"verdicts": json.dumps({"pits": "maybe"})})
    assert bad.status_code == 400 and "verdict" in bad.json()["error"]
    fb = tmp_path / "fb"
    ds = open_dataset(fb)
    assert len(ds.table) == 1 + (r2.json()["stored"] == "train") and ds.class_names == NAMES
    image_id = r.json()["image_id"]
    mask = ds.load_mask(image_id)
    for c, cls in enumerate(pred["classes"]):
        want = rle.decode(cls["rle"], (64, 320)) if verdicts[cls["name"]] == "right" else np.zeros((64, 320))
        np.testing.assert_array_equal(mask[..., c], want)
    assert main(["info", str(fb)]) == 0
    assert f"images      {len(ds.table)}" in capsys.readouterr().out


# ---- the page in a real browser ---------------------------------------------------------------
@pytest.fixture()
def server(bundle, tmp_path):
    with serving(bundle, "--feedback", str(tmp_path / "fb")) as (port, _):
        yield f"http://127.0.0.1:{port}", tmp_path / "fb"


def _browser(dpr: int = 1):
    """Headless Debian chromium through chromium-driver (skips when absent), at device pixel ratio ``dpr``."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    if not chromium or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
              f"--force-device-scale-factor={dpr}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_review_page_in_chromium(server, severstal_or_synth, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, fb = server
    browser = _browser()
    try:
        browser.get(url + "/")
        browser.find_element(By.ID, "file").send_keys(str(severstal_or_synth))
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "canvas").get_attribute("data-drawn") == "1")
        rows = browser.find_elements(By.CSS_SELECTOR, "#legend tbody tr")
        assert [r.get_attribute("data-cls") for r in rows] == NAMES
        # the canvas holds the image (not blank): pixel values vary
        spread = browser.execute_script(
            "const c = document.getElementById('canvas'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let lo = 255, hi = 0;"
            "for (let i = 0; i < d.length; i += 4 * 97) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }"
            "return [c.width, c.height, hi - lo];")
        assert spread[0] > 0 and spread[2] > 20, spread
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "review_page.png"))
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: "stored" in b.find_element(By.ID, "feedback-status").text)
        assert "stored in train" in browser.find_element(By.ID, "feedback-status").text
    finally:
        browser.quit()
    ds = open_dataset(fb)
    assert len(ds.table) == 1
    assert main(["info", str(fb)]) == 0


@pytest.fixture()
def severstal_or_synth(tmp_path) -> Path:
    from tests.conftest import SHARED

    real = SHARED / "severstal_real"
    imgs = sorted((real / "train_images").glob("*.jpg")) if real.is_dir() else []
    if imgs:
        return imgs[0]
    from steelseg.data.synth import SynthConfig, make_dataset

    d = make_dataset(tmp_path / "s", SynthConfig(images=1, seed=5, height=128, width=800))
    return next((d / "train_images").iterdir())


def test_serve_command_help() -> None:
    out = subprocess.run([sys.executable, "-m", "steelseg.cli", "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--api-key" in out.stdout and "127.0.0.1" in out.stdout
