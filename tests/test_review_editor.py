"""The review page's mask editor and queue in a real browser (Debian's chromium + chromium-driver, driven by
Selenium): strokes, eraser, undo / redo, wheel zoom and the screen-to-image transform (also at device pixel
ratio 2), sending the bitmap as RLE, a drawn missed class in train.csv, and the queue's order."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("selenium")

from steelseg.data import rle  # noqa: E402
from steelseg.data.reviews import read_reviews  # noqa: E402
from steelseg.inference.predictor import Predictor  # noqa: E402
from steelseg.inference.uncertainty import image_priority, queue_order  # noqa: E402

from .conftest import serving  # noqa: E402
from .test_review_loop import make_review_bundle  # noqa: E402
from .test_serve import _browser  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
H, W = 64, 320


def _strip(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 200, (H, W), dtype=np.uint8)
    img[:, rng.integers(0, W - 40):][:, :30] = rng.integers(0, 256)  # a band, so the images differ in kind
    return img


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("editor")
    bundle = make_review_bundle(root / "b")
    queue = root / "queue"
    queue.mkdir()
    for k in range(3):
        Image.fromarray(_strip(20 + k)).save(queue / f"line{k}.png")
    Image.fromarray(_strip(7)).save(root / "upload.png")
    with serving(bundle, "--feedback", str(root / "fb"), "--queue", str(queue)) as (port, _):
        yield {"url": f"http://127.0.0.1:{port}", "fb": root / "fb", "queue": queue, "bundle": bundle,
               "upload": root / "upload.png"}


def _open(browser, site, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(site["url"] + "/")
    # the queue above the editor fills in while its images are scored: wait, so the canvas no longer moves
    WebDriverWait(browser, 90).until(lambda b: b.execute_script(
        "const t = document.getElementById('queue-status').textContent;"
        " return t.includes('to review') && !t.includes('still being scored');"))
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 60).until(lambda b: b.execute_script(
        "return window.__editor.img !== null && document.getElementById('canvas').dataset.drawn === '1'"
        " && window.__editor.w > 0"))
    browser.execute_script("document.getElementById('canvas').scrollIntoView({block: 'center'})")


def _js(browser, expr: str):
    return browser.execute_script(f"return {expr};")


def _stroke(browser, points: list[tuple[int, int]]) -> None:
    """A pointer stroke through viewport points (left button down at the first, up at the last)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.mouse_button import MouseButton

    chain = ActionChains(browser, duration=0)
    act = ActionBuilder(browser, duration=0)
    act.pointer_action.move_to_location(*points[0])
    act.pointer_action.pointer_down(MouseButton.LEFT)
    for p in points[1:]:
        act.pointer_action.move_to_location(*p)
    act.pointer_action.pointer_up(MouseButton.LEFT)
    act.perform()
    del chain


def _to_screen(browser, x: float, y: float) -> tuple[int, int]:
    sx, sy = _js(browser, f"window.__editor.toScreen({x}, {y})")
    return int(round(sx)), int(round(sy))


def _expected_image_point(browser, client: tuple[int, int]) -> tuple[float, float]:
    """The inverse transform computed here, from the canvas's box and the editor's view."""
    rect = _js(browser, "document.getElementById('canvas').getBoundingClientRect().toJSON()")
    v = _js(browser, "window.__editor.view")
    return (client[0] - rect["left"] - v["ox"]) / v["scale"], (client[1] - rect["top"] - v["oy"]) / v["scale"]


def _capsule(points: list[list[float]], r: float) -> np.ndarray:
    """Distance of every pixel centre to the polyline ``points`` (image coordinates)."""
    ys, xs = np.mgrid[0:H, 0:W]
    px, py = xs + 0.5, ys + 0.5
    best = np.full((H, W), np.inf)
    pts = points if len(points) > 1 else points * 2
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        dx, dy = bx - ax, by - ay
        len2 = dx * dx + dy * dy
        t = np.clip(((px - ax) * dx + (py - ay) * dy) / len2, 0, 1) if len2 > 0 else np.zeros_like(px)
        best = np.minimum(best, np.hypot(ax + t * dx - px, ay + t * dy - py))
    return best


def _bitmap(browser, c: int) -> np.ndarray:
    return rle.decode(_js(browser, f"window.__editor.rle({c})"), (H, W)).astype(bool)


def _check_stroke_bitmap(browser, c: int, before: np.ndarray | None = None) -> np.ndarray:
    st = _js(browser, "window.__editor.lastStroke")
    dist = _capsule(st["points"], st["radius"])
    got = _bitmap(browser, c)
    inside, outside = dist <= st["radius"] - 1e-6, dist > st["radius"] + 1e-6
    want_on = bool(st["value"])
    assert (got[inside] == want_on).all(), "a pixel within the brush radius of the path was not painted"
    if before is not None:
        assert (got[outside] == before[outside]).all(), "a pixel beyond the brush radius changed"
    return got


