"""Archive prediction (issue #41): the local and Ray engines write the same rows, masks equal to the single-process
`steelseg predict` bit for bit; a bad image is an error row; a driver killed mid-job resumes with only the rest
predicted, none twice; the model is loaded once per worker; the embedded Ray instance leaves no process behind;
sources as folder trees, globs and manifests. Every Ray run is bounded in time (a scheduling deadlock is a hang)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import cli_run, tiny_bundle_at

NAMES = ["pit", "scratch"]
N_RAY = 48  # images of the Ray job: enough batches that a worker killed at the first shard still had work


def _images(root: Path, n: int, sub: str = "", shape: tuple[int, int] = (64, 96)) -> Path:
    rng = np.random.default_rng(0)
    folder = root / sub if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, shape, np.uint8)).save(folder / f"im{k:03d}.png")
    return root


def _submission(path: Path) -> dict[tuple[str, str], str]:
    with open(path, newline="") as fh:
        return {(r["ImageId"], r["ClassId"]): r["EncodedPixels"] for r in csv.DictReader(fh)}


def _rows(out: Path) -> list[dict]:
    from steelseg.engine.sink import read_rows

    return list(read_rows(out))


def test_local_engine_rows_match_single_process_predict(tmp_path: Path, capsys) -> None:
    bundle = tiny_bundle_at(tmp_path / "b", NAMES)
    imgs = _images(tmp_path / "imgs", 6)
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rc, _, err = cli_run(capsys, "predict", bundle, imgs, "--out", tmp_path / "single", "--on-error", "skip")
    assert rc == 3, err
    rc, out, err = cli_run(capsys, "predict", bundle, imgs, "--out", tmp_path / "job", "--engine", "local")
    assert rc == 3 and "1 image(s) could not be predicted" in err, err
    assert _submission(tmp_path / "job" / "submission.csv") == _submission(tmp_path / "single" / "submission.csv")
    rows = {r["image_id"]: r for r in _rows(tmp_path / "job")}
    assert len(rows) == 7 and rows["broken.png"]["error"] and not rows["im000.png"]["error"]
    workers = {r["worker"] for r in rows.values()}  # host:pid/k, k counting the bundle's loads in the process
    assert len(workers) == 1 and workers.pop().startswith(f"{os.uname().nodename}:{os.getpid()}/")
    # the same job again is refused without --resume, and with it predicts nothing more
    rc, _, err = cli_run(capsys, "predict", bundle, imgs, "--out", tmp_path / "job", "--engine", "local")
    assert rc == 2 and "--resume" in err
    rc, out, err = cli_run(capsys, "predict", bundle, imgs, "--out", tmp_path / "job", "--engine", "local", "--resume")
    assert "7 images" in out and "(0 now" in out, out
    assert len(_rows(tmp_path / "job")) == 7


def test_job_summary_per_class_folder_and_day(tmp_path: Path, capsys) -> None:
    """`steelseg job` reads the rows back: its counts per class, per folder and per day equal a count made here
    from the rows themselves; an image with no date in its path is its own group; error rows are counted apart."""
    import json

    bundle = tiny_bundle_at(tmp_path / "b", NAMES)
    root = _images(tmp_path / "arch", 3, "line1/2026-03-14")
    _images(root, 2, "line1/20260315")
    _images(root, 2, "line2/misc")
    (root / "line2" / "misc" / "bad.png").write_bytes(b"")
    rc, _, err = cli_run(capsys, "predict", bundle, root, "--out", tmp_path / "job", "--engine", "local")
    assert rc == 3, err
    rows = _rows(tmp_path / "job")
    rc, out, err = cli_run(capsys, "job", tmp_path / "job", "--by", "day", "--json", tmp_path / "days.json")
    assert rc == 0, err
    days = json.loads((tmp_path / "days.json").read_text())
    assert days["images"] == 8 and days["errors"] == 1 and "8 images, 1 error row(s)" in out
    assert list(days["per_day"]) == ["(no date)", "2026-03-14", "2026-03-15"]
    for day, sub in (("2026-03-14", "line1/2026-03-14/"), ("2026-03-15", "line1/20260315/")):
        mine = [r for r in rows if r["image_id"].startswith(sub)]
        hit = [any(r[f"found_{c}"] for c in NAMES) for r in mine]
        assert days["per_day"][day]["images"] == len(mine)
        assert days["per_day"][day]["defect_rate"] == round(sum(hit) / len(mine), 6)
    ok = [r for r in rows if not r["error"]]
    for c in NAMES:
        assert days["per_class"][c]["images"] == sum(bool(r[f"found_{c}"]) for r in ok)
    rc, out, err = cli_run(capsys, "job", tmp_path / "job", "--json", tmp_path / "folders.json")
    folders = json.loads((tmp_path / "folders.json").read_text())["per_folder"]
    assert rc == 0 and {k: v["images"] for k, v in folders.items()} == {"line1": 5, "line2": 3}
    assert folders["line2"]["errors"] == 1 and "local engine" in out
    rc, _, err = cli_run(capsys, "job", tmp_path / "imgs-none")
    assert rc != 0 and "no rows" in err


def test_sources_folder_tree_glob_and_manifests(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from steelseg.engine.source import list_source

    root = _images(tmp_path / "arch", 2, "day1")
    _images(root, 3, "day2")
    (root / "day2" / "notes.txt").write_text("not an image")
    tree = [i.image_id for i in list_source(str(root))]
    assert tree == ["day1/im000.png", "day1/im001.png", "day2/im000.png", "day2/im001.png", "day2/im002.png"]
    assert [i.image_id for i in list_source(str(root / "day2" / "*.png"))] == ["im000.png", "im001.png", "im002.png"]
    assert len(list_source(str(root) + "/**/*.png")) == 5
    (tmp_path / "list.txt").write_text("# shift A\narch/day1/im001.png\n\narch/day2/im000.png\n")
    items = list_source(str(tmp_path / "list.txt"))
    assert [i.image_id for i in items] == ["arch/day1/im001.png", "arch/day2/im000.png"]
    assert all(Path(i.uri).is_file() for i in items)
    pq.write_table(pa.table({"path": [str(root / "day1" / "im000.png")]}), tmp_path / "m.parquet")
    assert [Path(i.uri).name for i in list_source(str(tmp_path / "m.parquet"))] == ["im000.png"]
    uri = [i.uri for i in list_source(f"file://{root}")]
    assert len(uri) == 5 and uri[0].startswith("file://")


def test_an_s3_source_predicts_as_the_same_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    """An `s3://` source read through pyarrow's S3 file system, against moto's S3 server on loopback (the same
    protocol a plant's MinIO or AWS speaks; the endpoint from AWS_ENDPOINT_URL, as boto3 and pyarrow read it):
    the same rows and submission as the images in a local folder."""
    pytest.importorskip("moto", reason="moto (the dev extra) runs the S3 server")
    import socket

    import boto3

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s3 = boto3.client("s3")
        deadline = time.time() + 30
        while True:
            try:
                s3.create_bucket(Bucket="plant")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                assert time.time() < deadline, "moto's S3 server did not start"
                time.sleep(0.3)
        root = _images(tmp_path / "local", 3, "day1")
        _images(root, 2, "day2")
        for p in sorted(root.rglob("*.png")):
            s3.upload_file(str(p), "plant", f"strips/{p.relative_to(root).as_posix()}")
        bundle = tiny_bundle_at(tmp_path / "b", NAMES)
        rc, _, err = cli_run(capsys, "predict", bundle, root, "--out", tmp_path / "here", "--engine", "local")
        assert rc == 0, err
        rc, _, err = cli_run(capsys, "predict", bundle, "s3://plant/strips", "--out", tmp_path / "s3",
                             "--engine", "local")
        assert rc == 0, err
    finally:
        server.terminate()
        server.wait(timeout=30)
    here, there = ({r["image_id"]: r for r in _rows(tmp_path / d)} for d in ("here", "s3"))
    assert sorted(there) == sorted(here) == ["day1/im000.png", "day1/im001.png", "day1/im002.png", "day2/im000.png",
                                             "day2/im001.png"]
    assert all(there[i]["path"].startswith("s3://plant/strips/") for i in there)
    strip = ("path", "worker")
    assert [{k: v for k, v in there[i].items() if k not in strip} for i in sorted(there)] == \
        [{k: v for k, v in here[i].items() if k not in strip} for i in sorted(here)]
    assert _submission(tmp_path / "s3" / "submission.csv") == _submission(tmp_path / "here" / "submission.csv")


ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'steelseg[ray]')")


def _ray_env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _raylets() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout.split()
    return {int(p) for p in out}


def _job(bundle: Path, imgs: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "steelseg.cli", "predict", str(bundle), str(imgs), "--out", str(out), "--batch", "4",
            "--shard-rows", "4", *flags]


@pytest.mark.timeout(120)
def test_a_driver_killed_mid_job_resumes_with_only_the_rest(tmp_path: Path) -> None:
    """Shards are written whole: after a kill -9 of the driver, --resume predicts only what no shard holds."""
    bundle = tiny_bundle_at(tmp_path / "b", NAMES)
    imgs = _images(tmp_path / "imgs", 40)
    job = tmp_path / "job"
    proc = subprocess.Popen(_job(bundle, imgs, job, "--engine", "local"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while len(list((job / "rows").glob("part-*.parquet"))) < 2 and proc.poll() is None:
        assert time.time() < deadline, "no shard written in time"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    first = len(_rows(job))
    assert 0 < first < 40, "the job ended before it could be killed"
    done = subprocess.run(_job(bundle, imgs, job, "--engine", "local", "--resume"), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"resuming: {first} image(s) already written, {40 - first} to do" in done.stderr
    ids = [r["image_id"] for r in _rows(job)]
    assert len(ids) == len(set(ids)) == 40  # every image exactly once
    assert len(_submission(job / "submission.csv")) == 80


@pytest.mark.timeout(200)
def test_ray_engine_equals_local_survives_a_killed_worker_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    """The Ray job's rows equal the local engine's; a worker killed mid-job is replaced and its batch done again,
    with no row lost or written twice; each worker process loaded the bundle once; no Ray process is left."""
    bundle = tiny_bundle_at(tmp_path / "b", NAMES)
    imgs = _images(tmp_path / "imgs", N_RAY, shape=(192, 384))
    (imgs / "empty.png").write_bytes(b"")
    before = _raylets()
    rc, _, err = cli_run(capsys, "predict", bundle, imgs, "--out", tmp_path / "local", "--engine", "local",
                         "--batch", "4")
    assert rc == 3, err
    job = tmp_path / "ray"
    proc = subprocess.Popen(_job(bundle, imgs, job, "--engine", "ray", "--workers", "2"), env=_ray_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 150
    while not list((job / "rows").glob("part-*.parquet")) and proc.poll() is None:
        assert time.time() < deadline, "no shard written in time"
        time.sleep(0.02)
    victim = int(_rows(job)[0]["worker"].split(":")[1].split("/")[0])
    os.kill(victim, signal.SIGKILL)
    assert proc.poll() is None and len(_rows(job)) < N_RAY / 2, "the job ended before a worker could be killed"
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 3, out + err
    assert "ray: 2 worker(s)" in err and "1 image(s) could not be predicted" in err
    rows = _rows(job)
    assert len(rows) == len({r["image_id"] for r in rows}) == N_RAY + 1  # every image exactly once
    assert _submission(job / "submission.csv") == _submission(tmp_path / "local" / "submission.csv")
    local = {r["image_id"]: r for r in _rows(tmp_path / "local")}
    for r in rows:  # the same masks, bit for bit; scores to 1e-5 (a worker's thread count may round the last digit)
        loc = local[r["image_id"]]
        assert {k: r[k] for k in r if k.startswith(("rle_", "area_"))} == \
            {k: loc[k] for k in r if k.startswith(("rle_", "area_"))}
        assert all(abs(r[k] - loc[k]) <= 1e-5 for k in r if k.startswith("score_"))
    assert next(r for r in rows if r["image_id"] == "empty.png")["error"]
    workers = {r["worker"] for r in rows}  # 2 actors and the victim's replacement, each loading the bundle once
    assert 2 <= len(workers) <= 3 and all("/1@" in w and f":{os.getpid()}/" not in w for w in workers), workers
    assert any(f":{victim}/" not in w for w in workers)
    time.sleep(1)
    assert _raylets() <= before, "the embedded Ray instance left processes behind"


@pytest.mark.timeout(240)
def test_evaluate_on_ray_writes_what_one_process_writes(tmp_path: Path, synth_small: Path, capsys) -> None:
    """`steelseg evaluate --engine ray`: the split predicted in parts by Ray tasks and merged in order gives the
    same metrics.json numbers, per_image.csv and predictions.npz as one process (what tune and cv-tune read)."""
    import json

    names = ["pits", "streaks", "scratches", "blotches"]
    bundle = tiny_bundle_at(tmp_path / "b", names)
    flags = ["--bundle", str(bundle), "--data", str(synth_small), "--split", "all"]
    rc, _, err = cli_run(capsys, "evaluate", *flags, "--out", tmp_path / "one")
    assert rc == 0, err
    done = subprocess.run([sys.executable, "-m", "steelseg.cli", "evaluate", *flags, "--out", str(tmp_path / "ray"),
                           "--engine", "ray", "--workers", "2"], env=_ray_env(), capture_output=True, text=True,
                          timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8/8 part(s) predicted" in done.stderr and "2 at once" in done.stderr, done.stderr
    one, ray_ = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "ray"))
    for key in ("images", "dice", "all_empty_dice", "miou"):
        assert one[key] == pytest.approx(ray_[key], abs=1e-6), key
    assert one["detection"]["any"]["ap"] == pytest.approx(ray_["detection"]["any"]["ap"], abs=1e-6)
    a, b = (np.load(tmp_path / d / "predictions.npz") for d in ("one", "ray"))
    assert list(a["image_ids"]) == list(b["image_ids"]) and len(a["image_ids"]) == 48
    for k in ("hist_all", "hist_true", "probs"):  # a worker's one thread may round a probability's last level
        assert np.abs(a[k].astype(np.int64) - b[k].astype(np.int64)).sum() <= 1e-4 * a[k].size, k
    assert (tmp_path / "one" / "per_image.csv").read_text().splitlines()[0] == \
        (tmp_path / "ray" / "per_image.csv").read_text().splitlines()[0]


@pytest.mark.timeout(420)
def test_a_two_node_cluster_predicts_and_fits_on_both_nodes(tmp_path: Path, synth_small: Path) -> None:
    """`ray start --head` and a second `ray start --address` as separate processes, one CPU each. Prediction: two
    actors of 0.75 CPU cannot share a node, so the job runs on both. fit: two folds as tasks of one CPU each, one
    per node; the driver killed once both folds hold a checkpoint, then the same command resumes both folds (on
    both nodes again), never trains a done fold again, and ends with the bundle. Each node is stopped by signal
    to its own process group (`ray stop` would stop every Ray here); nothing is left behind."""
    import shutil
    import socket

    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    import secrets

    # Ray 2.5x clusters authenticate with a token: every node and the driver share it
    env = {**_ray_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    addr = f"127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="ssr-", dir="/tmp"))  # Ray's socket paths must stay short
    common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--temp-dir", str(tmp),
              "--block"]
    bundle = tiny_bundle_at(tmp_path / "b", NAMES)
    imgs = _images(tmp_path / "imgs", 24)
    nodes = []
    try:
        nodes.append(_node([ray_bin, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                           env))
        _wait_for(lambda: subprocess.run([ray_bin, "status", "--address", addr], env=env, capture_output=True,
                                         timeout=30).returncode == 0)
        nodes.append(_node([ray_bin, "start", "--address", addr, *common], env))
        _wait_for(lambda: _alive_nodes(ray_bin, addr, env) == 2)
        done = subprocess.run(_job(bundle, imgs, tmp_path / "job", "--engine", "ray", "--address", addr,
                                   "--workers", "2"), env=env, capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "on 2 node(s)" in done.stderr, done.stderr
        rows = _rows(tmp_path / "job")
        assert len(rows) == 24 and len({r["worker"].split("@")[1] for r in rows}) == 2  # both nodes predicted
        _fit_on_the_cluster(tmp_path, synth_small, addr, env)
    finally:
        for node in reversed(nodes):
            _stop(node)
        left = subprocess.run(["pgrep", "-f", str(tmp)], capture_output=True, text=True).stdout.split()
        shutil.rmtree(tmp, ignore_errors=True)
    assert not left, f"Ray processes left behind: {left}"


FIT_TINY = ["--set", "model.encoder=tu-test_resnet", "--set", "model.encoder_weights=null",
            "--set", "model.kwargs.decoder_channels=[8,8,8,8,8]", "--set", "model.kwargs.input_scale=1.0",
            "--set", "track.mlflow=false", "--set", "train.checkpoint_every=1", "--set", "data.batch_size=4"]


def _fit_on_the_cluster(tmp_path: Path, data: Path, addr: str, env: dict[str, str]) -> None:
    import json

    out = tmp_path / "fit"
    cmd = [sys.executable, "-m", "steelseg.cli", "fit", str(data), "--out", str(out), "--steps", "16", "--folds", "2",
           "--no-probe", "--engine", "ray", "--address", addr, "--workers", "2", *FIT_TINY]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                            start_new_session=True)
    ckpts = [out / "runs" / f"fold{k}" / "checkpoints" / "last.ckpt" for k in range(2)]
    _wait_for(lambda: all(c.is_file() for c in ckpts) or proc.poll() is not None, 150)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert all(c.is_file() for c in ckpts), "the fit ended before both folds held a checkpoint"
    assert not any((c.parents[1] / ".steelseg-fit-done").exists() for c in ckpts), "a fold ended before the kill"
    time.sleep(2)  # the cluster notices the driver's death and stops its tasks
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "continuing in" in again.stderr and "2 task(s), 2 at once, 1 CPU" in again.stderr, again.stderr
    assert again.stderr.count("resumed and trained on") == 2, again.stderr
    tasks = json.loads((out / "fit.json").read_text())["engine"]["tasks"]
    assert sorted(t["fold"] for t in tasks) == [0, 1] and len({t["node"] for t in tasks}) == 2  # one fold a node
    for k in range(2):
        assert (out / "runs" / f"fold{k}" / "eval-val" / "metrics.json").is_file()  # evaluated in its task
    assert (out / "bundle" / "bundle.json").is_file() and "out of fold" in (out / "summary.md").read_text()


def _alive_nodes(ray_bin: str, addr: str, env: dict[str, str]) -> int:
    out = subprocess.run([ray_bin, "status", "--address", addr], env=env, capture_output=True, text=True, timeout=30)
    active = out.stdout.split("Active:")[-1].split("Pending:")[0]
    return sum(1 for ln in active.splitlines() if "node_" in ln)


def _node(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _wait_for(cond, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)
