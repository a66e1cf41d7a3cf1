"""The review loop end to end, with a scripted reviewer: serve a bundle with a queue of real strips, take the
queue in its order, send each strip's true masks (from train.csv) as the reviewer's corrections, then print
what `steelseg info` says of the feedback folder. Training on it is then one command (printed at the end).

python bench/review_loop.py [BUNDLE] [--data ../shared/data/severstal_real] [--out /tmp/review-loop]

BUNDLE defaults to runs/demo/bundle (`make demo`). The reviewer's verdict per class follows from the
model's mask and the true one: right (equal), wrong (true mask empty), corrected, missed, absent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from steelseg.data import rle
from steelseg.data.open import open_dataset

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serving(args: list[str]):
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "steelseg.cli", "serve", *args, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def verdict(model: np.ndarray, truth: np.ndarray) -> str:
    if model.any():
        return "right" if np.array_equal(model, truth) else "corrected" if truth.any() else "wrong"
    return "missed" if truth.any() else "absent"


def review(url: str, ds, names: list[str]) -> list[dict]:
    import httpx

    client = httpx.Client(base_url=url, timeout=120)
    queue = client.get("/v1/queue", params={"budget_s": 600}).json()
    by_name = {Path(r["path"]).name: r["image_id"] for _, r in ds.table.iterrows()}
    done = []
    for item in queue["items"]:
        data = client.get(f"/v1/queue/{item['id']}").content
        pred = client.post("/v1/predict", files={"file": (item["name"], data)}).json()
        h, w = pred["image"]["height"], pred["image"]["width"]
        truth = ds.load_mask(by_name[item["name"]])
        masks, verdicts = {}, {}
        for c, cls in enumerate(pred["classes"]):
            model = rle.decode(cls["rle"], (h, w))
            verdicts[cls["name"]] = verdict(model, truth[..., c])
            masks[cls["name"]] = rle.encode(truth[..., c])
        r = client.post("/v1/feedback", files={"file": (item["name"], data)},
                        data={"verdicts": json.dumps(verdicts), "reviewer": "scripted",
                              "masks": json.dumps({"width": w, "height": h, "masks": masks})})
        r.raise_for_status()
        done.append({"position": item["position"], "name": item["name"], "score": item["score"],
                     "reason": item["reason"], "verdicts": verdicts, "stored": r.json()["stored"]})
        print(f"{item['position']:>3} {item['name']}  priority {item['score']:.3f}  {verdicts}", flush=True)
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", default=str(ROOT / "runs" / "demo" / "bundle"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "severstal_real"))
    ap.add_argument("--out", default="/tmp/review-loop")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "queue").mkdir(parents=True)
    ds = open_dataset(args.data)
    for _, r in ds.table.iterrows():
        shutil.copy(r["path"], out / "queue" / Path(r["path"]).name)
    t0 = time.time()
    with serving([args.bundle, "--queue", str(out / "queue"), "--feedback", str(out / "feedback")]) as url:
        done = review(url, ds, ds.class_names)
    print(f"\nreviewed {len(done)} strips in {time.time() - t0:.0f} s (including the queue's scoring)")
    (out / "reviewed.json").write_text(json.dumps(done, indent=2))
    subprocess.run([sys.executable, "-m", "steelseg.cli", "info", str(out / "feedback")], check=True)
    print(f"\nretrain on them: steelseg train CONFIG --set 'data.extra=[{out / 'feedback'}]'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