def test_draw_erase_undo_redo_and_send(site) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        _open(browser, site, site["upload"])
        assert _js(browser, "window.__review.result.classes.map(c => c.present)") == [True, True, False, False]
        browser.find_element(By.TAG_NAME, "body").send_keys("3")  # scratches, a class the model did not find
        assert _js(browser, "window.__editor.current") == 2
        browser.find_element(By.ID, "opacity").click()  # any opacity: painting writes 0/1 whatever is shown
        _js(browser, "(window.__editor.radius = 3)")
        empty = _bitmap(browser, 2)
        assert not empty.any()
        path = [(40, 20), (120, 30), (200, 44), (260, 40)]  # image coordinates; fast moves far apart
        client = [_to_screen(browser, x, y) for x, y in path]
        _stroke(browser, client)
        first = _js(browser, "window.__editor.lastStroke.points[0]")
        assert first == pytest.approx(_expected_image_point(browser, client[0]), abs=1e-9)
        drawn = _check_stroke_bitmap(browser, 2, empty)
        assert drawn.sum() > 200 and _js(browser, "window.__editor.allBinary()")
        drawn_hash = _js(browser, "window.__editor.hash(2)")
        assert _js(browser, "document.querySelector('tr[data-cls=scratches] [data-verdict]').dataset.verdict") == "missed"
        # erase across the middle of the stroke
        browser.find_element(By.TAG_NAME, "body").send_keys("e")
        _js(browser, "(window.__editor.radius = 5)")
        _stroke(browser, [_to_screen(browser, 120, 5), _to_screen(browser, 125, 60)])
        erased = _check_stroke_bitmap(browser, 2, drawn)
        assert erased.sum() < drawn.sum() and (erased <= drawn).all()
        erased_hash = _js(browser, "window.__editor.hash(2)")
        # undo / redo: keys and buttons agree, and restore exact bitmaps
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, "z")
        assert _js(browser, "window.__editor.hash(2)") == drawn_hash
        browser.find_element(By.ID, "undo").click()
        assert not _bitmap(browser, 2).any()
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, Keys.SHIFT, "z")
        assert _js(browser, "window.__editor.hash(2)") == drawn_hash
        browser.find_element(By.ID, "redo").click()
        assert _js(browser, "window.__editor.hash(2)") == erased_hash
        np.testing.assert_array_equal(_bitmap(browser, 2), erased)
        page_rles = _js(browser, "[0, 1, 2, 3].map(c => window.__editor.rle(c))")
        browser.find_element(By.ID, "reviewer").send_keys("ana")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.set_window_size(1400, 1250)  # the editor and its legend in one picture
        browser.execute_script("window.__editor.fit(); document.getElementById('legend').scrollIntoView({block: 'end'})")
        browser.save_screenshot(str(ARTIFACTS / "review_editor.png"))
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 60).until(lambda b: "stored" in b.find_element(By.ID, "feedback-status").text
                                         or b.find_element(By.ID, "feedback-status").get_attribute("class") == "error")
        status = browser.find_element(By.ID, "feedback-status").text
        assert "stored in train" in status, status
    finally:
        browser.quit()
    image_id = status.split(" as ")[1].split()[0].rstrip(":")
    with open(site["fb"] / "train.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["ImageId"] == image_id]
    stored = {int(r["ClassId"]): r["EncodedPixels"] for r in rows}
    assert 3 in stored, "the drawn missed class is in train.csv"
    for c in range(4):
        want = rle.decode(page_rles[c], (H, W))
        got = rle.decode(stored.get(c + 1, ""), (H, W))
        np.testing.assert_array_equal(got, want)  # the server holds exactly the page's bitmap
    rec = read_reviews(site["fb"])[-1]
    assert rec["reviewer"] == "ana" and rec["classes"]["scratches"]["verdict"] == "missed"
    assert rec["classes"]["scratches"]["model_area"] == 0 and rec["classes"]["scratches"]["final_area"] > 0


@pytest.mark.parametrize("dpr", [1, 2])
def test_wheel_zoom_keeps_painting_at_the_inverse_transform(site, dpr) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    browser = _browser(dpr)
    try:
        _open(browser, site, site["upload"])
        assert _js(browser, "window.devicePixelRatio") == dpr
        canvas = browser.find_element(By.ID, "canvas")
        css_w = _js(browser, "document.getElementById('canvas').getBoundingClientRect().width")
        assert _js(browser, "document.getElementById('canvas').width") == round(css_w * dpr)
        fit_scale = _js(browser, "window.__editor.view.scale")
        assert fit_scale == pytest.approx(css_w / W)  # fitted to the width
        anchor = _to_screen(browser, 100, 30)
        before = _expected_image_point(browser, anchor)
        rect = _js(browser, "document.getElementById('canvas').getBoundingClientRect().toJSON()")
        off = (int(anchor[0] - rect["left"] - rect["width"] / 2), int(anchor[1] - rect["top"] - rect["height"] / 2))
        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas, *off), 0, -300).perform()
        scale = _js(browser, "window.__editor.view.scale")
        assert scale > fit_scale * 1.3
        after = _expected_image_point(browser, anchor)
        assert after == pytest.approx(before, abs=0.51 / fit_scale + 1e-6)  # zoomed around the cursor
        browser.find_element(By.TAG_NAME, "body").send_keys("4")
        _js(browser, "(window.__editor.radius = 2, window.__editor.opacity = 1, window.__editor.render())")
        target = (anchor[0] + 7, anchor[1] + 3)
        _stroke(browser, [target])
        pt = _js(browser, "window.__editor.lastStroke.points[0]")
        assert pt == pytest.approx(_expected_image_point(browser, target), abs=1e-9)
        got = _bitmap(browser, 3)
        assert got[int(pt[1]), int(pt[0])], "the pixel under the pointer is painted"
        assert _js(browser, "window.__editor.allBinary()")
        # the display uses the same transform: the canvas shows the class colour under the pointer
        px = _js(browser, f"(() => {{ const c = document.getElementById('canvas'), r = c.getBoundingClientRect();"
                          f" return Array.from(c.getContext('2d').getImageData(Math.floor(({target[0]} - r.left) * {dpr}),"
                          f" Math.floor(({target[1]} - r.top) * {dpr}), 1, 1).data); }})()")
        assert px[:3] == [213, 94, 0], px  # COLORS[3], painted at opacity 1
    finally:
        browser.quit()


