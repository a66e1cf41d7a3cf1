"""The bench scripts keep running (their numbers are recorded in docs/results.md, not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_rle_bench_runs() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "rle.py"), "--repeat", "3"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "outputs identical" in out.stdout and "enc+dec" in out.stdout


def test_train_bench_runs() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "train.py"), "--encoder", "tu-test_resnet", "--steps", "2",
                          "--warmup", "1", "--batch", "2", "--crop", "64,128", "--workers", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ratio steelseg/plain" in out.stdout and "waiting for data" in out.stdout


def test_recipe_speed_bench_runs() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "recipe_speed.py"), "--encoder", "tu-test_resnet",
                          "--batch", "2", "--steps", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fp32 (baseline)" in out.stdout and "1.00x" in out.stdout and "FPN" in out.stdout
    assert "192x192 crops" in out.stdout and "depthwise convolutions in fp32" in out.stdout
    assert "bfloat16  forward" in out.stdout


def test_data_cache_bench_runs(tmp_path) -> None:
    out = subprocess.run([sys.executable, str(BENCH / "data_cache.py"), "--data", str(tmp_path / "none"),
                          "--images", "40", "--encoder", "tu-test_resnet", "--steps", "1", "--rounds", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "files, 2 workers (baseline)" in out.stdout and "1.00x the baseline's speed" in out.stdout
    assert "data.cache, main process (the recipe)" in out.stdout and "data.cache decoded them in" in out.stdout


def test_inference_bench_runs() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "inference.py"), "--encoder", "tu-test_resnet",
                          "--classifier", "test_resnet", "--images", "4", "--train-images", "12",
                          "--gate-minutes", "0.03", "--seg-minutes", "0.03", "--height", "64", "--width", "320",
                          "--skip-openvino"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for line in ("baseline (notebook loop)", "onnx fp32 + gate", "onnx int8 + gate", "GFLOPs/image", "avx", "peaks:",
                 "of bf16"):
        assert line in out.stdout, out.stdout
    assert "openvino" not in out.stdout  # --skip-openvino: the export is tested in test_openvino.py
    assert "DIFFERENT" not in out.stdout  # fp32 lines write the baseline's masks


def test_serve_load_bench_runs() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "serve_load.py"), "--clients", "2", "--seconds", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 bad in 5" in out.stdout and "service healthy after the load: True" in out.stdout


def test_predict_stream_bench_runs(tmp_path) -> None:
    from .conftest import tiny_bundle_at

    bundle = tiny_bundle_at(tmp_path, ["pits", "streaks", "scratches", "blotches"])
    out = subprocess.run([sys.executable, str(BENCH / "predict_stream.py"), "--bundle", str(bundle), "--n", "12",
                          "--small", "4", "--pool", "4", "--work", str(tmp_path / "w")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "peak memory: 4 strips" in out.stdout and "ratio" in out.stdout and "decode in a thread" in out.stdout


def test_review_loop_bench_runs(tmp_path) -> None:
    import pytest

    from .conftest import SHARED, tiny_bundle_at

    if not (SHARED / "severstal_real").is_dir():
        pytest.skip("../shared/data/severstal_real is not here (a user's clone has none)")
    bundle = tiny_bundle_at(tmp_path, ["pits", "streaks", "scratches", "blotches"])
    out = subprocess.run([sys.executable, str(BENCH / "review_loop.py"), str(bundle), "--out", str(tmp_path / "loop")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reviewed 11 strips" in out.stdout and "Dice model vs final" in out.stdout


def test_backends_bench_runs_with_the_notebook_loop(tmp_path) -> None:
    import json

    from steelseg.data.synth import CLASS_NAMES

    from .conftest import tiny_bundle_at

    bundle = tiny_bundle_at(tmp_path, CLASS_NAMES)
    subprocess.run([sys.executable, "-m", "steelseg.cli", "synth", str(tmp_path / "d"), "--images", "4", "--seed", "1",
                    "--height", "64", "--width", "256"], check=True, stdout=subprocess.DEVNULL)
    ids = sorted(p.name for p in (tmp_path / "d" / "train_images").iterdir())
    (tmp_path / "split.json").write_text(json.dumps({"val": ids}))
    out = subprocess.run([sys.executable, str(BENCH / "backends.py"), "--eager", "--data", str(tmp_path / "d"),
                          "--split", str(tmp_path / "split.json"), "--images", "2", "--threads", "1", str(bundle)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(ln.startswith("eager loop (notebook)") for ln in lines) and any(ln.startswith("bundle ") for ln in lines)
    assert "of bf16" in out.stdout and "peaks:" in out.stdout


def test_serve_swaps_under_load_and_loses_no_request(tmp_path) -> None:
    """bench/serve_swap.py, small: two clients post without pause to `serve models:/line@champion` while v2 is
    promoted; every request answered 200, the service switches within its check interval plus a load, and no
    client gets the old model again once it got the new one (issue #40)."""
    import json

    import pytest

    pytest.importorskip("mlflow")
    out = subprocess.run([sys.executable, str(BENCH / "serve_swap.py"), "--clients", "2", "--seconds", "15",
                          "--check-every", "0.5", "--work", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    res = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
    log = (tmp_path / "serve.log").read_text()[-3000:] if (tmp_path / "serve.log").is_file() else ""
    assert out.returncode == 0, (res, out.stderr[-3000:], log)
    assert res["failed"] == 0 and res["statuses"] == [200] and res["requests"] > 10, res
    assert res["bundles"] == 2 and res["old_after_new"] == 0 and res["switch_s"] is not None, (res, log)
    assert res["switched_line"] and "switched to version 2" in res["switched_line"], log
