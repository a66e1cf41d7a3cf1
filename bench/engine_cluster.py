"""Throughput of `steelseg predict --engine ray` on a loopback cluster of one node, then two (issue #41 goal:
twice the resources give at least 1.7x the throughput of one node).

Each node is a `ray start` process pinned to a core of its own with `taskset` (its raylet and the workers it
starts inherit the pin), with one CPU, so the two nodes never share a core; the driver is pinned beside the head.
The same job (N strips) runs first on the head alone with one worker, then with the second node joined and two
workers (one a node). Throughput is the job's images over its wall time, the driver's start-up included.

python bench/engine_cluster.py BUNDLE [--n 1000] [--work /tmp/engine-cluster]

Needs 2 cores (cores 0 and 1) and the ray extra. The nodes are stopped by signal to their process groups.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_stream import strips


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def _node(core: int, args: list[str], env: dict[str, str], tmp: Path) -> subprocess.Popen:
    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    cmd = ["taskset", "-c", str(core), ray_bin, "start", *args, "--num-cpus", "1", "--disable-usage-stats",
           "--node-ip-address", "127.0.0.1", "--temp-dir", str(tmp), "--block"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _alive(addr: str, env: dict[str, str]) -> int:
    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    out = subprocess.run([ray_bin, "status", "--address", addr], env=env, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return 0
    active = out.stdout.split("Active:")[-1].split("Pending:")[0]
    return sum(1 for ln in active.splitlines() if "node_" in ln)


def _wait(cond, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while not cond():
        if time.time() > deadline:
            raise SystemExit("the cluster did not come up in time")
        time.sleep(0.5)


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


def job(bundle: str, images: Path, out: Path, addr: str, workers: int, env: dict[str, str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "steelseg.cli", "predict", bundle, str(images), "--out",
           str(out), "--engine", "ray", "--address", addr, "--workers", str(workers)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"job failed ({done.returncode}): {done.stderr[-2000:]}")
    info = json.loads((out / "job.json").read_text())
    return {"workers": workers, "images": info["images"], "wall_s": round(wall, 2),
            "images_per_s": round(info["images"] / wall, 3), "job_images_per_s": info["images_per_s"],
            "engine_line": next((ln for ln in done.stderr.splitlines() if ln.startswith("ray:")), "")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/engine-cluster"))
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 cores")
    images = strips(args.work, args.n)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    addr = f"127.0.0.1:{_free_port()}"
    tmp = Path(tempfile.mkdtemp(prefix="ssb-", dir="/tmp"))
    nodes = []
    try:
        nodes.append(_node(0, ["--head", "--port", addr.split(":")[1], "--include-dashboard", "false"], env, tmp))
        _wait(lambda: _alive(addr, env) == 1)
        one = job(args.bundle, images, args.work / "one", addr, 1, env)
        print(json.dumps(one), flush=True)
        nodes.append(_node(1, ["--address", addr], env, tmp))
        _wait(lambda: _alive(addr, env) == 2)
        two = job(args.bundle, images, args.work / "two", addr, 2, env)
        print(json.dumps(two), flush=True)
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"n": args.n, "one_node_images_per_s": one["images_per_s"],
                      "two_nodes_images_per_s": two["images_per_s"],
                      "two_over_one": round(two["images_per_s"] / one["images_per_s"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