def test_queue_shows_images_least_certain_first(site) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    predictor = Predictor.from_bundle(site["bundle"])
    names = sorted(p.name for p in site["queue"].glob("line*.png"))
    scores = [image_priority(predictor, np.asarray(Image.open(site["queue"] / n))).score for n in names]
    assert len(set(np.round(scores, 6))) == 3, scores  # distinct, so the order is a real check
    want = [names[i] for i, _ in queue_order(scores)]
    browser = _browser()
    try:
        browser.get(site["url"] + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#queue-list tbody tr")) >= 3)
        rows = browser.find_elements(By.CSS_SELECTOR, "#queue-list tbody tr")
        shown = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]
        assert shown[:3] == want, (shown, scores)
        assert all(r.find_elements(By.TAG_NAME, "td")[4].text for r in rows)  # each says why it is there
        browser.find_element(By.TAG_NAME, "body").send_keys("n")  # next: the first image opens
        wait.until(lambda b: b.execute_script("return window.__review.qpos") == 0
                   and b.find_element(By.ID, "status").text.startswith(want[0]))
        assert want[0] in browser.find_element(By.ID, "queue-reason").text
        browser.find_element(By.TAG_NAME, "body").send_keys("s")  # send as predicted: it leaves the queue
        wait.until(lambda b: "stored in train" in b.find_element(By.ID, "feedback-status").text)
        wait.until(lambda b: [r.find_elements(By.TAG_NAME, "td")[1].text
                              for r in b.find_elements(By.CSS_SELECTOR, "#queue-list tbody tr")] == want[1:])
        wait.until(lambda b: b.find_element(By.ID, "status").text.startswith(want[1]))  # the next one opened
    finally:
        browser.quit()


def test_queue_upload_through_the_api(site) -> None:
    import httpx

    buf = io.BytesIO()
    Image.fromarray(_strip(31)).save(buf, "PNG")
    r = httpx.post(site["url"] + "/v1/queue", files={"files": ("new.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    new_id = r.json()["added"][0]
    q = httpx.get(site["url"] + "/v1/queue").json()
    assert new_id in [it["id"] for it in q["items"]]
    img = httpx.get(site["url"] + f"/v1/queue/{new_id}")
    assert img.status_code == 200 and img.content == buf.getvalue()
    assert httpx.get(site["url"] + "/v1/queue/../../etc").status_code == 404
    bad = httpx.post(site["url"] + "/v1/queue", files={"files": ("x.png", b"not an image", "image/png")})
    assert bad.status_code == 400 and "error" in bad.json()
